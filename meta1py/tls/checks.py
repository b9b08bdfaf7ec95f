"""Judging a finished smtpc STARTTLS handshake against the destination's :class:`TlsRequirements`.

The requirements themselves (value type and text syntax) are in :mod:`meta1py.tls.requirements`; the
context smtpc builds for them is :func:`meta1py.tls.contexts.context_for_requirements`. The chain and
verification errors come from the verify callback (:mod:`meta1py.tls.hook`).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from meta1py.tls.facts import fingerprint_sha256, peer_der, sanitise, verify_status
from meta1py.tls.hook import NAME_ERRORS, TlsObject, peer_chain, verify_record
from meta1py.tls.requirements import TlsRequirements, name_key, subject_key

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["check_requirements"]


def _dns_names(cert: x509.Certificate) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]


def _ip_names(cert: x509.Certificate) -> list[str]:
    from cryptography import x509

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
    der = peer_der(tls)
    if der is None:
        return "server presented no certificate" if needs_cert else None
    # cryptography is imported here, not at the top nor before the plaintext and no-certificate
    # answers: a process that loads it after the fork server's fork pays ~10 MB of its own.
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return "server certificate cannot be parsed"
    if req.level == "verify":
        verified, reason = verify_status(tls, True)
        record = verify_record(tls)
        if record is not None:
            # A host name error is judged below (listed hostnames replace the destination name).
            chain_errors = [e for e in record.errors if e[1] not in NAME_ERRORS]
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
    from cryptography import x509

    allowed = {subject_key(s) for s in req.root_ca_subjects}
    chain = peer_chain(tls)
    record = verify_record(tls)
    if chain is not None and record is not None:
        errors = [e for e in record.errors if e[1] not in NAME_ERRORS]
        root = x509.load_der_x509_certificate(chain[-1])
        subject = sanitise(root.subject.rfc4514_string())
        if errors:
            return (
                f"chain does not lead to an allowed root CA subject: it stops at {subject!r} ({errors[0][2]})"
            )
        if name_key(root.subject) not in allowed:
            return f"chain does not lead to an allowed root CA subject: root is {subject!r}"
        return None
    # No recorded chain (no hook): the best we can do on Python 3.11 is the leaf's issuer, which is
    # the root only for one-level chains.
    if name_key(leaf.issuer) not in allowed:
        issuer = sanitise(leaf.issuer.rfc4514_string())
        return f"chain does not lead to an allowed root CA subject: issuer is {issuer!r}"
    return None
