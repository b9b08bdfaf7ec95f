"""Crash points in qmgr and smtpc (meta1py.crashpoints): each durability window, on purpose.

``META1_TEST_CRASH`` makes a worker SIGKILL itself at a named point. mcp restarts it; every
later instance of that worker is armed again (the variable is inherited), which the tests below
take into account. Design §4: a crash before the commit gives the client no 250 and leaves
nothing behind; a crash after it delivers the message (a duplicate is allowed and logged, a loss
never).
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable

import pytest

from meta1py.queue.content import scan_content_ids
from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.peers import RecordingSink, recording_sink

pytestmark = pytest.mark.e2e

_MSGID = re.compile(rb"^Message-ID: <([^>]+)>\r$", re.MULTILINE | re.IGNORECASE)
# The orphan sweep runs every second and takes files a second old (production: 5m and 5m).
QMGR = "retry_min = 1s; retry_max = 2s; orphan_sweep_interval = 1s; orphan_min_age = 1s;"


def _daemon(make_daemon: Callable[..., Meta1Daemon], sink: RecordingSink, crash: str) -> Meta1Daemon:
    daemon = make_daemon(
        sections={"smar": "routes = ../routes;", "qmgr": QMGR}, env={"META1_TEST_CRASH": crash}
    )
    routes = daemon.dir / "routes"
    routes.write_text(f"sink.test smtp:[127.0.0.1]:{sink.port}\n")
    routes.chmod(0o644)
    return daemon


def _send(port: int, msgid: str) -> int:
    """Send one message; return the code of the end-of-data reply (or of the refusal)."""
    data = f"From: a@example.org\r\nTo: r@sink.test\r\nMessage-ID: <{msgid}>\r\n\r\nbody\r\n"
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=150) as client:
            client.sendmail("a@example.org", ["r@sink.test"], data.encode())
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code
    except smtplib.SMTPServerDisconnected:
        return 0
    return 250


def _delivered(sink: RecordingSink) -> list[str]:
    return [m.group(1).decode() for msg in sink.messages if (m := _MSGID.search(msg.content))]


def test_crash_before_commit_gives_no_250_and_leaves_nothing_behind(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    with recording_sink() as sink:
        daemon = _daemon(make_daemon, sink, "qmgr:before-commit")
        with daemon:
            qmgr = daemon.worker_pid("qmgr")
            code = _send(daemon.port, "before@crash.test")
            assert code != 250 and (code == 0 or 400 <= code < 500), code
            daemon.wait_for_log(r"qmgr\[\d+\]: critical: crash point before-commit")
            daemon.restarted_worker_pid("qmgr", qmgr)
            # The content file smtps wrote has no envelope: the sweep removes it.
            poll(lambda: not list(scan_content_ids(daemon.queue_directory)), 60, "the orphan to be swept")
            # qmgr logs the removal just after it (poll for the line, not only the file).
            daemon.wait_for_log(r"qmgr\[\d+\]: info: \S+: removed orphaned content file", 30)
            assert _delivered(sink) == []
            assert daemon.running()


def test_crash_after_commit_delivers_the_message(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink() as sink:
        daemon = _daemon(make_daemon, sink, "qmgr:after-commit")
        with daemon:
            code = _send(daemon.port, "after@crash.test")
            daemon.wait_for_log(r"qmgr\[\d+\]: critical: crash point after-commit")
            # smtps asks the next qmgr again, which finds the message already queued: 250. A
            # client that got a 4xx instead may send again (a duplicate), but nothing is lost.
            assert code == 250 or 400 <= code < 500, code
            poll(lambda: "after@crash.test" in _delivered(sink), 60, "the committed message to be delivered")
            poll(lambda: not list(scan_content_ids(daemon.queue_directory)), 60, "the queue to be empty")
            assert _delivered(sink) == ["after@crash.test"]
            assert daemon.running()


def test_crash_after_delivery_delivers_again_and_logs_the_duplicate(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    with recording_sink() as sink:
        # Each smtpc dies after the remote 250 of its second delivery: the first message goes
        # out normally, the second kills smtpc and goes out again with the next smtpc.
        daemon = _daemon(make_daemon, sink, "smtpc:after-delivery:2")
        with daemon:
            assert _send(daemon.port, "first@crash.test") == 250
            poll(lambda: "first@crash.test" in _delivered(sink), 60, "the first message")
            smtpc = daemon.worker_pid("smtpc")
            assert _send(daemon.port, "second@crash.test") == 250
            daemon.wait_for_log(r"smtpc\[\d+\]: critical: crash point after-delivery")
            daemon.restarted_worker_pid("smtpc", smtpc)
            poll(
                lambda: _delivered(sink).count("second@crash.test") >= 2,
                60,
                "the second message to be delivered again",
            )
            log = daemon.wait_for_log(r"\bdelivered qid=(\S+) to=r@sink\.test .*\bdup=possible", 60)
            qid = log.group(1)
            text = daemon.log_text()
            assert re.search(rf"\brequeued qid={qid} .*\bdup=possible", text), text
            # Exactly one delivery line of that message says so; the first message's does not.
            delivered_lines = re.findall(r"\bdelivered qid=\S+ .*", text)
            assert sum("dup=possible" in line for line in delivered_lines) == 1, delivered_lines
            assert sorted(set(_delivered(sink))) == ["first@crash.test", "second@crash.test"]
            poll(lambda: not list(scan_content_ids(daemon.queue_directory)), 60, "the queue to be empty")
            assert daemon.running()
