"""TLS session facts: what a finished handshake was, for the log and the ``Received:`` header.

Certificates are parsed with ``cryptography`` (pure parsing, works whether or not the chain was
verified), imported on first use: an MTA without TLS never loads it. Strings that go into headers
and logs are printable ASCII only (never CR or LF), truncated to :data:`MAX_FACT_CHARS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import ssl

from meta1py.tls.hook import TlsObject, ssl_object, verify_record

__all__ = [
    "MAX_FACT_CHARS",
    "TlsFacts",
    "fingerprint_sha256",
    "received_clause",
    "tls_facts",
]

#: Maximum length of the subject/issuer strings in :class:`TlsFacts` (they go into Received: headers).
MAX_FACT_CHARS = 256


def sanitise(text: str, limit: int = MAX_FACT_CHARS) -> str:
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


def peer_der(tls: TlsObject) -> bytes | None:
    """The peer certificate of an established connection as DER (None: the peer sent none)."""
    der = tls.getpeercert(binary_form=True)
    return der or None


def verify_status(tls: TlsObject, has_cert: bool) -> tuple[bool, str | None]:
    """(verified, reason) for the peer certificate of an established connection."""
    if not has_cert:
        return False, None
    record = verify_record(tls)
    if record is not None:
        if record.errors:
            depth, _code, text = record.errors[0]
            return False, f"{text} (depth {depth})"
        return True, None
    # No record: either no hook, or a resumed session (the callback does not run on resumption).
    # Only a context that enforced verification lets us say "verified".
    context = getattr(ssl_object(tls), "context", None)
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
    from cryptography import x509  # on first use: see the module docstring

    cipher = tls.cipher()
    name, _version, bits = cipher if cipher else ("unknown", "", 0)
    der = peer_der(tls)
    subject = issuer = fingerprint = None
    if der is not None:
        fingerprint = fingerprint_sha256(der)
        try:
            cert = x509.load_der_x509_certificate(der)
            subject = sanitise(cert.subject.rfc4514_string())
            issuer = sanitise(cert.issuer.rfc4514_string())
        except ValueError:
            subject = issuer = "unparsable certificate"
    verified, reason = verify_status(tls, der is not None)
    return TlsFacts(
        protocol=sanitise(tls.version() or "unknown", 32),
        cipher=sanitise(name, 64),
        bits=int(bits or 0),
        peer_subject=subject,
        peer_issuer=issuer,
        peer_verified=verified,
        peer_fingerprint=fingerprint,
        verify_error=sanitise(reason) if reason else None,
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
