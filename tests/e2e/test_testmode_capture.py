"""Test mode's captured deliveries and scripted replies, with a real ``meta1 run`` (issue 21).

As root the daemon runs in production mode (four worker users). Routing: every domain goes to
``smtp:[127.0.0.1]:9`` by the routes map, where nothing listens; in test mode smtpc never
connects there, its captured destination answers instead. The tests read the capture directory
(``<queue>/test/messages``); the rules come from ``test_mode { script_file }``, or are written to
the active rules file (``<queue>/test/scripts.json``) the way qmgr's control API writes it (a new
file renamed into place).
"""

from __future__ import annotations

import json
import os
import smtplib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meta1py_testing.daemon import Meta1Daemon, free_port, poll

pytestmark = pytest.mark.e2e

QMGR = "retry_min = 1s; retry_max = 2s;"


def _daemon(make_daemon: Callable[..., Meta1Daemon], script: dict[str, Any] | None = None) -> Meta1Daemon:
    """A test-mode daemon routing every domain to 127.0.0.1:9; ``script``: its ``script_file``."""
    daemon = make_daemon(
        f"test_mode {{ enable = yes; listen = 127.0.0.1:{free_port()}; SCRIPT }}",
        sections={"smar": "routes = ../routes;", "qmgr": QMGR},
    )
    routes = daemon.dir / "routes"
    routes.write_text("* smtp:[127.0.0.1]:9\n")
    routes.chmod(0o644)
    setting = ""
    if script is not None:
        script_file = daemon.dir / "scripts.json"
        script_file.write_text(json.dumps(script))
        script_file.chmod(0o644)
        setting = f"script_file = {script_file};"
    daemon.write_config(daemon.conf_path.read_text().replace("SCRIPT", setting))
    return daemon


def _test_dir(daemon: Meta1Daemon) -> Path:
    return daemon.queue_directory / "test"


def _script(daemon: Meta1Daemon, *rules: dict[str, Any]) -> None:
    path = _test_dir(daemon) / "scripts.json"
    temp = path.with_name(".scripts.json.new")
    temp.write_text(json.dumps({"rules": list(rules)}))
    temp.chmod(0o644)
    os.replace(temp, path)


def _captures(daemon: Meta1Daemon) -> list[dict[str, Any]]:
    directory = _test_dir(daemon) / "messages"
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def _wait_captures(daemon: Meta1Daemon, count: int) -> list[dict[str, Any]]:
    return poll(
        lambda: _captures(daemon) if len(_captures(daemon)) >= count else None, 60, f"{count} capture(s)"
    )


def _message(daemon: Meta1Daemon, capture: dict[str, Any]) -> bytes:
    return (_test_dir(daemon) / "messages" / f"{capture['id']}.eml").read_bytes()


def test_a_message_is_captured_with_its_transcript_and_sent_nowhere(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    with _daemon(make_daemon) as daemon:
        body = "From: a@example.org\r\nTo: user@example.net\r\nSubject: hello capture\r\n\r\n.dot line\r\n"
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
            client.sendmail("a@example.org", ["user@example.net"], body.encode())
        (capture,) = _wait_captures(daemon, 1)
        assert capture["mail_from"] == "a@example.org"
        assert capture["rcpt_to"] == ["user@example.net"]
        assert capture["kind"] == "message"
        assert capture["recipients"][0]["status"] == "delivered"
        message = _message(daemon, capture)
        assert b"Subject: hello capture\r\n" in message
        assert message.endswith(b"\r\n.dot line\r\n")  # dot-unstuffed, as queued
        assert message.startswith(b"Received: ")  # smtps's own header: what smtpc really sent
        transcript = [tuple(t) for t in capture["transcript"]]
        assert transcript[0][0] == "S" and transcript[0][1].startswith("220 ")
        assert ("C", "RCPT TO:<user@example.net>") in transcript
        assert transcript[-1] == ("S", "250 2.0.0 Ok: captured")
        # The host smar named (127.0.0.1:9, closed) was never connected to.
        assert "connect to" not in daemon.log_text()
        daemon.wait_for_log(
            r"delivered qid=\S+ to=user@example\.net .*status=sent .*reply=\"250 2\.0\.0 Ok: captured\"", 30
        )


def test_an_out_rule_defers_the_first_attempt_then_the_message_is_captured(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    slow = {
        "direction": "out",
        "phase": "rcpt",
        "domain": "slow.test",
        "times": 1,
        "reply": "451 4.4.1 Slow down",
    }
    with _daemon(make_daemon, {"rules": [slow]}) as daemon:  # the rules come from script_file
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
            client.sendmail("a@example.org", ["r@slow.test"], b"Subject: slow\r\n\r\nslow\r\n")
        daemon.wait_for_log(
            r"deferred qid=\S+ to=r@slow\.test relay=\S+ status=deferred reason=\"451 4\.4\.1 Slow down\"", 60
        )
        (capture,) = _wait_captures(daemon, 1)  # the retry went through
        assert capture["rcpt_to"] == ["r@slow.test"]


def test_in_rules_refuse_one_recipient_and_a_sender_at_end_of_data(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    with _daemon(make_daemon) as daemon:
        _script(
            daemon,
            {"direction": "in", "phase": "rcpt", "to": "fail@x.test", "reply": "550 5.1.1 No such user"},
            {"direction": "in", "phase": "data", "from": "a@b.test", "reply": "552 5.3.4 Message too big"},
        )
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
            client.ehlo()
            assert client.mail("s@example.org")[0] == 250
            assert client.rcpt("ok1@x.test")[0] == 250
            assert client.rcpt("fail@x.test") == (550, b"5.1.1 No such user")
            assert client.rcpt("ok2@x.test")[0] == 250
            assert client.data(b"Subject: three\r\n\r\nbody\r\n")[0] == 250
            assert client.mail("a@b.test")[0] == 250
            assert client.rcpt("ok1@x.test")[0] == 250
            assert client.data(b"Subject: big\r\n\r\nbody\r\n") == (552, b"5.3.4 Message too big")
        (capture,) = _wait_captures(daemon, 1)
        assert sorted(capture["rcpt_to"]) == ["ok1@x.test", "ok2@x.test"]
        assert b"Subject: three" in _message(daemon, capture)
        assert not any(c["mail_from"] == "a@b.test" for c in _captures(daemon))
