"""Inbound message and recipient limits end to end: real smtplib clients from loopback addresses
trip them against the running MTA (production mode as root) (issue 19)."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from meta1py_testing.daemon import Meta1Daemon

pytestmark = pytest.mark.e2e

LIMITS = (
    "relay_clients = { 127.0.0.1 }; max_messages_per_session = 2; message_rate_per_client = 3;"
    " recipient_rate_per_client = 4;"
)


def _connect(daemon: Meta1Daemon, source: str) -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=60, source_address=(source, 0))
    client.connect("127.0.0.1", daemon.port)
    client.ehlo("client.example")
    return client


def _message(client: smtplib.SMTP, n: int) -> tuple[int, bytes]:
    code, text = client.mail("a@example.net")
    if code != 250:
        return code, text
    assert client.rcpt("bob@localhost")[0] == 250
    return client.data(f"Subject: limited {n}\r\n\r\nbody\r\n".encode())


def test_message_and_recipient_limits(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(sections={"smtps": LIMITS, "smar": "access = ../access;"})
    (daemon.dir / "access").write_text("ratelimit:127.0.0.7  OK\n")
    with daemon:
        # Two messages in one session, then 421: the session ends.
        client = _connect(daemon, "127.0.0.5")
        assert _message(client, 1)[0] == 250
        assert _message(client, 2)[0] == 250
        code, text = client.mail("a@example.net")
        assert (code, text) == (421, b"4.7.0 Too many messages in one session, reconnect to send more")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
        client.close()
        # A new session may send one more this minute (three per minute), then 450.
        with _connect(daemon, "127.0.0.5") as again:
            assert _message(again, 3)[0] == 250
            assert again.mail("a@example.net") == (450, b"4.7.1 Error: too much mail from 127.0.0.5")
        # Recipients: four a minute from one address.
        with _connect(daemon, "127.0.0.6") as many:
            assert many.mail("a@example.net")[0] == 250
            assert [many.rcpt(f"u{n}@localhost")[0] for n in range(4)] == [250] * 4
            assert many.rcpt("u5@localhost") == (450, b"4.7.1 Error: too many recipients from 127.0.0.6")
            assert many.data(b"Subject: four of five\r\n\r\nbody\r\n")[0] == 250
        daemon.wait_for_log(r"rcpt limit \(client\) reached by 127\.0\.0\.6", timeout=30)
        # relay_clients, and clients the access map exempts (ratelimit: OK), are not limited.
        for source in ("127.0.0.1", "127.0.0.7"):
            with _connect(daemon, source) as free:
                assert [_message(free, n)[0] for n in range(5)] == [250] * 5
