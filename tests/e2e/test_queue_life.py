"""The queue's whole life end to end: retries, bounces, expiry, DSN, loops, restarts, dead destinations.

The helpers at the top are shared with test_queue_cli.py.
"""

from __future__ import annotations

import concurrent.futures
import email
import email.message
import email.policy
import json
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.peers import SinkScript, free_port, recording_sink

pytestmark = pytest.mark.e2e

#: Short retry intervals: every retry test finishes in seconds.
FAST_QMGR = "retry_min = 1s; retry_max = 2s;"


def message(subject: str = "hello", extra_headers: str = "", body: bytes = b"body line\r\n") -> bytes:
    """A small RFC 5322 message with CRLF line endings."""
    head = f"From: a@localhost\r\nTo: someone@example.net\r\nSubject: {subject}\r\n{extra_headers}"
    return head.encode() + b"\r\n" + body


def make_routed_daemon(
    make_daemon: Callable[..., Meta1Daemon],
    routes: Mapping[str, str],
    *,
    qmgr: str = FAST_QMGR,
    smtpc: str = "",
    smtps: str = "",
) -> Meta1Daemon:
    """A daemon (not started) whose smar routes ``routes`` (domain -> route value)."""
    sections = {"smar": "routes = ../routes;", "qmgr": qmgr, "smtpc": smtpc, "smtps": smtps}
    daemon = make_daemon(sections=sections)
    write_routes(daemon, routes)
    return daemon


def write_routes(daemon: Meta1Daemon, routes: Mapping[str, str]) -> None:
    """(Re)write daemon.dir/routes, readable by the workers."""
    path = daemon.dir / "routes"
    path.write_text("".join(f"{domain} {value}\n" for domain, value in routes.items()))
    path.chmod(0o644)


def submit(
    daemon: Meta1Daemon,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    *,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
) -> str:
    """Send one message over SMTP; return its queue id (from the 250 reply)."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        client.ehlo("client.example")
        code, text = client.mail(sender, list(mail_options))
        assert code == 250, (code, text)
        for rcpt in recipients:
            code, text = client.rcpt(rcpt, list(rcpt_options))
            assert code == 250, (rcpt, code, text)
        code, text = client.data(data)
        assert code == 250, (code, text)
    return text.split()[-1].decode()


def maildir(daemon: Meta1Daemon, user: str, domain: str = "localhost") -> list[Path]:
    """The delivered files of user@domain's Maildir, oldest name first."""
    new = daemon.mail_directory / domain / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def wait_maildir(daemon: Meta1Daemon, user: str, n: int = 1, timeout: float = 60) -> list[Path]:
    """Wait until user@localhost's Maildir holds at least ``n`` messages; return them."""

    def enough() -> list[Path] | None:
        files = maildir(daemon, user)
        return files if len(files) >= n else None

    return poll(enough, timeout, f"{n} message(s) in {user}@localhost's Maildir")


def parse(path_or_bytes: Path | bytes) -> email.message.EmailMessage:
    """Parse a delivered message with Python's email package (modern policy)."""
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def dsn_parts(msg: email.message.EmailMessage) -> tuple[Any, list[Any], Any]:
    """Check ``msg`` is a multipart/report DSN; return (per-message fields, recipient blocks, original)."""
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts: Any = msg.get_payload()
    assert isinstance(parts, list) and len(parts) in (2, 3), parts
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks: Any = parts[1].get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2
    return blocks[0], blocks[1:], parts[2] if len(parts) == 3 else None


