"""Reverse DNS and DNS lists end to end: knotd on loopback, real SMTP clients from several loopback
addresses, the MTA as the e2e fixture starts it (production mode as root) (issue 19).

The zones give each client address its own story: a forward-confirmed name, a PTR that lies, a
dial-up name, a DNSBL listing with a TXT record, a garbage DNSBL answer, a DNSWL listing.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.dns import running_dns_server

pytestmark = pytest.mark.e2e

ZONES = {
    "example.test": """
mail            A  127.0.0.10
liar            A  127.0.0.99
pc1.dialup      A  127.0.0.12
listed          A  127.0.0.20
odd             A  127.0.0.21
white           A  127.0.0.22
""",
    "0.0.127.in-addr.arpa": """
10  PTR mail.example.test.
11  PTR liar.example.test.
12  PTR pc1.dialup.example.test.
20  PTR listed.example.test.
21  PTR odd.example.test.
22  PTR white.example.test.
""",
    # A DNSBL: 127.0.0.20 listed with a TXT record; 127.0.0.21 answered with a non-127 address
    # (what a list says when it refuses to answer); 127.0.0.22 listed here and in the DNSWL.
    "bl.test": """
20.0.0.127  A    127.0.0.2
20.0.0.127  TXT  "listed for testing, see https://bl.test/127.0.0.20"
21.0.0.127  A    10.0.0.1
22.0.0.127  A    127.0.0.2
""",
    "wl.test": """
22.0.0.127  A    127.0.10.1
""",
    "dbl.test": """
