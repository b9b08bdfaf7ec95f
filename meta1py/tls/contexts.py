"""TLS contexts for smtps and smtpc: settings, building and reloading ``ssl.SSLContext`` objects.

Everything here uses the standard library :mod:`ssl` module, because ``trio.SSLStream`` drives an
``ssl.SSLContext``/``ssl.SSLObject`` pair over memory BIOs. A server context with ``request_cert`` asks
for a client certificate and never fails the handshake over it; that needs the verify callback of
:mod:`meta1py.tls.hook`, and without it :func:`server_context` refuses rather than silently not asking.

Python 3.11 limit: TLS 1.3 cipher suites cannot be chosen with ``ssl`` (``ciphers`` only affects TLS 1.2
and below).
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import warnings
from collections.abc import Iterable
from pathlib import Path

from meta1py.tls import hook
from meta1py.tls.requirements import TlsRequirements

__all__ = [
    "DEFAULT_VERIFY_DEPTH",
    "ClientTlsSettings",
    "ReloadableServerContext",
    "ServerTlsSettings",
    "TlsConfigError",
    "client_context",
    "context_for_requirements",
    "parse_protocols",
    "server_context",
]

log = logging.getLogger(__name__)

#: Default maximum client-certificate chain depth (Postfix's smtpd_tls_ccert_verifydepth is 9).
DEFAULT_VERIFY_DEPTH = 9

_VERSIONS: dict[str, ssl.TLSVersion] = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}


class TlsConfigError(Exception):
    """A TLS setting cannot be used (missing file, bad PEM, key not matching, unknown protocol...)."""


def _tls_version(name: str) -> ssl.TLSVersion:
    try:
        return _VERSIONS[name.strip().lower()]
    except KeyError:
        raise TlsConfigError(f"unknown TLS protocol {name!r}; expected TLSv1.2 or TLSv1.3") from None


def parse_protocols(names: Iterable[str]) -> tuple[str, str | None]:
    """Turn a ``protocols = { TLSv1.2, TLSv1.3 }`` list into (min_protocol, max_protocol).

    Args:
        names: protocol names (case-insensitive), which must form a contiguous range.

    Returns:
        The lowest and highest names (max None when it is TLSv1.3, the newest).

    Raises:
        TlsConfigError: unknown name, empty list, or a gap (TLSv1.1 and TLSv1.3 without TLSv1.2).
    """
    order = [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
    versions = sorted({_tls_version(n) for n in names}, key=order.index)
    if not versions:
        raise TlsConfigError("protocols must name at least one TLS version")
    indexes = [order.index(v) for v in versions]
    if indexes != list(range(indexes[0], indexes[-1] + 1)):
        raise TlsConfigError("protocols must be a contiguous range of TLS versions")
    spell = dict(zip(order, ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"), strict=True))
    return spell[versions[0]], None if versions[-1] is order[3] else spell[versions[-1]]


@dataclasses.dataclass(frozen=True, slots=True)
class ServerTlsSettings:
    """smtps TLS settings (the ``tls { }`` section).

    Attributes:
        cert_file: PEM certificate chain (leaf first).
        key_file: PEM private key.
        ca_file: PEM CAs used to verify client certificates (for the log/Received:, never enforced).
        ca_directory: an OpenSSL hashed CA directory (``c_rehash``), same purpose.
        crl_file: PEM CRLs; when set, client leaf certificates are checked against them.
        min_protocol: lowest TLS version accepted.
        max_protocol: highest TLS version (None: the newest the library supports).
        ciphers: OpenSSL cipher string for TLS 1.2 and below (None: the library's default).
        request_cert: ask clients for a certificate (never required; see :mod:`meta1py.tls.hook`).
        verify_depth: how many intermediate CAs may stand between a client certificate and the trust
            anchor (OpenSSL's verify depth: 0 = the certificate must be issued by a trusted CA directly).
    """

    cert_file: Path | str
    key_file: Path | str
    ca_file: Path | str | None = None
    ca_directory: Path | str | None = None
    crl_file: Path | str | None = None
    min_protocol: str = "TLSv1.2"
    max_protocol: str | None = None
    ciphers: str | None = None
    request_cert: bool = True
    verify_depth: int = DEFAULT_VERIFY_DEPTH


@dataclasses.dataclass(frozen=True, slots=True)
class ClientTlsSettings:
    """smtpc TLS settings.

    Attributes:
        cert_file: client certificate chain to present when a server asks (None: none).
        key_file: its private key (None: in ``cert_file``).
        ca_file: PEM trust anchors (None and no ``ca_directory``: the system store).
        ca_directory: an OpenSSL hashed CA directory.
        min_protocol: lowest TLS version used.
        ciphers: OpenSSL cipher string for TLS 1.2 and below (None: the library's default).
    """

    cert_file: Path | str | None = None
    key_file: Path | str | None = None
    ca_file: Path | str | None = None
    ca_directory: Path | str | None = None
    min_protocol: str = "TLSv1.2"
    ciphers: str | None = None


def _set_protocols(context: ssl.SSLContext, min_protocol: str, max_protocol: str | None) -> None:
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; an operator who configured them has been told in docs/tls.md.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = _tls_version(min_protocol)
        if max_protocol is not None:
            context.maximum_version = _tls_version(max_protocol)
    if context.maximum_version != ssl.TLSVersion.MAXIMUM_SUPPORTED and (
        context.maximum_version < context.minimum_version
    ):
        raise TlsConfigError(f"max protocol {max_protocol} is below min protocol {min_protocol}")


def _set_ciphers(context: ssl.SSLContext, ciphers: str | None) -> None:
    if ciphers:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise TlsConfigError(f"ciphers {ciphers!r}: {exc}") from None


def _load_cert_chain(context: ssl.SSLContext, cert_file: Path | str, key_file: Path | str | None) -> None:
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise TlsConfigError(f"cannot read {exc.filename or cert_file}: {exc.strerror}") from None
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TlsConfigError(f"cannot load certificate {cert_file} with key {key_file}: {exc}") from None


def _load_verify_locations(
    context: ssl.SSLContext, ca_file: Path | str | None, ca_directory: Path | str | None
) -> None:
    try:
        context.load_verify_locations(cafile=ca_file, capath=ca_directory)
    except OSError as exc:
        raise TlsConfigError(f"cannot load CAs from {ca_file or ca_directory}: {exc}") from None


def server_context(settings: ServerTlsSettings) -> ssl.SSLContext:
    """Build the smtps context.

    Args:
        settings: the ``tls`` section.

    Returns:
        A server-side context. With ``request_cert`` it asks for a client certificate, records whether
        it verifies against ``ca_file``/``ca_directory`` (and ``crl_file``), and never fails the handshake
        over it (see :mod:`meta1py.tls.hook`).

    Raises:
        TlsConfigError: when a file cannot be read or does not fit, or ``request_cert`` is set and the
            verify hook cannot be installed on this Python (:func:`meta1py.tls.hook.probe`).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _set_protocols(context, settings.min_protocol, settings.max_protocol)
    _set_ciphers(context, settings.ciphers)
    # Client-initiated renegotiation only serves CPU-exhaustion attacks on an SMTP server.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_cert_chain(context, settings.cert_file, settings.key_file)
    if settings.ca_file or settings.ca_directory:
        _load_verify_locations(context, settings.ca_file, settings.ca_directory)
    if settings.crl_file:
        # A PEM file of CRLs loads into the same X509_STORE as the CAs.
        _load_verify_locations(context, settings.crl_file, None)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if settings.verify_depth < 0:
        raise TlsConfigError(f"verify_depth must not be negative, not {settings.verify_depth}")
    if settings.request_cert:
        problem = hook.probe()
        if problem is not None:
            # Refuse rather than run without asking: an operator who asked for client certificates
            # would otherwise find their absence in the Received: headers only.
            raise TlsConfigError(
                f"request_cert cannot be honoured on this Python: {problem};"
                " set tls { flags = { dont_request_cert }; } or run CPython 3.11 to 3.13"
            )
        context.verify_mode = ssl.CERT_OPTIONAL
        hook.install(context, enforce=False, depth=settings.verify_depth)
    return context


class ReloadableServerContext:
    """The current smtps context, replaceable on SIGHUP without touching running sessions.

    Sessions take :attr:`context` when they start TLS; an ``SSLObject`` keeps a reference to the
    context it was made from, so sessions already in TLS are unaffected by :meth:`reload`.
    """

    def __init__(self, settings: ServerTlsSettings) -> None:
        """Build the first context.

        Raises:
            TlsConfigError: the settings do not work (at startup this is a configuration error).
        """
        self._settings = settings
        self._context = server_context(settings)
        self.generation = 1

    @property
    def context(self) -> ssl.SSLContext:
        """The context new sessions use."""
        return self._context

    @property
    def settings(self) -> ServerTlsSettings:
        """The settings :attr:`context` was built from."""
        return self._settings

    def reload(self, settings: ServerTlsSettings | None = None) -> str | None:
        """Rebuild the context (re-reading the files), from ``settings`` or the current settings.

        Returns:
            None on success; otherwise the reason, and the old context stays in use.
        """
        new_settings = settings or self._settings
        try:
            context = server_context(new_settings)
        except TlsConfigError as exc:
            log.error("TLS reload failed, keeping the previous certificates: %s", exc)
            return str(exc)
        self._context, self._settings = context, new_settings
        self.generation += 1
        log.info("TLS certificates reloaded (generation %d)", self.generation)
        return None


def client_context(
    settings: ClientTlsSettings, verify: bool, check_hostname: bool | None = None
) -> ssl.SSLContext:
    """Build an smtpc context.

    Args:
        settings: client TLS settings.
        verify: True to require a chain to a trusted CA (``ca_file``/``ca_directory``, else the system
            store) and, unless ``check_hostname`` is False, that the certificate names the
            ``server_hostname`` given when wrapping. False: opportunistic, nothing is checked during the
            handshake (the trust store is still loaded so :func:`~meta1py.tls.checks.check_requirements`
            can judge the chain).
        check_hostname: override the host name check in verify mode (None: same as ``verify``).

    Returns:
        A client-side context.

    Raises:
        TlsConfigError: when a file cannot be read or does not fit.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _set_protocols(context, settings.min_protocol, None)
    _set_ciphers(context, settings.ciphers)
    if settings.ca_file or settings.ca_directory:
        _load_verify_locations(context, settings.ca_file, settings.ca_directory)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if settings.cert_file:
        _load_cert_chain(context, settings.cert_file, settings.key_file)
    if verify:
        context.check_hostname = verify if check_hostname is None else check_hostname
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if hook.hook_available():
        hook.install(context, enforce=True)
    return context


def context_for_requirements(settings: ClientTlsSettings, req: TlsRequirements) -> ssl.SSLContext:
    """The client context smtpc should use for ``req``.

    ``verify`` verifies the chain in the handshake. When ``hostnames`` are given they replace the
    destination's name, so the handshake skips its host name check and
    :func:`meta1py.tls.checks.check_requirements` compares the certificate with the listed names instead.
    """
    verify = req.level == "verify"
    return client_context(settings, verify=verify, check_hostname=verify and not req.hostnames)
