"""Relaying allowed by a client certificate (the access map's certsubject:/certissuer:), end to end:
real STARTTLS with generated certificates, the MTA in production mode as root (issue 19).

smar's nameserver is a knotd that serves no reverse zone, so the client's reverse DNS is a
temporary failure: the ``cltresolve:temp`` entry refuses everyone but a client that may relay.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meta1py_testing.certs import Pki, make_pki
from meta1py_testing.daemon import Meta1Daemon
from meta1py_testing.dns import running_dns_server
from meta1py_testing.peers import recording_sink

pytestmark = pytest.mark.e2e

TLS_SECTION = "tls { cert_file = ../pki/server.crt; key_file = ../pki/server.key; CA_file = ../pki/ca.crt; }"


@pytest.fixture(scope="module")
def dns() -> Iterator[tuple[str, int]]:
    with running_dns_server({"example.test": "mail A 127.0.0.10\n"}) as server:
        yield server


def _pki(directory: Path) -> Pki:
    pki = make_pki(directory / "pki")
    (directory / "pki").chmod(0o755)
    for key in (directory / "pki").glob("*.key"):
        key.chmod(0o600)
    return pki


def _rcpt_over_tls(port: int, pki: Pki, cert: tuple[Path, Path] | None, rcpt: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.example")
        client.starttls(context=ctx)
        client.ehlo("client.example")
        assert client.mail("a@example.org")[0] == 250
        code, text = client.rcpt(rcpt)
        if code == 250:
            assert client.data(b"Subject: relayed by certificate\r\n\r\nbody\r\n")[0] == 250
        return code, text


def test_a_verified_client_certificate_may_relay(
    make_daemon: Callable[..., Meta1Daemon], dns: tuple[str, int]
) -> None:
    ip, port = dns
    with recording_sink() as sink:
        daemon = make_daemon(
            sections={
                "smtps": f"{TLS_SECTION} relay_clients = {{ 127.0.0.2 }};",
                "smar": f"access = ../access; routes = ../routes; nameserver = {{ {ip}:{port} }};",
            },
            ready_timeout=90,
        )
        pki = _pki(daemon.dir)
        (daemon.dir / "routes").write_text(f"example.net smtp:[127.0.0.1]:{sink.port}\n")
        (daemon.dir / "access").write_text(
            f'certsubject:"{pki.client.subject}"  RELAY\n'
            "cltresolve:temp  ERROR:450 4.7.25 Client host rejected: cannot find your hostname\n"
        )
        with daemon:
            # The CA's client certificate: relaying allowed, and the reverse DNS denial waived.
            good = (pki.client.cert, pki.client.key)
            assert _rcpt_over_tls(daemon.port, pki, good, "x@example.net")[0] == 250
            (got,) = sink.wait_for_messages(1, 60)
            assert got.rcpt_tos == ("x@example.net",)
            # Without a certificate, or with one from another CA (it does not verify), the
            # cltresolve: entry refuses.
            refused = (450, b"4.7.25 Client host rejected: cannot find your hostname")
            assert _rcpt_over_tls(daemon.port, pki, None, "x@example.net") == refused
            stranger = (pki.other_client.cert, pki.other_client.key)
            assert _rcpt_over_tls(daemon.port, pki, stranger, "x@example.net") == refused
        assert len(sink.messages) == 1