def queue_cli(daemon: Meta1Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m meta1py queue ARGS -f <conf>``."""
    proc = subprocess.run(
        [sys.executable, "-m", "meta1py", "queue", *args, "-f", str(daemon.conf_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=daemon.dir,
    )
    if check:
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def queue_json(daemon: Meta1Daemon, *filters: str) -> list[dict[str, object]]:
    """``meta1 queue list --json`` parsed: one dict per message."""
    out = queue_cli(daemon, "list", "--json", *filters).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def store_rows(daemon: Meta1Daemon, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
    """Read the envelope store directly (read-only)."""
    path = daemon.queue_directory / "envelopes.sqlite"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def restart(daemon: Meta1Daemon, between: Callable[[], None] | None = None) -> None:
    """Stop the daemon, run ``between`` while it is down, start it again and wait until ready.

    ``Meta1Daemon.start`` counts READY=1 datagrams from the first start too, so this waits for a
    new one explicitly.
    """
    daemon.stop()
    if between is not None:
        between()
    seen = len(daemon.notifications)
    daemon.start(wait_ready=False)
    daemon.wait_notify("READY=1", 60, start=seen)


def backdate(daemon: Meta1Daemon, seconds: float) -> None:
    """With the daemon stopped: make every queued message look ``seconds`` older."""
    path = daemon.queue_directory / "envelopes.sqlite"
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("UPDATE messages SET arrival_time = arrival_time - ?", (seconds,))
        conn.commit()
    finally:
        conn.close()


# -- retries ----------------------------------------------------------------------------------


def test_451_then_250_is_delivered_on_a_retry(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink(script=SinkScript(data_temp_failures=1)) as sink:
        daemon = make_routed_daemon(make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"})
        with daemon:
            qid = submit(daemon, "a@localhost", ["x@example.net"], message("retry"))
            daemon.wait_for_log(rf"deferred qid={qid} .*451 4\.3\.0 temporary failure \(scripted\)", 60)
            (got,) = sink.wait_for_messages(1, 60)
            assert got.rcpt_tos == ("x@example.net",)
            assert len(sink.transactions) == 2
            daemon.wait_for_log(rf"delivered qid={qid} .*to=x@example.net", 30)
            poll(lambda: not store_rows(daemon, "SELECT qid FROM messages"), 30, "the queue to empty")
            assert not maildir(daemon, "a")  # no bounce


# -- bounces ----------------------------------------------------------------------------------


def test_550_for_one_of_three_recipients_bounces_that_one(make_daemon: Callable[..., Meta1Daemon]) -> None:
    script = SinkScript(reject_recipients=frozenset({"bad@example.net"}))
    with recording_sink(script=script) as sink:
        daemon = make_routed_daemon(make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"})
        with daemon:
            rcpts = ["good1@example.net", "bad@example.net", "good2@example.net"]
            qid = submit(daemon, "a@localhost", rcpts, message("three"))
            (got,) = sink.wait_for_messages(1, 60)
            assert sorted(got.rcpt_tos) == ["good1@example.net", "good2@example.net"]
            (bounce_file,) = wait_maildir(daemon, "a")
            bounce = parse(bounce_file)
            assert bounce["Subject"] == "Undelivered Mail Returned to Sender"
            assert "<>" in bounce.get("Return-Path", "<>")
            per_message, blocks, original = dsn_parts(bounce)
            assert per_message["Reporting-MTA"] == "dns; localhost"
            (block,) = blocks
            assert block["Final-Recipient"] == "rfc822; bad@example.net"
            assert block["Action"] == "failed"
            assert block["Status"] == "5.1.1"
            assert "550 5.1.1" in block["Diagnostic-Code"] and block["Diagnostic-Code"].startswith("smtp;")
            assert block["Remote-MTA"].startswith("dns; ")
            assert original is not None and original.get_content_type() == "message/rfc822"
            assert qid in bounce_file.read_text()
            daemon.wait_for_log(r"bounced qid=\S+ .*to=bad@example.net", 10)
            poll(lambda: not store_rows(daemon, "SELECT qid FROM messages"), 30, "the queue to empty")
            # exactly one bounce, to the sender only
            assert len(maildir(daemon, "a")) == 1 and len(sink.messages) == 1


def test_never_answering_destination_bounces_after_expiry(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # queue_lifetime cannot be set below 1m: the message is made old while the daemon is stopped.
    with recording_sink(script=SinkScript(silent=True)) as sink:
        daemon = make_routed_daemon(
            make_daemon,
            {"example.net": f"smtp:[127.0.0.1]:{sink.port}"},
            qmgr=FAST_QMGR + " queue_lifetime = 1m;",
            smtpc="IO_timeout = 1s;",
        )
        with daemon:
            qid = submit(daemon, "a@localhost", ["x@example.net"], message("silence"))
            daemon.wait_for_log(rf"deferred qid={qid} ", 60)
            restart(daemon, lambda: backdate(daemon, 120))
            queue_cli(daemon, "flush")
            (bounce_file,) = wait_maildir(daemon, "a")
            _per_message, (block,), _original = dsn_parts(parse(bounce_file))
            assert block["Final-Recipient"] == "rfc822; x@example.net"
            assert block["Action"] == "failed"
            assert block["Status"] == "4.4.7"
            poll(lambda: not store_rows(daemon, "SELECT qid FROM messages"), 30, "the queue to empty")
        assert sink.silent_connections >= 1


def queue_empty(daemon: Meta1Daemon) -> bool:
    return not store_rows(daemon, "SELECT qid FROM messages")


def test_undeliverable_bounce_becomes_a_double_bounce_to_postmaster(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    script = SinkScript(reject_recipients=frozenset({"bad@example.net"}))
    with recording_sink(script=script) as sink:
        routes = {"example.net": f"smtp:[127.0.0.1]:{sink.port}", "gone.example": "error:5.1.1 no such user"}
        daemon = make_routed_daemon(make_daemon, routes)
        with daemon:
            qid = submit(daemon, "s@gone.example", ["bad@example.net"], message("double"))
            (double,) = wait_maildir(daemon, "postmaster")
            poll(lambda: queue_empty(daemon), 30, "the queue to empty")
            report = parse(double)
            _per_message, (block,), original = dsn_parts(report)
            assert block["Final-Recipient"] == "rfc822; s@gone.example"
            assert block["Action"] == "failed" and block["Status"] == "5.1.1"
            # the undeliverable bounce is returned inside, and it names the original message
            assert original is not None and qid.encode() in double.read_bytes()
            log = daemon.log_text()
            assert log.count("kind=bounce") == 1 and log.count("kind=double_bounce") == 1
            # nothing bounces again: no third report anywhere
            assert len(maildir(daemon, "postmaster")) == 1 and not maildir(daemon, "s", "gone.example")
            assert sink.messages == []


def test_mail_from_null_sender_that_fails_is_not_bounced(make_daemon: Callable[..., Meta1Daemon]) -> None:
    script = SinkScript(reject_recipients=frozenset({"bad@example.net"}))
    with recording_sink(script=script) as sink:
        daemon = make_routed_daemon(make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"})
        with daemon:
            qid = submit(daemon, "", ["bad@example.net"], message("from null"))
            daemon.wait_for_log(rf"bounced qid={qid} .*to=bad@example.net", 60)
            daemon.wait_for_log(rf"removed qid={qid}", 30)
            poll(lambda: queue_empty(daemon), 30, "the queue to empty")
            assert "kind=bounce" not in daemon.log_text()
            assert not maildir(daemon, "postmaster")


# -- DSN (RFC 3461) ---------------------------------------------------------------------------------


def test_ehlo_offers_dsn(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with make_daemon() as daemon, smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.has_extn("dsn")


def test_notify_never_suppresses_the_bounce(make_daemon: Callable[..., Meta1Daemon]) -> None:
    script = SinkScript(reject_recipients=frozenset({"bad@example.net"}))
    with recording_sink(script=script) as sink:
        daemon = make_routed_daemon(make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"})
        with daemon:
            qid = submit(daemon, "a@localhost", ["bad@example.net"], message(), rcpt_options=["NOTIFY=NEVER"])
            daemon.wait_for_log(rf"bounced qid={qid} .*to=bad@example.net", 60)
            daemon.wait_for_log(rf"removed qid={qid}", 30)
            assert "kind=bounce" not in daemon.log_text()
            assert not maildir(daemon, "a")


def test_notify_success_gives_a_success_report_with_envid(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink() as sink:
        daemon = make_routed_daemon(make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"})
        with daemon:
            submit(
                daemon,
                "a@localhost",
                ["ok@example.net"],
                message("success please"),
                mail_options=["ENVID=env-42", "RET=HDRS"],
                rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;OK@example.net"],
            )
            sink.wait_for_messages(1, 60)
            (report_file,) = wait_maildir(daemon, "a")
            report = parse(report_file)
            assert report["Subject"] == "Successful Mail Delivery Report"
            per_message, (block,), original = dsn_parts(report)
            assert per_message["Original-Envelope-Id"] == "env-42"
            assert block["Action"] == "delivered" and block["Status"].startswith("2.")
            assert block["Original-Recipient"] == "rfc822;OK@example.net"
            assert "successfully delivered" in next(report.iter_parts()).get_content()
            # RET=HDRS: the headers come back, not the body
            assert original is not None and original.get_content_type() == "text/rfc822-headers"
            assert b"Subject: success please" in report_file.read_bytes()
            assert b"body line" not in report_file.read_bytes()


def test_ret_hdrs_bounce_returns_headers_only(make_daemon: Callable[..., Meta1Daemon]) -> None:
    script = SinkScript(reject_recipients=frozenset({"bad@example.net"}))
    with recording_sink(script=script) as sink:
        daemon = make_routed_daemon(make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"})
        with daemon:
            body = b"secret body text\r\n"
            submit(
                daemon,
                "a@localhost",
                ["bad@example.net"],
                message("hdrs only", body=body),
                mail_options=["RET=HDRS", "ENVID=xyz"],
            )
            (bounce_file,) = wait_maildir(daemon, "a")
            per_message, (block,), original = dsn_parts(parse(bounce_file))
            assert per_message["Original-Envelope-Id"] == "xyz"
            assert block["Action"] == "failed"
            assert original is not None and original.get_content_type() == "text/rfc822-headers"
            data = bounce_file.read_bytes()
            assert b"Subject: hdrs only" in data and b"secret body text" not in data


# -- loops ------------------------------------------------------------------------------------


def test_too_many_received_headers_are_refused(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with make_daemon(sections={"qmgr": "max_hops = 5;"}) as daemon:
        hops = "".join(
            f"Received: from hop{i}.example by relay{i}.example; Mon, 1 Jan 2024 00:00:0{i} +0000\r\n"
            for i in range(6)
        )
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail("a@example.org")
            client.rcpt("b@localhost")
            code, text = client.data(hops.encode() + message("loop"))
            assert code == 554 and text.startswith(b"5.4.6"), (code, text)
            client.rset()
            client.mail("a@example.org")
            client.rcpt("b@localhost")
            code, _text = client.data(hops.encode()[: hops.index("Received", 10)] + message("one hop"))
            assert code == 250
        assert queue_cli(daemon, "list", "--json").stdout.count("queue_id") <= 1


# -- restarts and dead destinations --------------------------------------------------------------


def submit_many(daemon: Meta1Daemon, count: int, rcpt: str, threads: int = 8) -> list[str]:
    """Submit ``count`` small messages over ``threads`` parallel SMTP connections; return their ids."""
    qids: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=120) as client:
            client.ehlo("client.example")
            for i in range(n):
                code, text = client.mail("a@localhost")
                assert code == 250, text
                assert client.rcpt(rcpt)[0] == 250
                code, text = client.data(message(f"bulk {i}"))
                assert code == 250, text
                with lock:
                    qids.append(text.split()[-1].decode())

    shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker, n) for n in shares if n]:
            future.result()
    return qids


def deferred_count(daemon: Meta1Daemon) -> int:
    rows = store_rows(daemon, "SELECT count(DISTINCT qid) FROM recipients WHERE status = 'deferred'")
    return int(rows[0][0])  # type: ignore[call-overload]


def test_deferred_mail_survives_a_restart_and_is_retried_spread_out(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    count = 20
    with recording_sink(script=SinkScript(data_temp_failures=10**6)) as sink:
        daemon = make_routed_daemon(
            make_daemon,
            {"example.net": f"smtp:[127.0.0.1]:{sink.port}"},
            qmgr="retry_min = 5s; retry_max = 10s;",
        )
        with daemon:
            qids = submit_many(daemon, count, "x@example.net", threads=4)
            poll(lambda: deferred_count(daemon) == count, 60, f"{count} deferred messages")
            before = {m["queue_id"] for m in queue_json(daemon)}
            assert before == set(qids)

            # All due at the same moment while qmgr is down: the worst case for a burst.
            def make_all_due() -> None:
                conn = sqlite3.connect(daemon.queue_directory / "envelopes.sqlite", timeout=30)
                with conn:
                    conn.execute("UPDATE recipients SET next_attempt = ?", (time.time() - 100,))
                conn.close()

            restarted_at = time.time()
            restart(daemon, make_all_due)
            assert {m["queue_id"] for m in queue_json(daemon)} == before
            nexts = sorted(float(r[0]) for r in store_rows(daemon, "SELECT next_attempt FROM recipients"))  # type: ignore[arg-type]
            assert len(nexts) == count and nexts[0] >= restarted_at - 1
            assert len(set(nexts)) == count, "recovered attempts must not share one instant"
            assert nexts[-1] - nexts[0] >= 1.0, f"attempts not spread: {nexts}"
            # and they are retried: the sink now accepts
            sink.script = SinkScript()
            got = sink.wait_for_messages(count, 120)
            assert len(got) == count
            poll(lambda: queue_empty(daemon), 60, "the queue to empty")


def test_thousand_messages_to_a_dead_destination_are_flushed_when_it_returns(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    count = 1000
    port = free_port()  # nothing listens there yet: connections are refused
    daemon = make_routed_daemon(
        make_daemon,
        {"example.net": f"smtp:[127.0.0.1]:{port}"},
        qmgr="retry_min = 1m; retry_max = 2m;",
    )
    with daemon:
        started = time.monotonic()
        qids = submit_many(daemon, count, "x@example.net")
        submitted = time.monotonic() - started
        poll(lambda: deferred_count(daemon) == count, 120, f"{count} deferred messages")
        listed = queue_json(daemon, "--deferred")
        assert {m["queue_id"] for m in listed} == set(qids)
        # deferred together: nearly all of them without a connection attempt of their own
        suspended = daemon.log_text().count("delivery temporarily suspended")
        assert suspended >= count - 50, suspended
        with recording_sink(port=port) as sink:
            flushed_at = time.monotonic()
            queue_cli(daemon, "flush")
            sink.wait_for_messages(count, 300)
            took = time.monotonic() - flushed_at
            poll(lambda: queue_empty(daemon), 120, "the queue to empty")
        print(f"\n{count} messages: submitted in {submitted:.1f}s; delivered {took:.1f}s after the flush")
        assert len({m.content for m in sink.messages}) == count


def test_message_finished_before_a_crash_is_bounced_at_restart(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    # qmgr stopped after the last final result but before the bounce: recovery must send the bounce
    # (not silently drop the message) and then remove it.
    with recording_sink(script=SinkScript(data_temp_failures=10**6)) as sink:
        daemon = make_routed_daemon(
            make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"}, qmgr="retry_min = 10m;"
        )
        with daemon:
            qid = submit(daemon, "a@localhost", ["x@example.net"], message("half finished"))
            poll(lambda: deferred_count(daemon) == 1, 60, "the message to be deferred")

            def finish_in_store() -> None:
                conn = sqlite3.connect(daemon.queue_directory / "envelopes.sqlite", timeout=30)
                with conn:
                    conn.execute(
                        "UPDATE recipients SET status = 'bounced', last_reply = '550 5.1.1 gone'"
                        " WHERE qid = ?",
                        (qid,),
                    )
                conn.close()

            restart(daemon, finish_in_store)
            (report,) = wait_maildir(daemon, "a")
            _per, (block,), _orig = dsn_parts(parse(report))
            assert block["Final-Recipient"] == "rfc822; x@example.net" and block["Status"] == "5.1.1"
            poll(lambda: queue_empty(daemon), 30, "the queue to empty")


# -- delay warnings ---------------------------------------------------------------------------


def test_delay_warning_is_sent_once_per_recipient(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    script = SinkScript(temp_reject_recipients=frozenset({"slow@example.net"}))
    with recording_sink(script=script) as sink:
        daemon = make_routed_daemon(
            make_daemon,
            {"example.net": f"smtp:[127.0.0.1]:{sink.port}"},
            qmgr=FAST_QMGR + " delay_warning_time = 1s;",
        )
        with daemon:
            qid = submit(daemon, "a@localhost", ["slow@example.net"], message("slow"))
            (warning_file,) = wait_maildir(daemon, "a")
            warning = parse(warning_file)
            assert warning["Subject"] == "Delayed Mail (still being retried)"
            per_message, (block,), _original = dsn_parts(warning)
            assert per_message["Reporting-MTA"] == "dns; localhost"
            assert block["Final-Recipient"] == "rfc822; slow@example.net"
            assert block["Action"] == "delayed"
            assert block["Status"].startswith("4.")
            assert qid in warning_file.read_text()
            # later retries do not warn again
            n = daemon.log_text().count(f"deferred qid={qid} ")
            poll(
                lambda: daemon.log_text().count(f"deferred qid={qid} ") >= n + 2 or None,
                60,
                "two more delivery attempts",
            )
            assert len(maildir(daemon, "a")) == 1
            rows = store_rows(daemon, "SELECT dsn_sent FROM recipients WHERE qid = ?", (qid,))
            assert rows == [(1,)]


def test_delay_warnings_are_off_by_default(make_daemon: Callable[..., Meta1Daemon]) -> None:
    script = SinkScript(temp_reject_recipients=frozenset({"slow@example.net"}))
    with recording_sink(script=script) as sink:
        daemon = make_routed_daemon(make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"})
        with daemon:
            qid = submit(daemon, "a@localhost", ["slow@example.net"], message("slow"))
            poll(
                lambda: daemon.log_text().count(f"deferred qid={qid} ") >= 3 or None,
                60,
                "three delivery attempts",
            )
            assert not maildir(daemon, "a")
