"""TLS building blocks shared by smtps and smtpc: contexts, session facts, per-peer requirements.

Everything here uses the standard library :mod:`ssl` module, because ``trio.SSLStream`` drives an
``ssl.SSLContext``/``ssl.SSLObject`` pair over memory BIOs. Certificates are parsed with
``cryptography`` (pure parsing, works whether or not the chain was verified).

Request, log, don't enforce
---------------------------
An MTA on port 25 asks clients for a certificate (``request_cert``) only to record who they are in the
``Received:`` header and the log; it must never refuse a handshake because that certificate is
self-signed or issued by a CA it does not know (MeTA1's and Postfix's behaviour). The ``ssl`` module
cannot express that: ``CERT_NONE`` on a server sends no CertificateRequest at all, and ``CERT_OPTIONAL``
aborts the handshake when the client's certificate does not verify, and ``ssl`` offers no verify
callback. The alternatives considered:

- pyOpenSSL has verify callbacks, but its ``Connection`` is not an ``ssl.SSLObject``, so
  ``trio.SSLStream`` cannot use it without an adapter that re-implements the SSLObject surface and
  exception mapping; and pyOpenSSL uses *cryptography's* bundled OpenSSL, so its objects cannot be
  mixed with the interpreter's ``ssl`` module either.
- Shipping the CA list of "every CA" is impossible; self-signed client certificates would still fail.

What we do (:class:`_OpenSslHook`): through :mod:`ctypes` we call the very libssl that the
interpreter's ``_ssl`` module is linked against, and install with ``SSL_CTX_set_verify`` a verify
callback on the ``SSL_CTX`` behind the Python ``SSLContext``. The callback records, per connection,
the chain OpenSSL built and every verification error; on server contexts it then returns "ok" so the
handshake continues, on client contexts it returns OpenSSL's own verdict (unchanged behaviour). The
pointer to the ``SSL_CTX`` is read from the ``SSLContext`` object (it is the first field after the
object header in CPython's ``PySSLContext``, 3.7 to 3.13) and checked against ``SSL_CTX_get_options``
and ``SSL_CTX_get_verify_mode`` before use; the connection is found from the callback through the
``SSL`` app data, which CPython sets to its ``_SSLSocket`` (whose ``owner`` is the ``SSLObject``).
CPython keeps an installed callback when ``verify_mode`` is changed later.

When the hook cannot be installed (another interpreter, a statically linked ``_ssl``, a layout that
fails the checks) :func:`hook_available` is False and we degrade safely: ``request_cert`` becomes "do
not request" (logged once as a warning), ``peer_verified`` relies on the context's own enforcement, and
``root_ca_subjects`` falls back to the issuer of the server's certificate (a one-level check).

Python 3.11 limits worked around here: ``SSLSocket.get_verified_chain()`` and
``get_unverified_chain()`` only exist from 3.13; the hook records the chain instead. TLS 1.3 cipher
suites cannot be chosen with ``ssl`` (``ciphers`` only affects TLS 1.2 and below).

Received: headers and logs get strings from :func:`tls_facts`: printable ASCII only (never CR or LF),
truncated to :data:`MAX_FACT_CHARS`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import importlib
import ipaddress
import logging
import re
import ssl
import sys
import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

if TYPE_CHECKING:
    import trio
    from cryptography import x509
else:

    class _OnFirstUse:
        """``cryptography.x509``, imported when first used (certificate facts and policy checks).

        An MTA without TLS then never loads cryptography, and one with TLS loads it only in the
        processes that look at certificates: about 8 MB less in every process that does not.
        """

        def __getattr__(self, name: str) -> Any:
            module = importlib.import_module("cryptography.x509")
            globals()["x509"] = module
            return getattr(module, name)

    x509 = _OnFirstUse()

__all__ = [
    "DEFAULT_VERIFY_DEPTH",
    "MAX_FACT_CHARS",
    "TLS_LEVELS",
    "ClientTlsSettings",
    "ReloadableServerContext",
    "ServerTlsSettings",
    "TlsConfigError",
    "TlsFacts",
    "TlsRequirements",
    "check_requirements",
    "client_context",
    "context_for_requirements",
    "fingerprint_sha256",
    "format_tls_requirements",
    "hook_available",
    "normalise_fingerprint",
    "parse_protocols",
    "parse_tls_requirements",
    "peer_chain",
    "received_clause",
    "server_context",
    "tls_facts",
]

log = logging.getLogger(__name__)

#: Maximum length of the subject/issuer strings in :class:`TlsFacts` (they go into Received: headers).
MAX_FACT_CHARS = 256
#: Default maximum client-certificate chain depth (Postfix's smtpd_tls_ccert_verifydepth is 9).
DEFAULT_VERIFY_DEPTH = 9

TLS_LEVELS: tuple[str, ...] = ("none", "may", "encrypt", "verify")
TlsLevel: TypeAlias = Literal["none", "may", "encrypt", "verify"]

#: What the functions below accept as "a TLS connection": an ``ssl.SSLObject`` or ``ssl.SSLSocket``, or a
#: ``trio.SSLStream`` (which forwards ``version()``, ``cipher()``, ``getpeercert()`` to its SSLObject).
TlsObject: TypeAlias = "ssl.SSLObject | ssl.SSLSocket | trio.SSLStream[Any]"

_VERSIONS: dict[str, ssl.TLSVersion] = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
# X509_V_ERR_HOSTNAME_MISMATCH / IP_ADDRESS_MISMATCH: the check_hostname part of verification.
_NAME_ERRORS = frozenset({62, 64})


class TlsConfigError(Exception):
    """A TLS setting cannot be used (missing file, bad PEM, key not matching, unknown protocol...)."""


# ---------------------------------------------------------------------------------------------------
# The verify-callback hook (see the module docstring)


@dataclasses.dataclass(slots=True)
class _VerifyRecord:
    """What the verify callback saw for one connection."""

    chain: dict[int, bytes] = dataclasses.field(default_factory=dict)  # depth -> DER
    errors: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)  # (depth, code, text)


_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


class _OpenSslHook:
    """ctypes access to the interpreter's libssl, to install recording verify callbacks."""

    def __init__(self) -> None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        vp, ci = ctypes.c_void_p, ctypes.c_int

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            f = getattr(lib, name)
            f.restype = restype
            f.argtypes = list(argtypes)
            return f

        self._set_verify = fn("SSL_CTX_set_verify", None, vp, ci, _VERIFY_CB)
        self._set_verify_depth = fn("SSL_CTX_set_verify_depth", None, vp, ci)
        self._get_verify_mode = fn("SSL_CTX_get_verify_mode", ci, vp)
        self._get_options = fn("SSL_CTX_get_options", ctypes.c_uint64, vp)
        self._store_get_ex_data = fn("X509_STORE_CTX_get_ex_data", vp, vp, ci)
        self._store_idx = fn("SSL_get_ex_data_X509_STORE_CTX_idx", ci)
        self._ssl_get_ex_data = fn("SSL_get_ex_data", vp, vp, ci)
        self._get_error = fn("X509_STORE_CTX_get_error", ci, vp)
        self._get_error_depth = fn("X509_STORE_CTX_get_error_depth", ci, vp)
        self._get_current_cert = fn("X509_STORE_CTX_get_current_cert", vp, vp)
        self._i2d = fn("i2d_X509", ci, vp, ctypes.POINTER(ctypes.c_char_p))
        self._error_string = fn("X509_verify_cert_error_string", ctypes.c_char_p, ctypes.c_long)
        self.records: weakref.WeakKeyDictionary[Any, _VerifyRecord] = weakref.WeakKeyDictionary()
        # The CFUNCTYPE objects must live as long as any SSL_CTX that points at them: forever.
        self.record_only = _VERIFY_CB(self._callback_record_only)
        self.enforce = _VERIFY_CB(self._callback_enforce)

    def ctx_pointer(self, context: ssl.SSLContext) -> int:
        """The SSL_CTX* of ``context``, checked against what Python reports about it."""
        ptr = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if not ptr:
            raise RuntimeError("no SSL_CTX pointer")
        expected_mode = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[context.verify_mode]
        if (
            self._get_options(ptr) != int(context.options)
            or (self._get_verify_mode(ptr) & 3) != expected_mode
        ):
            raise RuntimeError("SSL_CTX pointer does not match the SSLContext")
        return int(ptr)

    def install(self, context: ssl.SSLContext, enforce: bool, depth: int | None = None) -> None:
        """Install the recording callback on ``context`` (keeping its verify mode)."""
        ptr = self.ctx_pointer(context)
        self._set_verify(ptr, self._get_verify_mode(ptr), self.enforce if enforce else self.record_only)
        if depth is not None:
            self._set_verify_depth(ptr, depth)

    def _record(self, preverify_ok: int, store: int) -> None:
        ssl_ptr = self._store_get_ex_data(store, self._store_idx())
        app = self._ssl_get_ex_data(ssl_ptr, 0) if ssl_ptr else None
        if not app:
            return
        # CPython stores its _SSLSocket as the SSL app data; its owner is the SSLObject/SSLSocket.
        owner = ctypes.cast(app, ctypes.py_object).value.owner
        if owner is None:
            return
        record = self.records.setdefault(owner, _VerifyRecord())
        depth = self._get_error_depth(store)
        cert = self._get_current_cert(store)
        if cert:
            size = self._i2d(cert, None)
            if size > 0:
                buf = ctypes.create_string_buffer(size)
                cursor = ctypes.c_char_p(ctypes.addressof(buf))
                self._i2d(cert, ctypes.byref(cursor))
                record.chain[depth] = buf.raw
        if not preverify_ok:
            code = self._get_error(store)
            text = (self._error_string(code) or b"unknown error").decode("ascii", "replace")
            record.errors.append((depth, code, text))

    def _callback_record_only(self, preverify_ok: int, store: int) -> int:
        # Server side: record, never refuse. An exception here must not escape into C: ctypes would
        # print it and return 0 (refusing the handshake), so log it; the record then shows an error.
        try:
            self._record(preverify_ok, store)
        except Exception:
            log.exception("TLS verify callback failed")
        return 1

    def _callback_enforce(self, preverify_ok: int, store: int) -> int:
        try:
            self._record(preverify_ok, store)
        except Exception:
            log.exception("TLS verify callback failed")
        return preverify_ok

    def record(self, tls: object) -> _VerifyRecord | None:
        return self.records.get(_ssl_object(tls))


