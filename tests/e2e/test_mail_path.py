"""The mail path end to end: real meta1 run, real clients, real downstream servers and DNS."""

from __future__ import annotations

import hashlib
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.dns import running_dns_server
from meta1py_testing.peers import (
    SinkDump,
    SinkScript,
    dovecot_lmtp,
    free_port,
    recording_sink,
    smtp_sink,
    swaks,
)

pytestmark = pytest.mark.e2e

BODY = b"".join(b"line %d of the body .with dots\r\n" % i for i in range(200)) + b".leading dot\r\n"
BODY_SHA = hashlib.sha256(BODY).hexdigest()


def message(subject: str = "hello", body: bytes = BODY) -> bytes:
    return b"From: a@example.org\r\nTo: b@localhost\r\nSubject: " + subject.encode() + b"\r\n\r\n" + body


def maildir_files(root: Path, domain: str, user: str) -> list[Path]:
    new = root / domain / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def wait_maildir(daemon: Meta1Daemon, user: str, timeout: float = 30) -> list[Path]:
    """Wait until ``user@localhost`` has mail; return the files in ``new/``."""
    return poll(lambda: maildir_files(daemon.mail_directory, "localhost", user) or None, timeout, user)


def split(content: bytes, eol: bytes = b"\r\n") -> tuple[bytes, bytes]:
    """Header and body of a message (the body normalised to CRLF)."""
    head, _sep, body = content.partition(eol + eol)
    return head, body.replace(eol, b"\r\n") if eol != b"\r\n" else body


def send(
    daemon: Meta1Daemon, rcpts: list[str], msg: bytes | None = None, sender: str = "a@example.org"
) -> str:
    """Send one message through ``daemon`` and return its queue id."""
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        client.ehlo("client.example")
        assert client.mail(sender)[0] == 250
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
        code, text = client.data(msg if msg is not None else message())
    assert code == 250 and b"queued as" in text, (code, text)
    return text.split()[-1].decode()


