"""TlsFacts and the Received: clause: what goes into headers and logs must be safe and bounded."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tls_handshake import handshake

from meta1py.tls.contexts import (
    ClientTlsSettings,
    ServerTlsSettings,
    TlsConfigError,
    client_context,
    parse_protocols,
    server_context,
)
from meta1py.tls.facts import MAX_FACT_CHARS, TlsFacts, received_clause, tls_facts
from meta1py.tls.hook import hook_available
from meta1py_testing.certs import Pki


def test_received_clause_plain() -> None:
    facts = TlsFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, None, None, False)
    assert received_clause(facts) == "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))"


def test_received_clause_quotes_comment_specials() -> None:
    facts = TlsFacts("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", 128, 'CN=a (b) "c" \\d', "CN=ca", False)
    assert received_clause(facts) == (
        "(using TLSv1.2 with cipher ECDHE-ECDSA-AES128-GCM-SHA256 (128/128 bits))"
        ' (Client subject "CN=a \\(b\\) \\"c\\" \\\\d", Issuer "CN=ca" (not verified))'
    )


def _hostile_client_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed client certificate whose subject carries CR/LF, non-ASCII and lots of text."""
    key = ec.generate_private_key(ec.SECP256R1())
    # RFC 4514 strings list the last RDN first: put the CN last so it leads the subject string.
    attrs = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "u" * 60) for _ in range(8)]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, "evil\r\nX-Injected: yes\u00e9"))
    name = x509.Name(attrs)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "hostile.crt", directory / "hostile.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.mark.skipif(not hook_available(), reason="needs the verify hook")
def test_facts_are_sanitised_and_truncated(pki: Pki, tmp_path: Path) -> None:
    cert, key = _hostile_client_cert(tmp_path)
    server = server_context(ServerTlsSettings(pki.server.cert, pki.server.key, ca_file=pki.ca.cert))
    client = client_context(ClientTlsSettings(cert_file=cert, key_file=key), verify=False)
    hs = handshake(server, client)
    assert hs.ok
    facts = tls_facts(hs.server)
    assert facts.peer_subject is not None and facts.peer_issuer is not None
    for text in (facts.peer_subject, facts.peer_issuer, received_clause(facts)):
        assert "\r" not in text and "\n" not in text
        assert all(" " <= c <= "~" for c in text)
    assert len(facts.peer_subject) == MAX_FACT_CHARS and facts.peer_subject.endswith("...")
    assert facts.peer_subject.startswith("CN=evil??X-Injected: yes?")
    assert facts.peer_verified is False


def test_server_side_facts_without_client_cert(pki: Pki) -> None:
    server = server_context(ServerTlsSettings(pki.server.cert, pki.server.key))
    hs = handshake(server, client_context(ClientTlsSettings(ca_file=pki.ca.cert), verify=True))
    assert hs.ok
    facts = tls_facts(hs.server)
    assert (facts.peer_subject, facts.peer_issuer, facts.peer_verified) == (None, None, False)
    client_facts = tls_facts(hs.client)
    assert client_facts.peer_subject == pki.server.subject and client_facts.peer_verified is True


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["TLSv1.2", "TLSv1.3"], ("TLSv1.2", None)),
        (["tlsv1.3"], ("TLSv1.3", None)),
        (["TLSv1.2"], ("TLSv1.2", "TLSv1.2")),
        (["TLSv1.1", "TLSv1.2"], ("TLSv1.1", "TLSv1.2")),
    ],
)
def test_parse_protocols(names: list[str], expected: tuple[str, str | None]) -> None:
    assert parse_protocols(names) == expected


@pytest.mark.parametrize(
    ("names", "message"),
    [([], "at least one"), (["TLSv1.1", "TLSv1.3"], "contiguous"), (["SSLv3"], "unknown TLS protocol")],
)
def test_parse_protocols_errors(names: list[str], message: str) -> None:
    with pytest.raises(TlsConfigError, match=message):
        parse_protocols(names)
