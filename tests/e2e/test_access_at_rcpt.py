"""The access map end to end: real SMTP clients from several loopback addresses (issue 19).

The MTA runs as the e2e fixture starts it (production mode as root), with ``relay_clients`` cut
down to 127.0.0.1 so that relaying has to be granted by the map.
"""

from __future__ import annotations

import os
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll

pytestmark = pytest.mark.e2e

ACCESS = """\
cltaddr:127.0.0.66           REJECT
cltaddr:127.0.0.77           RELAY
ehlo:evil.example            ERROR:5.7.1 do not say you are evil
from:spammer@example.org     REJECT
from:newsletter@example.org  DISCARD
to:postmaster@               OK
to:closed@localhost          ERROR:550 5.2.1 this mailbox is closed
"""


def _client(daemon: Meta1Daemon, source: str = "127.0.0.1", helo: str = "client.example") -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=30, source_address=(source, 0))
    client.connect("127.0.0.1", daemon.port)
    client.ehlo(helo)
    return client


def _rcpt(
    daemon: Meta1Daemon,
    rcpt: str,
    *,
    source: str = "127.0.0.1",
    helo: str = "client.example",
    sender: str = "a@example.org",
) -> tuple[int, bytes]:
    with _client(daemon, source, helo) as client:
        assert client.mail(sender)[0] == 250
        return client.rcpt(rcpt)


def _send(
    daemon: Meta1Daemon, rcpt: str, subject: str, *, source: str = "127.0.0.1", sender: str = "a@example.org"
) -> tuple[int, bytes]:
    with _client(daemon, source) as client:
        assert client.mail(sender)[0] == 250
        code, text = client.rcpt(rcpt)
        assert code == 250, (code, text)
        return client.data(f"From: <{sender}>\r\nSubject: {subject}\r\n\r\nbody\r\n".encode())


def _mailbox(daemon: Meta1Daemon, user: str) -> list[bytes]:
    new = Path(daemon.mail_directory) / "localhost" / user / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def _has(daemon: Meta1Daemon, user: str, text: bytes) -> bool:
    return any(text in message for message in _mailbox(daemon, user))


def test_the_access_map_decides_at_rcpt(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(sections={"smar": "access = ../access;", "smtps": "relay_clients = { 127.0.0.1 };"})
    (daemon.dir / "access").write_text(ACCESS)
    with daemon:
        # A refused client is refused at RCPT (delayed checks)...
        code, text = _rcpt(daemon, "bob@localhost", source="127.0.0.66")
        assert (code, text[:5]) == (550, b"5.7.1"), text
        # ...except for a recipient the map lets through, and that mail is delivered.
        code, text = _send(daemon, "postmaster@localhost", "from a refused client", source="127.0.0.66")
        assert code == 250, text
        poll(lambda: _has(daemon, "postmaster", b"from a refused client"), 30, "delivery to postmaster")
        # HELO name, sender and recipient entries; the ERROR text is the reply's.
        code, text = _rcpt(daemon, "bob@localhost", helo="evil.example")
        assert (code, text) == (550, b"5.7.1 do not say you are evil")
        code, text = _rcpt(daemon, "bob@localhost", sender="spammer+x@example.org")
        assert (code, text[:5]) == (550, b"5.7.1")
        code, text = _rcpt(daemon, "closed@localhost")
        assert (code, text) == (550, b"5.2.1 this mailbox is closed")
        # RELAY for a client address; another client outside relay_clients may not relay.
        assert _rcpt(daemon, "x@remote.example", source="127.0.0.77")[0] == 250
        code, text = _rcpt(daemon, "x@remote.example", source="127.0.0.88")
        assert (code, text[:5]) == (554, b"5.7.1"), text
        # DISCARD: accepted (250 with a queue id) and never delivered; the message after it is.
        code, text = _send(daemon, "bob@localhost", "discarded", sender="newsletter@example.org")
        assert code == 250 and b"queued as" in text
        code, _text = _send(daemon, "bob@localhost", "kept")
        assert code == 250
        poll(lambda: _has(daemon, "bob", b"Subject: kept"), 30, "the kept message")
        assert not _has(daemon, "bob", b"Subject: discarded")
        assert "discarded" in daemon.log_text()


def test_a_changed_access_map_applies_without_a_restart(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(sections={"smar": "access = ../access;"})
    path = daemon.dir / "access"
    path.write_text("cltaddr:127.0.0.66  OK\n")
    with daemon:
        smar = daemon.worker_pid("smar")
        assert _rcpt(daemon, "bob@localhost", source="127.0.0.66")[0] == 250
        new = daemon.dir / "access.new"
        new.write_text("cltaddr:127.0.0.66  TEMPFAIL\nbad line without a tag  OK\n")
        os.replace(new, path)
        # smar re-reads the file within a second; smtps keeps an accepted verdict a few seconds.
        code, text = poll(
            lambda: r if (r := _rcpt(daemon, "bob@localhost", source="127.0.0.66"))[0] != 250 else None,
            30,
            "the new access map to apply",
        )
        assert (code, text[:5]) == (450, b"4.7.1")
        assert daemon.worker_pid("smar") == smar  # reloaded, not restarted
        assert "access:2: unknown tag" in daemon.log_text()


def test_a_compiled_access_map_is_used_and_replaced_live(make_daemon: Callable[..., Meta1Daemon]) -> None:
    import subprocess
    import sys

    daemon = make_daemon(sections={"smar": "access = cdb:../access;"})
    text = daemon.dir / "access"

    def makemap() -> None:
        done = subprocess.run(
            [sys.executable, "-m", "meta1py.cli", "makemap", "access", str(text)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    text.write_text("cltaddr:127.0.0.66  REJECT\n")
    makemap()
    with daemon:
        smar = daemon.worker_pid("smar")
        code, reply = _rcpt(daemon, "bob@localhost", source="127.0.0.66")
        assert (code, reply[:5]) == (550, b"5.7.1"), reply
        assert _rcpt(daemon, "bob@localhost", source="127.0.0.67")[0] == 250
        # A bad line: makemap refuses, writes nothing, and the running map stays as it was.
        text.write_text("cltaddr:127.0.0.66  REJECT\ncltaddr:127.0.0.67  MAYBE\n")
        bad = subprocess.run(
            [sys.executable, "-m", "meta1py.cli", "makemap", "access", str(text)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert bad.returncode == 65 and "access:2:" in bad.stderr
        # The fixed map, compiled again: smar switches to it without a restart.
        text.write_text("cltaddr:127.0.0.67  TEMPFAIL\n")
        makemap()
        code, reply = poll(
            lambda: r if (r := _rcpt(daemon, "carol@localhost", source="127.0.0.67"))[0] != 250 else None,
            30,
            "the new compiled map",
        )
        assert (code, reply[:5]) == (450, b"4.7.1")
        assert daemon.worker_pid("smar") == smar
