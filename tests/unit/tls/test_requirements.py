"""tls_requirements: the compact syntax, and the checks against real handshakes (memory BIOs)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tls_handshake import handshake

from meta1py.tls.checks import check_requirements
from meta1py.tls.contexts import (
    ClientTlsSettings,
    ServerTlsSettings,
    client_context,
    context_for_requirements,
    server_context,
)
from meta1py.tls.facts import fingerprint_sha256
from meta1py.tls.hook import hook_available, peer_chain
from meta1py.tls.requirements import (
    TlsRequirements,
    format_tls_requirements,
    normalise_fingerprint,
    parse_tls_requirements,
)
from meta1py_testing.certs import Pki

FP = "AB:" * 31 + "CD"
FP_PLAIN = FP.replace(":", "").lower()


# ----------------------------------------------------------------------------------------------------
# Parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", TlsRequirements("may")),
        ("   ", TlsRequirements("may")),
        ("none", TlsRequirements("none")),
        ("may", TlsRequirements("may")),
        ("encrypt", TlsRequirements("encrypt")),
        ("VERIFY", TlsRequirements("verify")),
        ("level=verify", TlsRequirements("verify")),
        (f"cert_fps={FP}", TlsRequirements("encrypt", cert_fps=(FP,))),
        (f"cert_fps={FP_PLAIN}", TlsRequirements("encrypt", cert_fps=(FP,))),
        (f"verify; cert_fps={FP},{FP_PLAIN}", TlsRequirements("verify", cert_fps=(FP,))),
        (
            "hostnames=MX.Example.com.,*.example.net hostnames=a.test",
            TlsRequirements("encrypt", hostnames=("mx.example.com", "*.example.net", "a.test")),
        ),
        (
            'encrypt;root_ca_subjects="CN=Root CA,O=Example","CN=Other\\, Inc \\\\\\"q\\\\\\""',
            TlsRequirements("encrypt", root_ca_subjects=("CN=Root CA,O=Example", 'CN=Other\\, Inc \\"q\\"')),
        ),
        (
            "root_ca_subjects=/O=Example/CN=Root",
            TlsRequirements("encrypt", root_ca_subjects=("/O=Example/CN=Root",)),
        ),
        ("encrypt encrypt", TlsRequirements("encrypt")),
    ],
)
def test_parse(text: str, expected: TlsRequirements) -> None:
    assert parse_tls_requirements(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sometimes", "unknown item 'sometimes'"),
        ("encrypt verify", "conflicting levels 'encrypt' and 'verify'"),
        ("cert_fps=ABCD", "bad certificate fingerprint 'ABCD'"),
        ("cert_fps=", "cert_fps= needs a value"),
        (f"may cert_fps={FP}", "certificate checks need TLS, but the level is 'may'"),
        ("fingerprints=x", "unknown key 'fingerprints'"),
        ('root_ca_subjects="CN=x', "unterminated quote"),
        ("hostnames=bad_name!", "bad host name 'bad_name!'"),
        ("hostnames=-bad.example", "bad host name '-bad.example'"),
        ("level=a,b", "level= takes one value"),
        ('root_ca_subjects="not a dn"', "bad subject 'not a dn'"),
        ("encrypt,verify", "unexpected ','"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"tls_requirements|fingerprint") as info:
        parse_tls_requirements(text)
    assert message in str(info.value)


_subjects = st.sampled_from(["CN=Root CA,O=Example", 'CN=x\\, y \\"q\\"', "CN=a b c", "/O=X/CN=Y"])
_hosts = st.sampled_from(["mx.example.com", "*.example.net", "a.test", "localhost"])
_fps = st.binary(min_size=32, max_size=32).map(lambda b: fingerprint_sha256(b))


@given(
    level=st.sampled_from(["encrypt", "verify"]),
    fps=st.lists(_fps, max_size=3, unique=True),
    hosts=st.lists(_hosts, max_size=3, unique=True),
    subjects=st.lists(_subjects, max_size=3, unique=True),
)
def test_format_round_trip(level: str, fps: list[str], hosts: list[str], subjects: list[str]) -> None:
    req = TlsRequirements(level, tuple(fps), tuple(hosts), tuple(subjects))  # type: ignore[arg-type]
    assert parse_tls_requirements(format_tls_requirements(req)) == req


def test_normalise_fingerprint() -> None:
    assert normalise_fingerprint(FP_PLAIN.upper()) == FP
    assert normalise_fingerprint(f" {FP.lower()} ") == FP


# ----------------------------------------------------------------------------------------------------
# Checks


def _server(pki: Pki, which: str = "server") -> ssl.SSLContext:
    files = getattr(pki, which)
    return server_context(ServerTlsSettings(files.cert, files.key, request_cert=False))


def _client(pki: Pki, verify: bool, check_hostname: bool | None = None) -> ssl.SSLContext:
    return client_context(
        ClientTlsSettings(ca_file=pki.ca.cert), verify=verify, check_hostname=check_hostname
    )


def test_no_tls() -> None:
    assert check_requirements(parse_tls_requirements("may"), None, "mx") is None
    assert check_requirements(parse_tls_requirements("none"), None, "mx") is None
    assert check_requirements(parse_tls_requirements("encrypt"), None, "mx") == (
        "no TLS offered but tls_requirements=encrypt"
    )
    assert check_requirements(parse_tls_requirements("verify"), None, "mx") == (
        "no TLS offered but tls_requirements=verify"
    )


def test_plaintext_judgement_loads_no_cryptography() -> None:
    # smtpc judges every plaintext session; cryptography (a ~10 MB library that the fork server does
    # not preload) must be imported only when there is a certificate to parse.
    code = (
        "import sys\n"
        "from meta1py.tls.checks import check_requirements\n"
        "from meta1py.tls.requirements import parse_tls_requirements\n"
        "for level in ('may', 'none', 'encrypt', 'verify'):\n"
        "    check_requirements(parse_tls_requirements(level), None, 'mx')\n"
        "print('cryptography' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fingerprint_without_verification(pki: Pki) -> None:
    # The self-signed certificate does not verify, but a pinned fingerprint still works.
    hs = handshake(_server(pki, "self_signed"), _client(pki, verify=False))
    assert hs.ok
    for fp in (pki.self_signed.fingerprint, pki.self_signed.fingerprint_hex):
        assert check_requirements(parse_tls_requirements(f"cert_fps={fp}"), hs.client, "localhost") is None
    reason = check_requirements(parse_tls_requirements(f"cert_fps={pki.server.fingerprint}"), hs.client, "x")
    assert reason == (
        f"certificate fingerprint mismatch: got {pki.self_signed.fingerprint},"
        f" expected one of {pki.server.fingerprint}"
    )


def test_encrypt_accepts_anything(pki: Pki) -> None:
    hs = handshake(_server(pki, "expired"), _client(pki, verify=False))
    assert hs.ok
    assert check_requirements(parse_tls_requirements("encrypt"), hs.client, "localhost") is None
    assert check_requirements(parse_tls_requirements("may"), hs.client, "localhost") is None


def test_hostnames(pki: Pki) -> None:
    hs = handshake(_server(pki), _client(pki, verify=False), server_hostname="mx.other.test")
    assert hs.ok
    assert check_requirements(parse_tls_requirements("hostnames=mx1.example.test"), hs.client, "x") is None
    assert check_requirements(parse_tls_requirements("hostnames=nope.test,localhost"), hs.client, "x") is None
    reason = check_requirements(parse_tls_requirements("hostnames=mx2.example.test"), hs.client, "x")
    assert reason == (
        "hostname mismatch: certificate names localhost, mx1.example.test match none of mx2.example.test"
    )


def test_wildcard_certificate(pki: Pki, tmp_path: Path) -> None:
    from meta1py_testing.certs import issue_cert

    wild = issue_cert(tmp_path, "wild", pki.ca, "*.example.test", ["*.example.test"])
    ctx = server_context(ServerTlsSettings(wild.cert, wild.key, request_cert=False))
    hs = handshake(ctx, _client(pki, verify=False))
    assert check_requirements(parse_tls_requirements("hostnames=mx.example.test"), hs.client, "x") is None
    assert check_requirements(parse_tls_requirements("hostnames=a.b.example.test"), hs.client, "x")
    assert check_requirements(parse_tls_requirements("hostnames=example.test"), hs.client, "x")


def test_verify_good(pki: Pki) -> None:
    req = parse_tls_requirements("verify")
    hs = handshake(_server(pki), context_for_requirements(ClientTlsSettings(ca_file=pki.ca.cert), req))
    assert hs.ok
    assert check_requirements(req, hs.client, "localhost") is None


def test_verify_refuses_in_handshake(pki: Pki) -> None:
    for which in ("self_signed", "expired"):
        hs = handshake(_server(pki, which), _client(pki, verify=True))
        assert isinstance(hs.client_error, ssl.SSLCertVerificationError), which


def test_verify_with_listed_hostnames(pki: Pki) -> None:
    # hostnames replace the destination name: connect as "mx.elsewhere.test", accept mx1.example.test.
    req = parse_tls_requirements("verify hostnames=mx1.example.test")
    ctx = context_for_requirements(ClientTlsSettings(ca_file=pki.ca.cert), req)
    hs = handshake(_server(pki), ctx, server_hostname="mx.elsewhere.test")
    assert hs.ok
    assert check_requirements(req, hs.client, "mx.elsewhere.test") is None
    bad = parse_tls_requirements("verify hostnames=mx9.example.test")
    assert str(check_requirements(bad, hs.client, "mx.elsewhere.test")).startswith("hostname mismatch")


def test_verify_checks_hostname_when_context_did_not(pki: Pki) -> None:
    hs = handshake(_server(pki), _client(pki, verify=True, check_hostname=False), server_hostname="x.test")
    assert hs.ok
    reason = check_requirements(parse_tls_requirements("verify"), hs.client, "mx.elsewhere.test")
    assert reason == (
        "hostname mismatch: certificate names localhost, mx1.example.test do not match mx.elsewhere.test"
    )
    assert check_requirements(parse_tls_requirements("verify"), hs.client, "127.0.0.1") is None


def test_verify_unverified_chain_is_reported(pki: Pki) -> None:
    # A context that did not verify (opportunistic) cannot satisfy "verify" after the fact.
    hs = handshake(_server(pki, "self_signed"), _client(pki, verify=False))
    reason = check_requirements(parse_tls_requirements("verify"), hs.client, "localhost")
    assert reason is not None and reason.startswith("certificate verification failed: ")


@pytest.mark.skipif(not hook_available(), reason="needs the verify hook")
def test_root_ca_subjects_through_intermediate(pki: Pki) -> None:
    hs = handshake(_server(pki, "chained_server"), _client(pki, verify=False))
    assert hs.ok
    chain = peer_chain(hs.client)
    assert chain is not None and len(chain) == 3 and chain[-1] == pki.ca.der
    ok = parse_tls_requirements(f'root_ca_subjects="{pki.ca.subject}"')
    assert check_requirements(ok, hs.client, "localhost") is None
    # OpenSSL's /-separated, root-first spelling and a different case work too.
    alt = parse_tls_requirements('root_ca_subjects="/O=META1PY tests/CN=meta1py test root CA"')
    assert check_requirements(alt, hs.client, "localhost") is None
    # The intermediate is not the root.
    bad = parse_tls_requirements(f'root_ca_subjects="{pki.intermediate.subject}"')
    assert check_requirements(bad, hs.client, "localhost") == (
        "chain does not lead to an allowed root CA subject: root is 'CN=meta1py Test Root CA,O=meta1py tests'"
    )


def test_root_ca_subjects_unverified_chain(pki: Pki) -> None:
    hs = handshake(_server(pki, "self_signed"), _client(pki, verify=False))
    req = parse_tls_requirements(f'root_ca_subjects="{pki.self_signed.subject}"')
    reason = check_requirements(req, hs.client, "localhost")
    if hook_available():
        # Self-signed: the certificate is its own "root", but nothing in the trust store vouches for it.
        assert reason is not None
        assert reason.startswith("chain does not lead to an allowed root CA subject: it stops at")
    else:
        assert reason is None  # documented one-level fallback


def test_server_without_certificate_checks(pki: Pki) -> None:
    # "may"/"encrypt" need no certificate checks, so nothing to say even with an odd certificate.
    hs = handshake(_server(pki), _client(pki, verify=False))
    assert check_requirements(TlsRequirements("encrypt"), hs.client, None) is None