def _make_hook() -> _OpenSslHook | None:
    if sys.implementation.name != "cpython" or not (3, 7) <= sys.version_info[:2] <= (3, 13):
        return None
    try:
        hook = _OpenSslHook()
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        hook.ctx_pointer(probe)
        probe.verify_mode = ssl.CERT_OPTIONAL
        hook.ctx_pointer(probe)
    except (OSError, AttributeError, RuntimeError, ImportError, KeyError) as exc:
        log.debug("TLS verify hook unavailable: %s", exc)
        return None
    return hook


_HOOK = _make_hook()
_warned_no_hook = False


def hook_available() -> bool:
    """Whether client certificates can be requested without enforcing them (see the module doc)."""
    return _HOOK is not None


def _ssl_object(tls: object) -> object:
    # trio.SSLStream keeps its SSLObject in _ssl_object and has no public accessor; the verify record
    # is keyed by the SSLObject, so look through the stream.
    return getattr(tls, "_ssl_object", tls)


# ---------------------------------------------------------------------------------------------------
# Settings and contexts


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
        request_cert: ask clients for a certificate (never required; see the module docstring).
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
        over it (see the module docstring).

    Raises:
        TlsConfigError: when a file cannot be read or does not fit.
    """
    global _warned_no_hook
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
        if _HOOK is not None:
            context.verify_mode = ssl.CERT_OPTIONAL
            _HOOK.install(context, enforce=False, depth=settings.verify_depth)
        elif not _warned_no_hook:
            _warned_no_hook = True
            log.warning(
                "request_cert: cannot install a verify callback here; client certificates are not requested"
            )
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
            handshake (the trust store is still loaded so :func:`check_requirements` can judge the chain).
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
    if _HOOK is not None:
        _HOOK.install(context, enforce=True)
    return context


# ---------------------------------------------------------------------------------------------------
# Session facts


def _sanitise(text: str, limit: int = MAX_FACT_CHARS) -> str:
    """Printable ASCII only (no CR/LF ever), at most ``limit`` characters."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    if len(clean) > limit:
        clean = clean[: limit - 3] + "..."
    return clean


