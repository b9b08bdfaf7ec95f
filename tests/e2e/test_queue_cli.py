"""``meta1 queue`` and ``meta1 sendmail`` as an operator runs them, against the real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_queue_life import (
    dsn_parts,
    maildir,
    make_routed_daemon,
    message,
    parse,
    queue_cli,
    queue_json,
    store_rows,
    submit,
    wait_maildir,
)

from meta1py.queue.ids import new_queue_id
from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.peers import SinkScript, recording_sink

pytestmark = pytest.mark.e2e

ALWAYS_451 = SinkScript(data_temp_failures=10**6)


def attempts(daemon: Meta1Daemon, qid: str) -> int:
    rows = store_rows(daemon, "SELECT max(attempts) FROM recipients WHERE qid = ?", (qid,))
    return int(rows[0][0] or 0)  # type: ignore[call-overload]


def in_queue(daemon: Meta1Daemon) -> set[str]:
    return {str(row[0]) for row in store_rows(daemon, "SELECT qid FROM messages")}


def check_json_entry(entry: dict[str, object], qid: str, rcpt: str, now: float) -> None:
    """One ``list --json`` object, field by field, against docs/queue.md."""
    assert set(entry) == {
        "queue_id",
        "queue_name",
        "arrival_time",
        "message_size",
        "sender",
        "kind",
        "recipients",
    }
    assert entry["queue_id"] == qid
    assert entry["queue_name"] == "deferred"
    assert isinstance(entry["arrival_time"], int) and now - 600 < entry["arrival_time"] <= now
    assert isinstance(entry["message_size"], int) and entry["message_size"] > 50
    assert entry["sender"] == "a@localhost"
    assert entry["kind"] == "normal"
    recipients: Any = entry["recipients"]
    (r,) = recipients
    assert set(r) == {"address", "status", "attempts", "next_attempt", "delay_reason", "last_reply"}
    assert r["address"] == rcpt
    assert r["status"] == "deferred"
    assert isinstance(r["attempts"], int) and r["attempts"] >= 1
    assert isinstance(r["next_attempt"], int) and r["next_attempt"] > now - 5
    assert r["delay_reason"] == r["last_reply"]
    assert r["delay_reason"].startswith("451 4.3.0 temporary failure")


def test_every_queue_command_with_qmgr_running_and_stopped(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink(script=ALWAYS_451) as sink:
        routes = {
            "example.net": f"smtp:[127.0.0.1]:{sink.port}",
            "other.example": f"smtp:[127.0.0.1]:{sink.port}",
        }
        daemon = make_routed_daemon(make_daemon, routes, qmgr="retry_min = 10m; retry_max = 20m;")
        with daemon:
            assert "Mail queue is empty" in queue_cli(daemon, "list").stdout
            m1 = submit(daemon, "a@localhost", ["x@example.net"], message("one"))
            m2 = submit(daemon, "a@localhost", ["y@example.net"], message("two"))
            m3 = submit(daemon, "a@localhost", ["z@other.example"], message("three"))
            poll(lambda: all(attempts(daemon, q) == 1 for q in (m1, m2, m3)), 60, "three deferred messages")
            poll(lambda: len(queue_json(daemon, "--deferred")) == 3, 30, "three deferred in the list")

            # list: text like mailq, JSON checked field by field
            text = queue_cli(daemon, "list").stdout
            for qid, rcpt in ((m1, "x@example.net"), (m2, "y@example.net"), (m3, "z@other.example")):
                assert qid in text and rcpt in text
            assert "(451 4.3.0 temporary failure (scripted))" in text
            assert "in 3 Requests." in text
            now = time.time()
            entries = {e["queue_id"]: e for e in queue_json(daemon)}
            check_json_entry(entries[m1], m1, "x@example.net", now)
            check_json_entry(entries[m3], m3, "z@other.example", now)
            assert [e["queue_id"] for e in queue_json(daemon, "--to", "other.example")] == [m3]
            assert len(queue_json(daemon, "--from", "a@localhost")) == 3
            assert queue_json(daemon, "--from", "nobody@example.org") == []
            assert queue_json(daemon, "--active") == [] and queue_json(daemon, "--hold") == []

            # show
            shown = queue_cli(daemon, "show", m1).stdout
            assert f"queue_id: {m1}" in shown and "sender: <a@localhost>" in shown
            assert "<x@example.net> deferred attempts=1" in shown and "Subject: one" in shown
            assert json.loads(queue_cli(daemon, "show", m1, "--json").stdout)["queue_id"] == m1
            assert queue_cli(daemon, "show", "not-an-id", check=False).returncode == 64
            assert queue_cli(daemon, "show", new_queue_id(), check=False).returncode == 66

            # stats
            stats = json.loads(queue_cli(daemon, "stats", "--json").stdout)
            assert stats["messages"] == 3
            assert stats["by_state"] == {"active": 0, "deferred": 3, "hold": 0}
            assert sum(stats["recipients_by_destination"].values()) == 3
            assert isinstance(stats["oldest_age_s"], int)
            assert "messages: 3 (active 0, deferred 3, hold 0)" in queue_cli(daemon, "stats").stdout

            # hold / release
            assert "hold: 1 message" in queue_cli(daemon, "hold", m1).stdout
            assert [e["queue_id"] for e in queue_json(daemon, "--hold")] == [m1]
            assert queue_json(daemon, "--hold")[0]["queue_name"] == "hold"
            queue_cli(daemon, "release", m1)
            assert queue_json(daemon, "--hold") == []

            # flush: one message, then by domain
            transactions = len(sink.transactions)
            assert "flush: 1 message" in queue_cli(daemon, "flush", m2).stdout
            poll(lambda: attempts(daemon, m2) == 2, 60, "m2 retried after the flush")
            assert attempts(daemon, m1) == 1 and len(sink.transactions) == transactions + 1
            queue_cli(daemon, "flush", "--to", "other.example")
            poll(lambda: attempts(daemon, m3) == 2, 60, "m3 retried after flush --to")
            assert attempts(daemon, m1) == 1

            # bounce now: a report to the sender, the message leaves
            assert "bounce: 1 message" in queue_cli(daemon, "bounce", m3).stdout
            (report,) = wait_maildir(daemon, "a")
            _per, (block,), _orig = dsn_parts(parse(report))
            assert block["Final-Recipient"] == "rfc822; z@other.example" and block["Action"] == "failed"
            poll(lambda: m3 not in in_queue(daemon), 30, "the bounced message to leave")

            # delete: no bounce
            assert "delete: 1 message" in queue_cli(daemon, "delete", m2).stdout
            assert m2 not in in_queue(daemon)
            missing = queue_cli(daemon, "delete", m2, check=False)
            assert missing.returncode == 66 and "no such message" in missing.stderr
            assert queue_cli(daemon, "delete", check=False).returncode == 64
            assert len(maildir(daemon, "a")) == 1

            # -- qmgr stopped: read the store directly; change it where that is safe
            daemon.stop()
            assert [e["queue_id"] for e in queue_json(daemon)] == [m1]
            assert m1 in queue_cli(daemon, "list").stdout
            assert "Subject: one" in queue_cli(daemon, "show", m1).stdout
            assert json.loads(queue_cli(daemon, "stats", "--json").stdout)["messages"] == 1
            queue_cli(daemon, "hold", m1)
            assert queue_json(daemon, "--hold")[0]["queue_id"] == m1
            queue_cli(daemon, "release", m1)
            assert queue_json(daemon, "--hold") == []
            for action in ("flush", "bounce"):
                args = [action, m1] if action == "bounce" else [action]
                down = queue_cli(daemon, *args, check=False)
                assert down.returncode == 75 and "qmgr is not running" in down.stderr
            assert "delete: 1 message" in queue_cli(daemon, "delete", m1).stdout
            assert queue_json(daemon) == [] and not in_queue(daemon)
            assert not list((daemon.queue_directory / "content").glob(f"*/{m1}"))


def test_delete_all_deferred(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink(script=ALWAYS_451) as sink:
        daemon = make_routed_daemon(
            make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"}, qmgr="retry_min = 10m;"
        )
        with daemon:
            qids = {submit(daemon, "a@localhost", [f"u{i}@example.net"], message()) for i in range(3)}
            poll(lambda: len(queue_json(daemon, "--deferred")) == 3, 60, "three deferred")
            assert "delete: 3 messages" in queue_cli(daemon, "delete", "--all-deferred").stdout
            assert not in_queue(daemon) & qids
            assert not maildir(daemon, "a")


# -- meta1 sendmail ---------------------------------------------------------------------------


def sendmail(daemon: Meta1Daemon, *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "meta1py", "sendmail", "-C", str(daemon.conf_path), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=daemon.dir,
    )


def test_sendmail_t_delivers_to_to_cc_and_bcc_and_strips_bcc(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink() as sink:
        daemon = make_routed_daemon(make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"})
        with daemon:
            text = (
                b"To: To Person <to@example.net>\n"
                b"Cc: cc1@example.net, Second <cc2@example.net>\n"
                b"Bcc: hidden@example.net,\n another-hidden@example.net\n"
                b"Subject: from cron\n"
                b"\n"
                b"output of the job\n"
            )
            proc = sendmail(daemon, "-t", "-i", "-f", "a@localhost", stdin=text)
            assert proc.returncode == 0, proc.stderr
            msgs = sink.wait_for_messages(1, 60)
            rcpts = sorted(r for m in msgs for r in m.rcpt_tos)
            assert rcpts == sorted(
                [
                    "to@example.net",
                    "cc1@example.net",
                    "cc2@example.net",
                    "hidden@example.net",
                    "another-hidden@example.net",
                ]
            )
            content = msgs[0].content
            assert b"Bcc" not in content and b"hidden" not in content
            assert b"Cc: cc1@example.net, Second <cc2@example.net>\r\n" in content
            assert b"\r\n\r\noutput of the job\r\n" in content
            assert msgs[0].mail_from == "a@localhost"


def test_sendmail_exits_75_when_the_mta_is_down(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon()  # configured, never started: nothing listens on its port
    proc = sendmail(daemon, "-f", "a@localhost", "b@localhost", stdin=b"Subject: x\n\nbody\n")
    assert proc.returncode == 75
    assert b"cannot connect to the mail system" in proc.stderr and b"not sent" in proc.stderr


def test_requeue_after_a_routes_change_and_show_body(make_daemon: Callable[..., Meta1Daemon]) -> None:
    from test_queue_life import write_routes

    with recording_sink(script=ALWAYS_451) as broken, recording_sink() as working:
        daemon = make_routed_daemon(
            make_daemon, {"example.net": f"smtp:[127.0.0.1]:{broken.port}"}, qmgr="retry_min = 1h;"
        )
        with daemon:
            qid = submit(daemon, "a@localhost", ["x@example.net"], message("moved"))
            poll(lambda: attempts(daemon, qid) == 1, 60, "the first (deferred) attempt")
            # postcat: the whole message as queued, our Received: on top.
            shown = queue_cli(daemon, "show", qid, "--body").stdout
            body = shown.split("message:\n", 1)[1]
            assert body.startswith("Received: from ") and "Subject: moved" in body
            # The next hop moved; the message is held, then requeued: released, routed afresh, now.
            queue_cli(daemon, "hold", qid)
            write_routes(daemon, {"example.net": f"smtp:[127.0.0.1]:{working.port}"})
            assert queue_cli(daemon, "requeue", check=False).returncode == 64  # ids or --all
            assert "requeue: 1 message" in queue_cli(daemon, "requeue", "--all").stdout

            # smar re-reads the routes within a second of the change: until then an attempt may
            # still go to the old hop, so requeue again until the new one has the message.
            def moved() -> bool:
                if working.transactions:
                    return True
                queue_cli(daemon, "requeue", qid)
                return False

            poll(moved, 60, "delivery through the new route")
            (got,) = working.wait_for_messages(1, 60)
            assert got.rcpt_tos == ("x@example.net",)
            poll(lambda: qid not in in_queue(daemon), 30, "the message to leave the queue")
            assert "requeued" in daemon.log_text()
