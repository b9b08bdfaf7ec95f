"""Greylisting end to end: a real smtplib client against the running MTA (production mode as root),
with a short delay in the config; ``meta1 grey`` on the live database (issue 19)."""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll

pytestmark = pytest.mark.e2e

DELAY_S = 2


def _rcpt(daemon: Meta1Daemon, source: str, sender: str, rcpt: str, subject: str = "") -> tuple[int, bytes]:
    with smtplib.SMTP(timeout=60, source_address=(source, 0)) as client:
        client.connect("127.0.0.1", daemon.port)
        client.ehlo("client.example")
        assert client.mail(sender)[0] == 250
        code, text = client.rcpt(rcpt)
        if code == 250 and subject:
            assert client.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())[0] == 250
        return code, text


def _grey(daemon: Meta1Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "meta1py.cli", "grey", "-f", str(daemon.conf_path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _delivered(daemon: Meta1Daemon, user: str, subject: str) -> bool:
    new = Path(daemon.mail_directory) / "localhost" / user / "new"
    return new.is_dir() and any(f"Subject: {subject}".encode() in p.read_bytes() for p in new.iterdir())


def test_greylisting_defers_then_accepts_and_whitelists(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(
        sections={
            "smar": f"greylisting {{ enable = yes; delay = {DELAY_S}s; }}",
            "smtps": "relay_clients = { 127.0.0.1 };",
        }
    )
    with daemon:
        # The first attempt of a new (network, sender, recipient) is deferred...
        first = time.monotonic()
        code, text = _rcpt(daemon, "127.0.0.5", "a@example.net", "bob@localhost")
        assert code == 450 and text.startswith(
            b"4.7.1 <bob@localhost>: Recipient address rejected: Greylisted"
        )
        # ...and so is a retry before the delay.
        code, text = _rcpt(daemon, "127.0.0.5", "a@example.net", "bob@localhost")
        if time.monotonic() - first < DELAY_S - 0.5:
            assert code == 450, text
        # A retry after the delay is accepted and delivered.
        poll(
            lambda: _rcpt(daemon, "127.0.0.5", "a@example.net", "bob@localhost", "greylisted once")[0] == 250,
            60,
            "the retry to be accepted",
        )
        assert time.monotonic() - first >= DELAY_S
        poll(lambda: _delivered(daemon, "bob", "greylisted once"), 60, "delivery")
        # The client's network is now whitelisted: a new sender and recipient from another address
        # of the same /24 go straight through.
        assert _rcpt(daemon, "127.0.0.9", "z@example.org", "carol@localhost")[0] == 250
        # Relay clients are never greylisted.
        assert _rcpt(daemon, "127.0.0.1", "new@example.com", "dave@localhost")[0] == 250
        assert "greylisted: client=127.0.0.5" in daemon.log_text()

        # meta1 grey list shows the whitelisted network and the triplet; remove forgets them.
        listed = _grey(daemon, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        entries = json.loads(listed.stdout)
        assert [n["network"] for n in entries["networks"]] == ["127.0.0.0/24"]
        assert [(t["sender"], t["recipient"]) for t in entries["triplets"]] == [
            ("a@example.net", "bob@localhost")
        ]
        removed = _grey(daemon, "remove", "127.0.0.0/24")
        assert removed.returncode == 0, removed.stderr
        # (smtps remembers an accepted recipient for a few seconds: ask about another one.)
        assert _rcpt(daemon, "127.0.0.9", "z@example.org", "erin@localhost")[0] == 450


def test_a_broken_greylist_database_defers_and_never_accepts(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(
        sections={
            "smar": "greylisting { enable = yes; delay = 1s; }",
            "smtps": "relay_clients = { 127.0.0.1 };",
        }
    )
    with daemon:
        assert _rcpt(daemon, "127.0.0.5", "a@example.net", "bob@localhost")[0] == 450
        database = daemon.queue_directory / "smar" / "greylist.db"
        smar = daemon.worker_pid("smar")
        # Replace the database with garbage, owned as before.
        st = database.stat()
        for suffix in ("-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        garbage = database.with_name("garbage")
        garbage.write_bytes(b"this is not an SQLite database\n" * 200)
        os.chown(garbage, st.st_uid, st.st_gid)
        os.replace(garbage, database)
        # Nothing can be decided: 451 4.3.0, never a 250, and smar keeps running.
        for rcpt in ("bob@localhost", "new@localhost"):
            code, text = _rcpt(daemon, "127.0.0.5", "a@example.net", rcpt)
            assert (code, text[:5]) == (451, b"4.3.0"), text
        daemon.wait_for_log(r"greylist database .*greylisting cannot decide", timeout=30)
        assert daemon.worker_pid("smar") == smar
        # The operator moves the broken file away: a fresh database, greylisting again.
        shutil.move(database, database.with_name("greylist.db.broken"))
        code, _text = poll(
            lambda: (
                r if (r := _rcpt(daemon, "127.0.0.5", "a@example.net", "bob@localhost"))[0] != 451 else None
            ),
            30,
            "a fresh greylist database",
        )
        assert code == 450