def test_local_delivery_to_maildir(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with make_daemon() as daemon:
        qid = send(daemon, ["b@localhost"])
        files = poll(lambda: maildir_files(daemon.mail_directory, "localhost", "b") or None, 30, "maildir")
        head, body = split(files[0].read_bytes(), b"\n")
        assert hashlib.sha256(body).hexdigest() == BODY_SHA
        # The final delivery records the envelope sender, then the recipient (as Postfix does).
        assert head.startswith(b"Return-Path: <a@example.org>\nDelivered-To: b@localhost\n")
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
            head, body = split(got.content)
            assert hashlib.sha256(body).hexdigest() == BODY_SHA
            assert head.count(b"Received: ") == 1 and head.startswith(b"Received: ")
            # The original header follows the one added trace header unchanged.
            assert head.split(b"\r\n", 1)[1].split(b"\r\nFrom: ", 1)[1].startswith(b"a@example.org\r\n")


def test_swaks_to_postfix_smtp_sink(make_daemon: Callable[..., Meta1Daemon]) -> None:
    n = 5
    daemon = make_daemon(sections={"smar": "routes = ../routes;"})
    with smtp_sink(dump_dir=daemon.dir / "dumps") as sink:
        (daemon.dir / "routes").write_text(f".sink.test smtp:[127.0.0.1]:{sink.port}\n")
        with daemon:
            for i in range(n):
                data = message(f"swaks {i}").decode()
                result = swaks(
                    "--server", f"127.0.0.1:{daemon.port}", "--from", "a@example.org",
                    "--to", f"r{i}@mx.sink.test", "--data", "-", input=data.encode()[:-2],
                )  # fmt: skip
                assert result.returncode == 0, result.stdout + result.stderr
                assert "250 " in result.stdout and "queued as" in result.stdout
            # The dump files are the record; smtp-sink's -c counter only prints at session ends.
            try:
                # smtp-sink writes each dump while its session goes on: wait until all are whole.
                def whole_dumps() -> list[SinkDump] | None:
                    d = sink.messages()
                    whole = len(d) >= n and all(x.rcpt_tos and x.content_crlf.endswith(BODY) for x in d)
                    return d if whole else None

                dumps = poll(whole_dumps, 60, "smtp-sink dumps")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {len(sink.messages())} dumps\n{daemon.log_text()}") from None
    assert len(dumps) == n
    assert sorted(d.rcpt_tos[0] for d in dumps) == [f"r{i}@mx.sink.test" for i in range(n)]
    for dump in dumps:
        assert dump.mail_from == "a@example.org"
        head, body = split(dump.content_crlf)
        assert hashlib.sha256(body).hexdigest() == BODY_SHA
        assert head.count(b"Received: ") == 1


def test_lmtp_to_dovecot_over_unix_and_tcp(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(sections={"smar": "routes = ../routes;"})
    with dovecot_lmtp(daemon.dir / "dovecot") as dovecot:
        (daemon.dir / "routes").write_text(
            f"unix.test lmtp:unix:{dovecot.socket_path}\ninet.test lmtp:inet:127.0.0.1:{dovecot.port}\n"
        )
        with daemon:
            rcpts = ["u1@unix.test", "u2@unix.test", "t1@inet.test"]
            qid = send(daemon, rcpts)
            for rcpt in rcpts:
                (got,) = dovecot.wait_for_messages(rcpt, 1, 60)
                head, body = split(got, b"\n")
                assert hashlib.sha256(body).hexdigest() == BODY_SHA
                assert head.count(b"\nReceived: ") + head.startswith(b"Received: ") >= 1
                assert f"id {qid}".encode() in head
            for rcpt in rcpts:
                daemon.wait_for_log(rf"delivered qid={qid}.*to={rcpt}", timeout=30)


def test_lmtp_per_recipient_results(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # Dovecot's static userdb accepts every user, so the refusals come from a scripted LMTP sink.
    script = SinkScript(
        lmtp_replies={
            "gone@lmtp.test": "550 5.1.1 <gone@lmtp.test> no such user",
            "full@lmtp.test": "452 4.2.2 <full@lmtp.test> mailbox full",
        }
    )
    daemon = make_daemon(sections={"smar": "routes = ../routes;", "qmgr": "retry_min = 1s; retry_max = 2s;"})
    with recording_sink(lmtp=True, script=script, unix_path=daemon.dir / "lmtp.sock") as sink:
        (daemon.dir / "routes").write_text(f"lmtp.test lmtp:unix:{daemon.dir / 'lmtp.sock'}\n")
        with daemon:
            qid = send(daemon, ["ok@lmtp.test", "gone@lmtp.test", "full@lmtp.test"], sender="s@localhost")
            daemon.wait_for_log(rf"delivered qid={qid}.*to=ok@lmtp.test", timeout=60)
            daemon.wait_for_log(rf"bounced qid={qid}.*to=gone@lmtp.test.*5\.1\.1", timeout=30)
            daemon.wait_for_log(rf"deferred qid={qid}.*to=full@lmtp.test.*4\.2\.2", timeout=30)
            # The retry carries only the deferred recipient; now the mailbox has room.
            sink.script = SinkScript()
            daemon.wait_for_log(rf"delivered qid={qid}.*to=full@lmtp.test", timeout=60)
            first, retry = sink.wait_for_messages(2, 30)[:2]
            assert first.rcpt_tos == ("ok@lmtp.test", "gone@lmtp.test", "full@lmtp.test")
            assert retry.rcpt_tos == ("full@lmtp.test",)
            assert first.content == retry.content
            # Once every recipient is final, the refused one is reported to the sender.
            (bounce,) = wait_maildir(daemon, "s")
            text = bounce.read_bytes()
            assert b"gone@lmtp.test" in text and b"5.1.1" in text


MX_ZONE = """
@        MX 10 mx1
@        MX 20 mx2
mx1      A  127.0.0.2
mx2      A  127.0.0.3
nullmx   MX 0 .
"""


def test_mx_fallback_null_mx_and_nxdomain_with_real_dns(make_daemon: Callable[..., Meta1Daemon]) -> None:
    port = free_port("127.0.0.3")
    with running_dns_server({"example.test": MX_ZONE}) as (dns_ip, dns_port):
        with recording_sink("127.0.0.3", port) as sink:
            daemon = make_daemon(
                sections={"smtpc": f"smtp_port = {port};", "smar": f"nameserver = {{ {dns_ip}:{dns_port} }};"}
            )
            with daemon:
                qid = send(daemon, ["m@example.test"], sender="s@localhost")
                (got,) = sink.wait_for_messages(1, 60)
                assert got.rcpt_tos == ("m@example.test",)
                assert hashlib.sha256(split(got.content)[1]).hexdigest() == BODY_SHA
                daemon.wait_for_log(
                    rf"delivered qid={qid}.*to=m@example.test.*relay=mx2\.example\.test", timeout=30
                )
                for rcpt, code in (
                    ("n@nullmx.example.test", r"5\.1\.10"),
                    ("x@nxdomain.example.test", r"5\.1\.2"),
                ):
                    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
                        client.ehlo("client.example")
                        client.mail("s@localhost")
                        rcode, text = client.rcpt(rcpt)
                        if rcode == 250:
                            # accepted: the failure is permanent in the queue and bounces
                            code_, text_ = client.data(message())
                            assert code_ == 250
                            q = text_.split()[-1].decode()
                            daemon.wait_for_log(rf"bounced qid={q}.*to={rcpt}.*{code}", timeout=60)
                        else:
                            assert rcode // 100 == 5 and text.decode().startswith(code.replace("\\", "")), (
                                text
                            )
                            daemon.wait_for_log(rf"rejected.*{rcpt}", timeout=30)
            assert len(sink.messages) == 1


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
        daemon.wait_for_log(r"rejected.*victim@example.com", timeout=10)
        result = swaks(
            "--server", f"127.0.0.1:{daemon.port}", "--from", "a@example.org", "--to", "v@example.com"
        )
        assert result.returncode == 24 and "554 5.7.1" in result.stdout  # 24: RCPT failed


def test_aliases_chain_loop_and_unknown_user(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(sections={"smar": "aliases = ../aliases;"})
    (daemon.dir / "aliases").write_text(
        "# chain: postmaster -> root -> alice, bob\n"
        "postmaster: root\n"
        "root: alice, bob\n"
        "alice: alice\n"
        "bob: bob\n"
        "loop1: loop2\n"
        "loop2: loop1\n"
    )
    with daemon:
        qid = send(daemon, ["postmaster@localhost"])
        for user in ("alice", "bob"):
            (got,) = wait_maildir(daemon, user)
            assert f"id {qid}".encode() in got.read_bytes()
            assert f"Delivered-To: {user}@localhost".encode() in got.read_bytes()
        assert not maildir_files(daemon.mail_directory, "localhost", "postmaster")
        assert not maildir_files(daemon.mail_directory, "localhost", "root")
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail("a@example.org")
            code, text = client.rcpt("nobody-here@localhost")
            assert (code, text[:5]) == (550, b"5.1.1")
            code, text = client.rcpt("loop1@localhost")
            assert code // 100 in (4, 5), (code, text)
        assert not maildir_files(daemon.mail_directory, "localhost", "loop1")
        assert not maildir_files(daemon.mail_directory, "localhost", "loop2")


def test_bad_map_lines_do_not_stop_the_mta(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # An alias with a relative :include: path and a routes typo: the MTA starts, the other lines
    # work, and mail that needs a bad line is deferred (451 4.3.5) instead of stopping everything
    # or going astray.
    daemon = make_daemon(sections={"smar": "aliases = ../aliases; routes = ../routes;"})
    (daemon.dir / "aliases").write_text("postmaster: alice\nalice: alice\ntickets: :include:tickets.list\n")
    (daemon.dir / "routes").write_text("typo.example smtp:[127.0.0.1\n")
    with daemon:
        qid = send(daemon, ["postmaster@localhost"])
        (got,) = wait_maildir(daemon, "alice")
        assert f"id {qid}".encode() in got.read_bytes()
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.example")
            client.mail("a@example.org")
            code, text = client.rcpt("tickets@localhost")
            assert (code, text[:5]) == (451, b"4.3.5"), (code, text)
            assert b"aliases:3:" in text

        def logged() -> str | None:
            text = daemon.log_text()
            return text if "aliases:3: relative :include: path" in text else None

        log = poll(logged, 10, "smar to log the bad aliases line")
        assert "routes:1:" in log
        assert daemon.worker_pid("smar") > 0 and "exited with status 78" not in log
    assert not maildir_files(daemon.mail_directory, "localhost", "tickets")


def test_per_client_session_limit(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # 127.0.0.1 is a relay client, exempt from per-client limits unless limit_relay_clients.
    smtps = "max_sessions_per_client = 2; limit_relay_clients = yes;"
    with make_daemon(sections={"smtps": smtps}) as daemon:
        first, second = daemon.connect(), daemon.connect()
        try:
            assert daemon.read_line(first).startswith(b"220 ")
            assert daemon.read_line(second).startswith(b"220 ")
            with daemon.connect() as third:
                assert daemon.read_line(third).startswith(b"421 4.7.0")
                assert third.recv(100) == b""  # closed after the 421
        finally:
            first.close()
            second.close()

        # Once one of them is gone a new session is served again.
        def greeted() -> bool:
            with daemon.connect() as sock:
                return daemon.read_line(sock).startswith(b"220 ")

        poll(greeted, 30, "a slot after the sessions ended")


def test_message_size_and_recipient_limits(make_daemon: Callable[..., Meta1Daemon]) -> None:
    sections = {"smtps": "max_message_size = 20K; max_recipients = 3;"}
    with make_daemon(sections=sections) as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.example")
            assert client.has_extn("size") and client.esmtp_features["size"] == str(20 * 1024)
            # SIZE declared too large: refused at MAIL (RFC 1870)
            code, text = client.mail("a@example.org", ["SIZE=100000"])
            assert code == 552, text
            # undeclared and too large: refused at the end of DATA
            assert client.mail("a@example.org")[0] == 250
            assert client.rcpt("b@localhost")[0] == 250
            code, text = client.data(message(body=BODY * 10))
            assert code == 552 and text.startswith(b"5.3.4"), text
            # recipient limit: the fourth gets 452 4.5.3 (RFC 5321 4.5.3.1.10)
            assert client.mail("a@example.org")[0] == 250
            for i in range(3):
                assert client.rcpt(f"u{i}@localhost")[0] == 250
            code, text = client.rcpt("u3@localhost")
            assert code == 452 and text.startswith(b"4.5.3"), text
            code, text = client.data(message())
            assert code == 250
        for i in range(3):
            wait_maildir(daemon, f"u{i}")
        assert not maildir_files(daemon.mail_directory, "localhost", "u3")
        assert not maildir_files(daemon.mail_directory, "localhost", "b")


def test_data_without_valid_recipients_gets_554(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # RFC 2920 §3.1: DATA after every recipient was refused is answered 554, never 354.
    with make_daemon(sections={"smtps": "relay_clients = { 127.0.0.2 };"}) as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.example")
            assert client.mail("a@example.org")[0] == 250
            assert client.rcpt("victim@example.com")[0] == 554
            code, text = client.docmd("DATA")
            assert (code, text) == (554, b"5.5.1 No valid recipients")
            # the session goes on normally
            assert client.rcpt("b@localhost")[0] == 250
            code, text = client.data(b"Subject: after\r\n\r\nbody\r\n")
            assert code == 250 and b"queued as" in text


def test_idle_client_gets_421_after_io_timeout(make_daemon: Callable[..., Meta1Daemon]) -> None:
    # RFC 5321 §4.5.3.2: a server ends a session whose client stays silent too long.
    with make_daemon(sections={"smtps": "IO_timeout = 1s;"}) as daemon:
        with daemon.connect() as sock:
            assert daemon.read_line(sock).startswith(b"220 ")
            sock.settimeout(30)
            line = daemon.read_line(sock)  # nothing sent: the next line is the server's
            assert line.startswith(b"421 4.4.2"), line
            assert sock.recv(100) == b""  # and it closed the connection


def test_session_timeout_ends_a_busy_session(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with make_daemon(sections={"smtps": "session_timeout = 2s;"}) as daemon:
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.ehlo("client.example")
            deadline = time.monotonic() + 30
            while True:
                code, text = client.docmd("NOOP")
                if code != 250:
                    break
                assert time.monotonic() < deadline, "the session was never ended"
                time.sleep(0.2)  # a slow but active client
            assert (code, text[:5]) == (421, b"4.4.2")