spam.example.org  A    127.0.1.2
spam.example.org  TXT  "a spam domain"
""",
}

ACCESS = """\
cltname:.dialup.example.test  ERROR:5.7.1 dial-up hosts must use their provider's relay
cltresolve:no                 ERROR:450 4.7.25 Client host rejected: cannot find your hostname
to:postmaster@                OK
"""

POLICY = """
access = ../access;
nameserver = {{ {ip}:{port} }};
dnsbl {{ zone = bl.test; }}
dnswl {{ zone = wl.test; }}
rhsbl {{ zone = dbl.test; }}
"""


@pytest.fixture(scope="module")
def dns() -> Iterator[tuple[str, int]]:
    with running_dns_server(ZONES) as server:
        yield server


def _rcpt(daemon: Meta1Daemon, rcpt: str, source: str, sender: str = "a@example.net") -> tuple[int, bytes]:
    with smtplib.SMTP(timeout=60, source_address=(source, 0)) as client:
        client.connect("127.0.0.1", daemon.port)
        client.ehlo("client.example")
        assert client.mail(sender)[0] == 250
        return client.rcpt(rcpt)


def _send(daemon: Meta1Daemon, rcpt: str, source: str, subject: str) -> None:
    with smtplib.SMTP(timeout=60, source_address=(source, 0)) as client:
        client.connect("127.0.0.1", daemon.port)
        client.ehlo("client.example")
        assert client.mail("a@example.net")[0] == 250
        code, text = client.rcpt(rcpt)
        assert code == 250, (code, text)
        assert client.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())[0] == 250


def _delivered(daemon: Meta1Daemon, user: str, subject: str) -> bytes | None:
    new = Path(daemon.mail_directory) / "localhost" / user / "new"
    for path in sorted(new.iterdir()) if new.is_dir() else ():
        data = path.read_bytes()
        if f"Subject: {subject}".encode() in data:
            return data
    return None


def test_reverse_dns_and_dns_lists_decide_at_rcpt(
    make_daemon: Callable[..., Meta1Daemon], dns: tuple[str, int]
) -> None:
    ip, port = dns
    daemon = make_daemon(
        sections={"smar": POLICY.format(ip=ip, port=port), "smtps": "relay_clients = { 127.0.0.1 };"}
    )
    (daemon.dir / "access").write_text(ACCESS)
    with daemon:
        # A forward-confirmed name goes into Received: as "from HELO (name [ip])".
        _send(daemon, "bob@localhost", "127.0.0.10", "named client")
        message = poll(lambda: _delivered(daemon, "bob", "named client"), 60, "delivery")
        assert b"Received: from client.example (mail.example.test [127.0.0.10])" in message
        # A PTR whose name does not lead back to the address is no name: cltresolve:no refuses.
        assert _rcpt(daemon, "bob@localhost", "127.0.0.11") == (
            450,
            b"4.7.25 Client host rejected: cannot find your hostname",
        )
        # A relay client has no name either, but may relay: the cltresolve: denial does not apply,
        # and its Received: says "unknown".
        _send(daemon, "bob@localhost", "127.0.0.1", "relay client")
        message = poll(lambda: _delivered(daemon, "bob", "relay client"), 60, "delivery")
        assert b"Received: from client.example (unknown [127.0.0.1])" in message
        # cltname: matches the confirmed name's parent domain.
        code, text = _rcpt(daemon, "bob@localhost", "127.0.0.12")
        assert (code, text) == (550, b"5.7.1 dial-up hosts must use their provider's relay")
        # A DNSBL listing refuses, with the list's TXT record in the reply...
        code, text = _rcpt(daemon, "bob@localhost", "127.0.0.20")
        assert code == 554
        assert text.decode() == (
            "5.7.1 Service unavailable; Client host [127.0.0.20] blocked using bl.test;"
            " listed for testing, see https://bl.test/127.0.0.20"
        )
        # ...except for a recipient the access map lets through (delay_checks), delivered.
        _send(daemon, "postmaster@localhost", "127.0.0.20", "to postmaster")
        poll(lambda: _delivered(daemon, "postmaster", "to postmaster"), 60, "delivery to postmaster")
        # A list that answers garbage cannot decide: a temporary failure, logged.
        code, text = _rcpt(daemon, "bob@localhost", "127.0.0.21")
        assert (code, text[:5]) == (451, b"4.4.3"), text
        daemon.wait_for_log(r"dnsbl bl\.test: .*answered 10\.0\.0\.1", timeout=30)
        # A DNSWL listing wins over the DNSBL.
        assert _rcpt(daemon, "bob@localhost", "127.0.0.22")[0] == 250
        # RHSBL: the sender's domain.
        code, text = _rcpt(daemon, "bob@localhost", "127.0.0.10", sender="x@spam.example.org")
        assert code == 554
        assert text.decode().endswith(
            "Sender address [spam.example.org] blocked using dbl.test; a spam domain"
        )


def test_an_unreachable_dns_list_defers_and_never_accepts(
    make_daemon: Callable[..., Meta1Daemon], dns: tuple[str, int]
) -> None:
    ip, port = dns
    # nowhere.test is not served: the server refuses every query of it.
    smar = f"nameserver = {{ {ip}:{port} }}; access = ../access; dnsbl {{ zone = nowhere.test; }}"
    daemon = make_daemon(sections={"smar": smar, "smtps": "relay_clients = { 127.0.0.1 };"})
    (daemon.dir / "access").write_text("to:postmaster@  OK\n")
    with daemon:
        code, text = _rcpt(daemon, "bob@localhost", "127.0.0.10")
        assert (code, text[:5]) == (451, b"4.4.3"), text
        # A relay client is trusted (the lists are not asked); postmaster is always reachable.
        assert _rcpt(daemon, "bob@localhost", "127.0.0.1")[0] == 250
        assert _rcpt(daemon, "postmaster@localhost", "127.0.0.10")[0] == 250
        assert daemon.worker_pid("smar") is not None  # no crash


def test_without_delay_checks_the_client_is_refused_at_connect(
    make_daemon: Callable[..., Meta1Daemon], dns: tuple[str, int]
) -> None:
    ip, port = dns
    smar = POLICY.format(ip=ip, port=port) + "delay_checks = no;"
    daemon = make_daemon(sections={"smar": smar, "smtps": "relay_clients = { 127.0.0.1 };"})
    (daemon.dir / "access").write_text(ACCESS + "ehlo:evil.example  REJECT\n")
    with daemon:
        # The listed client gets the refusal as its greeting; everything after it gets 503.
        with smtplib.SMTP(timeout=60, source_address=("127.0.0.20", 0)) as refused:
            code, text = refused.connect("127.0.0.1", daemon.port)
            assert code == 554 and b"blocked using bl.test" in text
            assert refused.ehlo("client.example")[0] == 503
        # The HELO check refuses at HELO; a good name then goes on.
        with smtplib.SMTP(timeout=60, source_address=("127.0.0.10", 0)) as ok:
            ok.connect("127.0.0.1", daemon.port)
            assert ok.ehlo("evil.example")[0] == 550
            assert ok.ehlo("client.example")[0] == 250
            assert ok.mail("a@example.net")[0] == 250
            assert ok.rcpt("bob@localhost")[0] == 250
        # The RHSBL refuses at MAIL FROM.
        with smtplib.SMTP(timeout=60, source_address=("127.0.0.10", 0)) as spam:
            spam.connect("127.0.0.1", daemon.port)
            spam.ehlo("client.example")
            code, text = spam.mail("x@spam.example.org")
            assert code == 554 and b"blocked using dbl.test" in text
