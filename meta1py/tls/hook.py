"""Peer-chain access: an OpenSSL verify callback installed on :mod:`ssl` contexts through ctypes.

Why it exists: request, log, don't enforce
------------------------------------------
An MTA on port 25 asks clients for a certificate (``request_cert``) only to record who they are in the
``Received:`` header and the log; it must never refuse a handshake because that certificate is
self-signed or issued by a CA it does not know (MeTA1's and Postfix's behaviour). The ``ssl`` module
cannot express that, in any Python version: ``CERT_NONE`` on a server sends no CertificateRequest at
all, ``CERT_OPTIONAL`` aborts the handshake when the client's certificate does not verify (no CA bundle
can cover self-signed certificates), and ``ssl`` offers no verify callback. On the client side, smtpc's
``root_ca_subjects`` needs the chain OpenSSL built, and ``SSLSocket.get_verified_chain()`` only exists
from Python 3.13 (we run 3.11).

What we do: through :mod:`ctypes` we call the very libssl that the interpreter's ``_ssl`` module is
linked against, and install with ``SSL_CTX_set_verify`` a verify callback on the ``SSL_CTX`` behind
the Python ``SSLContext``. The callback records, per connection, the chain OpenSSL built and every
verification error; on server contexts it then returns "ok" so the handshake continues, on client
contexts it returns OpenSSL's own verdict (unchanged behaviour). The pointer to the ``SSL_CTX`` is read
from the ``SSLContext`` object (it is the first field after the object header in CPython's private
``PySSLContext``, 3.7 to 3.13) and checked against ``SSL_CTX_get_options`` and
``SSL_CTX_get_verify_mode`` before use; the connection is found from the callback through the ``SSL``
app data, which CPython sets to its ``_SSLSocket`` (whose ``owner`` is the ``SSLObject``). CPython keeps
an installed callback when ``verify_mode`` is changed later.

The rejected alternative: pyOpenSSL
-----------------------------------
pyOpenSSL has a supported verify callback (``Context.set_verify``), but its ``Connection`` is not an
``ssl.SSLObject``, so ``trio.SSLStream`` needs an adapter that re-implements the SSLObject surface and
its exception mapping; pyOpenSSL also uses *cryptography's* bundled OpenSSL, a second TLS library in the
process whose objects cannot be mixed with the interpreter's ``ssl``. ``bench/tls_handshake.py`` builds
that adapter and compares it with this hook; its figures and the decision are in docs/internals.md
("The verify hook, and why not pyOpenSSL").

When the hook cannot be installed
---------------------------------
On another interpreter, a statically linked ``_ssl``, or a layout that fails the checks, :func:`probe`
says why and nothing degrades silently: :func:`meta1py.tls.contexts.server_context` refuses a
``request_cert`` context (smtps logs the error and does not start), and ``meta1 check-config`` reports
the listener's ``request_cert`` as an error. Client contexts work without the hook: ``peer_verified``
then relies on the context's own enforcement and ``root_ca_subjects`` falls back to the issuer of the
server's certificate (a one-level check).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import ssl
import sys
import weakref
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import trio

__all__ = [
    "NAME_ERRORS",
    "HookUnavailableError",
    "TlsObject",
    "VerifyRecord",
    "hook_available",
    "install",
    "peer_chain",
    "probe",
    "ssl_object",
    "verify_record",
]

log = logging.getLogger(__name__)

#: What the functions of this package accept as "a TLS connection": an ``ssl.SSLObject`` or
#: ``ssl.SSLSocket``, or a ``trio.SSLStream`` (which forwards ``version()``, ``cipher()``,
#: ``getpeercert()`` to its SSLObject).
TlsObject: TypeAlias = "ssl.SSLObject | ssl.SSLSocket | trio.SSLStream[Any]"

#: X509_V_ERR_HOSTNAME_MISMATCH / IP_ADDRESS_MISMATCH: the check_hostname part of verification.
NAME_ERRORS = frozenset({62, 64})


class HookUnavailableError(Exception):
    """The verify callback cannot be installed on this Python (the message says why)."""


@dataclasses.dataclass(slots=True)
class VerifyRecord:
    """What the verify callback saw for one connection.

    Attributes:
        chain: depth -> DER of each certificate OpenSSL looked at (0 is the peer's own).
        errors: (depth, OpenSSL error code, OpenSSL's text) of each verification failure, in order.
    """

    chain: dict[int, bytes] = dataclasses.field(default_factory=dict)
    errors: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)


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
        self.records: weakref.WeakKeyDictionary[Any, VerifyRecord] = weakref.WeakKeyDictionary()
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
        record = self.records.setdefault(owner, VerifyRecord())
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


def _make_hook() -> tuple[_OpenSslHook | None, str | None]:
    """The hook, or None and the reason it cannot be installed on this interpreter."""
    if sys.implementation.name != "cpython" or not (3, 7) <= sys.version_info[:2] <= (3, 13):
        version = ".".join(map(str, sys.version_info[:2]))
        return None, f"{sys.implementation.name} {version} is not CPython 3.7 to 3.13"
    try:
        hook = _OpenSslHook()
        probe_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        hook.ctx_pointer(probe_context)
        probe_context.verify_mode = ssl.CERT_OPTIONAL
        hook.ctx_pointer(probe_context)
    except (OSError, AttributeError, RuntimeError, ImportError, KeyError) as exc:
        log.debug("TLS verify hook unavailable: %s", exc)
        return None, f"the interpreter's libssl cannot be reached through ctypes ({exc})"
    return hook, None


# Built once, at import: every context of the process must share one record table.
_HOOK, _PROBLEM = _make_hook()


def probe() -> str | None:
    """Whether the verify callback can be installed in this process.

    Returns:
        None when it can; otherwise why not, in one sentence (for the error that refuses
        ``request_cert``).
    """
    return _PROBLEM


def hook_available() -> bool:
    """Whether client certificates can be requested without enforcing them (see the module doc)."""
    return probe() is None


def install(context: ssl.SSLContext, enforce: bool, depth: int | None = None) -> None:
    """Install the recording verify callback on ``context``, keeping its verify mode.

    Args:
        context: the context (its verify mode set already).
        enforce: True to return OpenSSL's verdict (client side), False to record and continue
            (server side: request, log, don't enforce).
        depth: OpenSSL's verify depth to set, or None to keep the context's.

    Raises:
        HookUnavailableError: the callback cannot be installed on this Python (see :func:`probe`).
    """
    problem = probe()
    if problem is not None or _HOOK is None:
        raise HookUnavailableError(problem or "the verify hook is not installed")
    _HOOK.install(context, enforce, depth)


def ssl_object(tls: object) -> object:
    """The ``ssl.SSLObject`` behind ``tls`` (a ``trio.SSLStream`` or the object itself)."""
    # trio.SSLStream keeps its SSLObject in _ssl_object and has no public accessor; the verify record
    # is keyed by the SSLObject, so look through the stream.
    return getattr(tls, "_ssl_object", tls)


def verify_record(tls: object) -> VerifyRecord | None:
    """What the verify callback recorded for ``tls`` (None: no hook, or the callback did not run,
    as on a resumed session)."""
    if _HOOK is None:
        return None
    return _HOOK.records.get(ssl_object(tls))


def peer_chain(tls: TlsObject) -> tuple[bytes, ...] | None:
    """The chain OpenSSL built for the peer certificate, leaf first, as DER (None: not known).

    It comes from the verify callback; when verification succeeded its last element is the trust
    anchor from the CA store.
    """
    record = verify_record(tls)
    if record is None or not record.chain:
        return None
    return tuple(record.chain[d] for d in sorted(record.chain))