def fingerprint_sha256(der: bytes) -> str:
    """SHA-256 of a DER certificate as upper-case hex pairs joined by colons."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


@dataclasses.dataclass(frozen=True, slots=True)
class TlsFacts:
    """What a TLS session is, for the log and the Received: header (all strings are sanitised).

    Attributes:
        protocol: e.g. ``TLSv1.3``.
        cipher: e.g. ``TLS_AES_256_GCM_SHA384``.
        bits: secret key bits of the cipher.
        peer_subject: the peer certificate subject (RFC 4514), or None without a certificate.
        peer_issuer: its issuer, or None.
        peer_verified: whether the peer certificate chain verified against the configured CAs.
        peer_fingerprint: SHA-256 fingerprint of the peer certificate, or None.
        verify_error: why it did not verify (OpenSSL's text), or None.
    """

    protocol: str
    cipher: str
    bits: int
    peer_subject: str | None
    peer_issuer: str | None
    peer_verified: bool
    peer_fingerprint: str | None = None
    verify_error: str | None = None


def _peer_der(tls: TlsObject) -> bytes | None:
    der = tls.getpeercert(binary_form=True)
    return der or None


def _verify_status(tls: TlsObject, has_cert: bool) -> tuple[bool, str | None]:
    """(verified, reason) for the peer certificate of an established connection."""
    if not has_cert:
        return False, None
    record = _HOOK.record(tls) if _HOOK is not None else None
    if record is not None:
        if record.errors:
            depth, _code, text = record.errors[0]
            return False, f"{text} (depth {depth})"
        return True, None
    # No record: either no hook, or a resumed session (the callback does not run on resumption).
    # Only a context that enforced verification lets us say "verified".
    context = getattr(_ssl_object(tls), "context", None)
    if isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED:
        return True, None
    return False, "not verified"


def tls_facts(tls: TlsObject) -> TlsFacts:
    """Collect the facts of an established TLS connection.

    Args:
        tls: the ``ssl.SSLObject`` (or ``trio.SSLStream``) after a completed handshake.

    Returns:
        The facts, with subject and issuer sanitised and truncated.
    """
    cipher = tls.cipher()
    name, _version, bits = cipher if cipher else ("unknown", "", 0)
    der = _peer_der(tls)
    subject = issuer = fingerprint = None
    if der is not None:
        fingerprint = fingerprint_sha256(der)
        try:
            cert = x509.load_der_x509_certificate(der)
            subject = _sanitise(cert.subject.rfc4514_string())
            issuer = _sanitise(cert.issuer.rfc4514_string())
        except ValueError:
            subject = issuer = "unparsable certificate"
    verified, reason = _verify_status(tls, der is not None)
    return TlsFacts(
        protocol=_sanitise(tls.version() or "unknown", 32),
        cipher=_sanitise(name, 64),
        bits=int(bits or 0),
        peer_subject=subject,
        peer_issuer=issuer,
        peer_verified=verified,
        peer_fingerprint=fingerprint,
        verify_error=_sanitise(reason) if reason else None,
    )


def _comment_quote(text: str) -> str:
    # RFC 5322 comments: backslash, parentheses (and the quotes we add) must be quoted-pairs.
    return re.sub(r'([\\()"])', r"\\\1", text)


def received_clause(facts: TlsFacts) -> str:
    """The Received: header comment for a TLS session (RFC 3848 leaves its text free; Postfix style).

    Example: ``(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))``, followed, when the
    client presented a certificate, by ``(Client subject "CN=x", Issuer "CN=ca" (verified OK))``.
    """
    text = f"(using {facts.protocol} with cipher {facts.cipher} ({facts.bits}/{facts.bits} bits))"
    if facts.peer_subject is not None:
        status = "verified OK" if facts.peer_verified else "not verified"
        text += (
            f' (Client subject "{_comment_quote(facts.peer_subject)}",'
            f' Issuer "{_comment_quote(facts.peer_issuer or "")}" ({status}))'
        )
    return text


# ---------------------------------------------------------------------------------------------------
# smtpc requirements


@dataclasses.dataclass(frozen=True, slots=True)
class TlsRequirements:
    """What smtpc demands of one destination's TLS (parsed by :func:`parse_tls_requirements`).

    Attributes:
        level: ``none`` (never STARTTLS), ``may`` (opportunistic; the default), ``encrypt`` (TLS
            required, certificate not checked), ``verify`` (TLS with a valid chain and host name).
        cert_fps: SHA-256 fingerprints (canonical ``AB:CD:..`` form); the server certificate must be one.
        hostnames: the server certificate's subjectAltName DNS entries must match one of these.
        root_ca_subjects: the verified chain must end at a root CA with one of these subjects.
    """

    level: TlsLevel = "may"
    cert_fps: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()
    root_ca_subjects: tuple[str, ...] = ()

    @property
    def tls_required(self) -> bool:
        """Whether delivery without TLS is a violation."""
        return self.level in ("encrypt", "verify")


_HEX64 = re.compile(r"[0-9a-f]{64}")
_HOSTNAME = re.compile(
    r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?"
)
_KEYS = ("level", "cert_fps", "hostnames", "root_ca_subjects")


def normalise_fingerprint(text: str) -> str:
    """Canonical ``AB:CD:...`` form of a SHA-256 fingerprint written with or without colons.

    Raises:
        ValueError: not 32 bytes of hex.
    """
    plain = text.strip().replace(":", "").lower()
    if not _HEX64.fullmatch(plain):
        raise ValueError(f"bad certificate fingerprint {text!r}: expected 64 hex digits (SHA-256)")
    return ":".join(plain[i : i + 2] for i in range(0, 64, 2)).upper()


def _scan(text: str) -> list[tuple[str, list[str] | None]]:
    """Split into items: (word, None) or (key, [values]). Values may be "quoted" (\\" and \\\\ escapes)."""
    items: list[tuple[str, list[str] | None]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace() or text[i] == ";":
            i += 1
            continue
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, i)
        if not m:
            raise ValueError(f"tls_requirements: unexpected {text[i]!r} at column {i + 1}")
        word, i = m.group(), m.end()
        if i >= n or text[i] != "=":
            if i < n and not (text[i].isspace() or text[i] == ";"):
                raise ValueError(f"tls_requirements: unexpected {text[i]!r} after {word!r} at column {i + 1}")
            items.append((word, None))
            continue
        i += 1
        values: list[str] = []
        while True:
            if i < n and text[i] == '"':
                j, chars = i + 1, []
                while j < n and text[j] != '"':
                    if text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\':
                        j += 1  # only \" and \\ are escapes: DNs keep their own backslashes
                    chars.append(text[j])
                    j += 1
                if j >= n:
                    raise ValueError(f"tls_requirements: unterminated quote in {word}= at column {i + 1}")
                values.append("".join(chars))
                i = j + 1
            else:
                m = re.compile(r'[^\s;,"]+').match(text, i)
                if not m:
                    raise ValueError(f"tls_requirements: {word}= needs a value (column {i + 1})")
                values.append(m.group())
                i = m.end()
            if i < n and text[i] == ",":
                i += 1
                continue
            if i < n and not (text[i].isspace() or text[i] == ";"):
                raise ValueError(f"tls_requirements: unexpected {text[i]!r} in {word}= at column {i + 1}")
            break
        items.append((word, values))
    return items


def parse_tls_requirements(text: str) -> TlsRequirements:
    """Parse the compact ``tls_requirements`` syntax used in the config and the routes map.

    Items are separated by white space or ``;``: a level word (``none``, ``may``, ``encrypt``,
    ``verify``, or ``level=...``) and ``key=value[,value...]`` items: ``cert_fps``, ``hostnames``,
    ``root_ca_subjects``. Values containing commas, spaces or ``;`` are double-quoted
    (``root_ca_subjects="CN=Root CA,O=Example"``). Keys are case-insensitive and may repeat (lists add
    up). Any of the three checks without a level means ``encrypt``; with ``none`` or ``may`` they are
    an error. The empty string means ``may``.

    Example: ``verify; cert_fps=AB:CD:...,0123abcd...; hostnames=mx.example.com``.

    Raises:
        ValueError: with a message naming the offending item.
    """
    level: str | None = None
    lists: dict[str, list[str]] = {"cert_fps": [], "hostnames": [], "root_ca_subjects": []}
    for word, values in _scan(text):
        key = word.lower()
        if values is None or key == "level":
            if values is not None:
                if len(values) != 1:
                    raise ValueError("tls_requirements: level= takes one value")
                key = values[0].lower()
            if key not in TLS_LEVELS:
                hint = f"; expected one of {', '.join(TLS_LEVELS)} or key=value ({', '.join(_KEYS[1:])})"
                raise ValueError(f"tls_requirements: unknown item {word!r}{hint}")
            if level is not None and level != key:
                raise ValueError(f"tls_requirements: conflicting levels {level!r} and {key!r}")
            level = key
            continue
        if key not in lists:
            raise ValueError(f"tls_requirements: unknown key {word!r}; expected one of {', '.join(_KEYS)}")
        if key == "cert_fps":
            lists[key].extend(normalise_fingerprint(v) for v in values)
        elif key == "hostnames":
            for v in values:
                name = v.lower().rstrip(".")
                if not name or not _HOSTNAME.fullmatch(name):
                    raise ValueError(f"tls_requirements: bad host name {v!r} in hostnames=")
                lists[key].append(name)
        else:
            for v in values:
                if not v.strip():
                    raise ValueError("tls_requirements: empty subject in root_ca_subjects=")
                _subject_key(v)  # validate now, not at delivery time
                lists[key].append(v.strip())
    checks = any(lists.values())
    if level is None:
        level = "encrypt" if checks else "may"
    elif checks and level in ("none", "may"):
        raise ValueError(f"tls_requirements: certificate checks need TLS, but the level is {level!r}")
    return TlsRequirements(
        level=level,  # type: ignore[arg-type]  # checked against TLS_LEVELS above
        cert_fps=tuple(dict.fromkeys(lists["cert_fps"])),
        hostnames=tuple(dict.fromkeys(lists["hostnames"])),
        root_ca_subjects=tuple(dict.fromkeys(lists["root_ca_subjects"])),
    )


def _quote_value(value: str) -> str:
    if re.fullmatch(r'[^\s;,"\\]+', value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_tls_requirements(req: TlsRequirements) -> str:
    """The text form of ``req``; :func:`parse_tls_requirements` turns it back into an equal value."""
    parts: list[str] = [req.level]
    for key in _KEYS[1:]:
        values: tuple[str, ...] = getattr(req, key)
        if values:
            parts.append(f"{key}=" + ",".join(_quote_value(v) for v in values))
    return "; ".join(parts)


def _subject_key(subject: str) -> tuple[tuple[str, str], ...]:
    """A comparable form of a distinguished name, written RFC 4514 style or OpenSSL ``/C=../CN=..``."""
    text = subject.strip()
    if text.startswith("/"):
        # OpenSSL's one-line form lists the RDNs root-first; RFC 4514 lists them leaf-first.
        text = ",".join(reversed([p.replace(",", "\\,") for p in text[1:].split("/") if p]))
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise ValueError(f"tls_requirements: bad subject {subject!r} in root_ca_subjects=: {exc}") from None
    return _name_key(name)


def _name_key(name: x509.Name) -> tuple[tuple[str, str], ...]:
    # Order-insensitive and case-insensitive: operators copy subjects from different tools.
    return tuple(
        sorted((attr.oid.dotted_string, " ".join(str(attr.value).split()).casefold()) for attr in name)
    )


def peer_chain(tls: TlsObject) -> tuple[bytes, ...] | None:
    """The chain OpenSSL built for the peer certificate, leaf first, as DER (None: not known).

    It comes from the verify callback (see the module docstring); when verification succeeded its last
    element is the trust anchor from the CA store.
    """
    record = _HOOK.record(tls) if _HOOK is not None else None
    if record is None or not record.chain:
        return None
    return tuple(record.chain[d] for d in sorted(record.chain))


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]


def _ip_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _name_matches(pattern: str, hostname: str) -> bool:
    """RFC 6125 6.4: exact match, or a wildcard as the whole left-most label."""
    hostname = hostname.lower().rstrip(".")
    if pattern == hostname:
        return True
    if pattern.startswith("*.") and "." in hostname:
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == pattern[2:] and "." in rest
    return False


def context_for_requirements(settings: ClientTlsSettings, req: TlsRequirements) -> ssl.SSLContext:
    """The client context smtpc should use for ``req``.

    ``verify`` verifies the chain in the handshake. When ``hostnames`` are given they replace the
    destination's name, so the handshake skips its host name check and :func:`check_requirements`
    compares the certificate with the listed names instead.
    """
    verify = req.level == "verify"
    return client_context(settings, verify=verify, check_hostname=verify and not req.hostnames)


def check_requirements(
    req: TlsRequirements, tls: TlsObject | None, server_hostname: str | None
) -> str | None:
    """Judge a finished STARTTLS handshake (or its absence) against ``req``.

    Args:
        req: the destination's requirements.
        tls: the TLS connection after the handshake, or None when the session is in plaintext
            (the server did not offer STARTTLS).
        server_hostname: the name smtpc connected to (the MX host name), used by ``verify`` when no
            ``hostnames`` are listed.

    Returns:
        None when satisfied, else the reason (for the log and ``meta1 queue show``).
    """
    if tls is None:
        return f"no TLS offered but tls_requirements={req.level}" if req.tls_required else None
    needs_cert = req.level == "verify" or req.cert_fps or req.hostnames or req.root_ca_subjects
    der = _peer_der(tls)
    if der is None:
        return "server presented no certificate" if needs_cert else None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "server certificate cannot be parsed"
    if req.level == "verify":
        verified, reason = _verify_status(tls, True)
        record = _HOOK.record(tls) if _HOOK is not None else None
        if record is not None:
            # A host name error is judged below (listed hostnames replace the destination name).
            chain_errors = [e for e in record.errors if e[1] not in _NAME_ERRORS]
            verified, reason = (
                (False, f"{chain_errors[0][2]} (depth {chain_errors[0][0]})")
                if chain_errors
                else (True, None)
            )
        if not verified:
            return f"certificate verification failed: {reason}"
        if not req.hostnames and server_hostname:
            names = _dns_names(cert)
            try:
                ip: str | None = str(ipaddress.ip_address(server_hostname.strip("[]")))
            except ValueError:
                ip = None
            ok = ip in _ip_names(cert) if ip else any(_name_matches(n, server_hostname) for n in names)
            if not ok:
                listed = ", ".join(names) or "(none)"
                return f"hostname mismatch: certificate names {listed} do not match {server_hostname}"
    if req.cert_fps:
        got = fingerprint_sha256(der)
        if got not in req.cert_fps:
            return f"certificate fingerprint mismatch: got {got}, expected one of {', '.join(req.cert_fps)}"
    if req.hostnames:
        names = _dns_names(cert)
        if not any(_name_matches(n, h) for n in names for h in req.hostnames):
            return (
                f"hostname mismatch: certificate names {', '.join(names) or '(none)'}"
                f" match none of {', '.join(req.hostnames)}"
            )
    if req.root_ca_subjects:
        reason = _check_root(req, tls, cert)
        if reason:
            return reason
    return None


def _check_root(req: TlsRequirements, tls: TlsObject, leaf: x509.Certificate) -> str | None:
    allowed = {_subject_key(s) for s in req.root_ca_subjects}
    chain = peer_chain(tls)
    record = _HOOK.record(tls) if _HOOK is not None else None
    if chain is not None and record is not None:
        errors = [e for e in record.errors if e[1] not in _NAME_ERRORS]
        root = x509.load_der_x509_certificate(chain[-1])
        subject = _sanitise(root.subject.rfc4514_string())
        if errors:
            return (
                f"chain does not lead to an allowed root CA subject: it stops at {subject!r} ({errors[0][2]})"
            )
        if _name_key(root.subject) not in allowed:
            return f"chain does not lead to an allowed root CA subject: root is {subject!r}"
        return None
    # No recorded chain (no hook): the best we can do on Python 3.11 is the leaf's issuer, which is
    # the root only for one-level chains.
    if _name_key(leaf.issuer) not in allowed:
        issuer = _sanitise(leaf.issuer.rfc4514_string())
        return f"chain does not lead to an allowed root CA subject: issuer is {issuer!r}"
    return None
