"""smtps's crash points (meta1py.crashpoints) against the durability promise (design.md §4).

- ``after-content``: smtps dies with the content file written and closed, before it asks qmgr to
  commit: the client gets no 250 and nothing is delivered.
- ``before-250``: smtps dies after qmgr committed, before the 250 is written: the client gets no
  250, yet the message is delivered (the client will send it again: a duplicate, never a loss).

The real daemon in production mode (as root: four worker users), delivering to a recording sink.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.peers import recording_sink

pytestmark = pytest.mark.e2e


def _send(daemon: Meta1Daemon, subject: str) -> tuple[int, bytes] | str:
    """Send one message to r@sink.test: the reply to the end of DATA, or "disconnected"."""
    try:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.crash.test")
            assert client.mail("a@example.org")[0] == 250
            assert client.rcpt("r@sink.test")[0] == 250
            return client.data(
                f"Subject: {subject}\r\nMessage-ID: <{subject}@crash.test>\r\n\r\nx\r\n".encode()
            )
    except smtplib.SMTPServerDisconnected:
        return "disconnected"


def _queued(daemon: Meta1Daemon) -> int:
    command = [sys.executable, "-m", "meta1py", "queue", "stats", "--json", "-f", str(daemon.conf_path)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return int(json.loads(out)["messages"])


def _subjects(messages: list[bytes]) -> list[str]:
    found = []
    for content in messages:
        for line in content.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                found.append(line[9:].decode())
    return found


def test_crash_after_content_gives_no_250_and_delivers_nothing(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    with recording_sink() as sink:
        # The second message crashes (the first proves the path delivers).
        daemon = make_daemon(
            sections={"smar": "routes = ../routes;"}, env={"META1_TEST_CRASH": "smtps:after-content:2"}
        )
        (daemon.dir / "routes").write_text(f"sink.test smtp:[127.0.0.1]:{sink.port}\n")
        with daemon:
            first = _send(daemon, "first")
            assert first != "disconnected" and first[0] == 250, first
            old = daemon.worker_pid("smtps")
            assert _send(daemon, "crashed") == "disconnected"
            daemon.wait_for_log(r"crash point after-content")
            daemon.restarted_worker_pid("smtps", old, 60)
            poll(lambda: "first" in _subjects([m.content for m in sink.messages]), 60, "the first message")
            # Nothing can deliver a message qmgr never heard of; give it a few seconds anyway.
            time.sleep(3)
            assert _subjects([m.content for m in sink.messages]) == ["first"]
            assert _queued(daemon) == 0


def test_crash_before_250_gives_no_250_but_delivers(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink() as sink:
        daemon = make_daemon(
            sections={"smar": "routes = ../routes;"}, env={"META1_TEST_CRASH": "smtps:before-250"}
        )
        (daemon.dir / "routes").write_text(f"sink.test smtp:[127.0.0.1]:{sink.port}\n")
        with daemon:
            old = daemon.worker_pid("smtps")
            assert _send(daemon, "committed") == "disconnected"
            daemon.wait_for_log(r"crash point before-250")
            poll(
                lambda: "committed" in _subjects([m.content for m in sink.messages]),
                60,
                "the committed message at the sink",
            )
            daemon.restarted_worker_pid("smtps", old, 60)
            poll(lambda: _queued(daemon) == 0, 60, "the queue to drain")
            assert _subjects([m.content for m in sink.messages]) == ["committed"]
