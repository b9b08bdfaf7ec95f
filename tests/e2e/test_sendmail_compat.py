"""sendmail compatibility (issue 20): ``-bs`` over a pipe, offline submission through the pickup
directory, mailq in Postfix's layout, ``-bv`` and ``-q``, against the real daemon.

As root the daemon runs in production mode (four worker users); the pickup files are then read by
qmgr as ``meta1q``, and the setgid helper is compiled by ``meta1 setup --sendmail`` and run by an
unprivileged user.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import smtplib
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from test_queue_life import make_routed_daemon, message, submit

from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.peers import SinkScript, recording_sink

pytestmark = pytest.mark.e2e


def sendmail(
    daemon: Meta1Daemon,
    *args: str,
    stdin: bytes = b"",
    user: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``meta1 sendmail -C CONF ARGS`` as a script would run it (as ``user`` when given)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("META1_")}
    environment.update(env or {})
    command = [sys.executable, "-m", "meta1py", "sendmail", "-C", str(daemon.conf_path), *args]
    if user is None:
        return subprocess.run(
            command, input=stdin, capture_output=True, timeout=120, cwd=daemon.dir, env=environment
        )
    gid = pwd.getpwnam(user).pw_gid
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=daemon.dir,
        env=environment,
        user=user,
        group=gid,
        extra_groups=[],
    )


def mailbox(daemon: Meta1Daemon, user: str) -> list[bytes]:
    """The messages in ``user``'s Maildir, with LF line ends (as Maildir stores them)."""
    new = daemon.mail_directory / "localhost" / user / "new"
    return [p.read_bytes().replace(b"\r\n", b"\n") for p in sorted(new.iterdir())] if new.is_dir() else []


def delivered(daemon: Meta1Daemon, user: str, text: bytes, timeout: float = 60) -> bytes:
    return poll(
        lambda: next((m for m in mailbox(daemon, user) if text in m), None), timeout, f"{text!r} for {user}"
    )


def pickup_files(daemon: Meta1Daemon) -> list[Path]:
    return sorted(p for p in (daemon.queue_directory / "pickup").iterdir())


def started_once(daemon: Meta1Daemon) -> Meta1Daemon:
    """Start and stop the daemon: its directories exist, nothing listens."""
    daemon.start()
    assert daemon.stop() == 0
    return daemon


class PipeSmtp:
    """smtplib talking to ``meta1 sendmail -bs`` over its standard input and output.

    The command gets two pipes, as a mail program gives it; smtplib gets one end of a socketpair,
    and two threads copy between the other end and the pipes.
    """

    def __init__(self, daemon: Meta1Daemon) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meta1py", "sendmail", "-C", str(daemon.conf_path), "-bs"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=daemon.dir,
        )
        ours, bridge = socket.socketpair()
        self._bridge = bridge
        self._threads = [
            threading.Thread(target=self._to_command, daemon=True),
            threading.Thread(target=self._from_command, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.client = smtplib.SMTP(timeout=60)
        self.client.sock = ours
        code, text = self.client.getreply()
        assert code == 220, text
        self.greeting = text

    def _to_command(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        while data := self._bridge.recv(65536):
            stdin.write(data)
            stdin.flush()
        stdin.close()

    def _from_command(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        while data := os.read(stdout.fileno(), 65536):
            self._bridge.sendall(data)
        self._bridge.shutdown(socket.SHUT_WR)

    def close(self) -> tuple[int, bytes]:
        """Close our side; return the command's exit status and stderr."""
        self.client.close()
        try:
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for thread in self._threads:
            thread.join(10)
        self._bridge.close()
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()


@pytest.fixture
def pipe_smtp() -> Iterator[Callable[[Meta1Daemon], PipeSmtp]]:
    sessions: list[PipeSmtp] = []

    def start(daemon: Meta1Daemon) -> PipeSmtp:
        sessions.append(PipeSmtp(daemon))
        return sessions[-1]

    yield start
    for session in sessions:
        if session.proc.poll() is None:
            session.proc.kill()
            session.proc.wait()


# -- -bs ---------------------------------------------------------------------------------------


def test_bs_driven_by_smtplib_over_a_pipe_delivers(
    make_daemon: Callable[..., Meta1Daemon], pipe_smtp: Callable[[Meta1Daemon], PipeSmtp]
) -> None:
    with make_daemon() as daemon:
        session = pipe_smtp(daemon)
        assert b"ESMTP meta1py (sendmail -bs)" in session.greeting
        client = session.client
        code, _features = client.ehlo("laptop.example")
        assert code == 250 and client.has_extn("pipelining") and client.has_extn("dsn")
        refused = client.sendmail(
            "ana@localhost",
            ["bruno@localhost", "carla@localhost"],
            b"From: ana@localhost\r\nSubject: over a pipe\r\n\r\n.a line that starts with a dot\r\n",
        )
        assert refused == {}
        client.quit()
        status, stderr = session.close()
        assert status == 0, stderr
        for user in ("bruno", "carla"):
            got = delivered(daemon, user, b"over a pipe")
            assert b"\n.a line that starts with a dot\n" in got
            assert b"(meta1py) with ESMTP id " in got  # smtps's own Received: line
        assert not pickup_files(daemon)


def test_bs_relays_smtps_refusals_unchanged(
    make_daemon: Callable[..., Meta1Daemon], pipe_smtp: Callable[[Meta1Daemon], PipeSmtp]
) -> None:
    daemon = make_daemon(sections={"smar": "access = ../access;"})
    (daemon.dir / "access").write_text("to:closed@localhost  ERROR:550 5.2.1 this mailbox is closed\n")
    (daemon.dir / "access").chmod(0o644)
    with daemon:
        session = pipe_smtp(daemon)
        client = session.client
        client.ehlo("laptop.example")
        assert client.mail("ana@localhost")[0] == 250
        code, text = client.rcpt("closed@localhost")
        assert (code, text) == (550, b"5.2.1 this mailbox is closed")
        assert client.rcpt("open@localhost")[0] == 250
        code, text = client.data(b"Subject: one of two\r\n\r\nhi\r\n")
        assert code == 250 and re.match(rb"2\.0\.0 Ok: queued as [0-9A-Z]{12}$", text), text
        client.quit()
        assert session.close()[0] == 0
        delivered(daemon, "open", b"one of two")
        assert not mailbox(daemon, "closed")


def test_bs_with_the_daemon_stopped_queues_into_pickup(
    make_daemon: Callable[..., Meta1Daemon], pipe_smtp: Callable[[Meta1Daemon], PipeSmtp]
) -> None:
    daemon = started_once(make_daemon())
    session = pipe_smtp(daemon)
    client = session.client
    client.ehlo("laptop.example")
    assert client.sendmail("ana@localhost", ["dora@localhost"], b"Subject: while down\r\n\r\nlater\r\n") == {}
    client.quit()
    status, stderr = session.close()
    assert status == 0, stderr
    [waiting] = pickup_files(daemon)
    daemon.start()
    got = delivered(daemon, "dora", b"while down")
    assert b"Received: from userid 0\n\tby localhost (meta1py pickup) id " in got
    poll(lambda: not pickup_files(daemon), 30, "the pickup file to go")
    assert not waiting.exists()


# -- offline submission ------------------------------------------------------------------------


def test_sendmail_with_the_daemon_stopped_exits_0_and_the_mail_is_delivered_once_it_starts(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    daemon = started_once(make_daemon())
    text = b"To: eve@localhost\nSubject: cron while down\n\nbackup done\n"
    sent = sendmail(daemon, "-t", "-i", "-v", stdin=text)
    assert sent.returncode == 0, sent.stderr
    assert b"queued in the pickup directory as " in sent.stderr
    [waiting] = pickup_files(daemon)
    st = waiting.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.getuid(), 0o644)
    assert waiting.read_bytes().startswith(
        b"meta1-pickup 1\nsender <root@localhost>\nrecipient <eve@localhost>\n"
    )
    # mailq shows it while it waits, as Postfix shows its maildrop queue.
    listed = sendmail(daemon, "-bp").stdout.decode()
    assert f"{waiting.name} " in listed and f"(maildrop queue, sender UID {os.getuid()})" in listed
    assert listed.rstrip().endswith("in 1 Request.")

    daemon.start()
    got = delivered(daemon, "eve", b"backup done")
    assert f"Received: from userid {os.getuid()}\n\tby localhost (meta1py pickup) id ".encode() in got
    assert b"\nSubject: cron while down\n" in got and b"\nMessage-ID: <" in got
    poll(lambda: not pickup_files(daemon), 30, "the pickup file to go")
    log = daemon.wait_for_log(r"queued qid=(\w+) origin=pickup uid=(\d+) sender=root@localhost nrcpt=1")
    assert log.group(2) == str(os.getuid())
    assert sendmail(daemon, "-bp").stdout == b"Mail queue is empty\n"


def test_a_corrupt_pickup_file_is_moved_aside_and_the_others_are_delivered(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    daemon = started_once(make_daemon())
    assert sendmail(daemon, "fay@localhost", stdin=b"Subject: good one\n\nok\n").returncode == 0
    pickup = daemon.queue_directory / "pickup"
    bad = pickup / secrets.token_hex(16)
    bad.write_bytes(b"meta1-pickup 1\nsender <a@localhost>\nrecipient <fay@localhost>\ncontent 99\nshort\r\n")
    bad.chmod(0o644)
    daemon.start()
    delivered(daemon, "fay", b"good one")
    daemon.wait_for_log(
        rf"pickup: {bad.name} is not a message: the file ends 92 octets before .*; moved to \S+/corrupt"
    )
    assert (daemon.queue_directory / "corrupt" / bad.name).is_file()
    assert not pickup_files(daemon)
    assert daemon.running()


def test_a_message_in_a_loop_through_pickup_is_bounced_not_delivered(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    # An alias command that resubmits its message with sendmail while smtps is down: each round
    # adds a Received: line. At max_hops the message goes back to its sender, 554 5.4.6.
    daemon = started_once(make_daemon(sections={"qmgr": "max_hops = 3;"}))
    looped = b"".join(b"Received: from userid 0 by localhost; round %d\n" % i for i in range(3))
    text = looped + b"Subject: round and round\n\nagain\n"
    sent = sendmail(daemon, "-f", "ops@localhost", "gus@localhost", stdin=text)
    assert sent.returncode == 0, sent.stderr
    sent = sendmail(daemon, "-f", "ops@localhost", "gus@localhost", stdin=b"Subject: once\n\nfine\n")
    assert sent.returncode == 0, sent.stderr
    daemon.start()
    bounce = delivered(daemon, "ops", b"Status: 5.4.6")
    assert b"Too many hops" in bounce and b"Subject: round and round" in bounce
    daemon.wait_for_log(r"\S+: 3 Received: headers, max_hops is 3: mail forwarding loop; bounced")
    # The other message was delivered; the looping one never was.
    delivered(daemon, "gus", b"Subject: once")
    assert [m for m in mailbox(daemon, "gus") if b"round and round" in m] == []


def test_sendmail_without_pickup_says_why_and_exits_75(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon()  # never started: no queue directory
    proc = sendmail(daemon, "-f", "a@localhost", "b@localhost", stdin=b"Subject: x\n\nbody\n")
    assert proc.returncode == 75
    assert b"cannot connect to the mail system" in proc.stderr and b"not sent" in proc.stderr
    assert b"meta1 has never run with this configuration" in proc.stderr


def setup_sendmail(daemon: Meta1Daemon, destdir: Path) -> subprocess.CompletedProcess[str]:
    """``meta1 setup --sendmail`` for the daemon's configuration, installing under ``destdir``."""
    command = ["setup", "-f", str(daemon.conf_path), "--sendmail", "--destdir", str(destdir)]
    return subprocess.run(
        [sys.executable, "-m", "meta1py", *command], capture_output=True, text=True, timeout=300
    )


@pytest.mark.root
def test_an_unprivileged_user_submits_through_the_setgid_helper(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: meta1 setup compiles and installs a setgid program")
    group = f"m1d{secrets.token_hex(3)}"
    daemon = make_daemon(f"setgid_group = {group};")
    destdir = daemon.dir / "root"
    helper = destdir / "usr/local/libexec/meta1/postdrop"
    try:
        setup = setup_sendmail(daemon, destdir)
        assert setup.returncode == 0, setup.stderr
        assert f"installed {helper} (meta1-postdrop, setgid {group})" in setup.stdout
        st = helper.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, grp.getgrnam(group).gr_gid, 0o2755)
        pickup = daemon.queue_directory / "pickup"
        st = pickup.stat()
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (grp.getgrnam(group).gr_gid, 0o1730)
        again = setup_sendmail(daemon, destdir)
        assert again.returncode == 0 and "installed" not in again.stdout, again

        nobody = pwd.getpwnam("nobody")
        env = {"META1_POSTDROP": str(helper)}
        text = b"To: gus@localhost\nSubject: from a user while down\n\nhello\n"
        sent = sendmail(daemon, "-t", stdin=text, user="nobody", env=env)
        assert sent.returncode == 0, sent.stderr
        [waiting] = pickup_files(daemon)
        assert waiting.stat().st_uid == nobody.pw_uid
        # Without the helper, the user cannot write there and is told why.
        refused = sendmail(daemon, "-t", stdin=text, user="nobody", env={"META1_POSTDROP": "/nonexistent"})
        assert refused.returncode == 75 and b"meta1 setup --sendmail installs it" in refused.stderr
        # The helper writes only into a pickup directory of its group.
        elsewhere = subprocess.run(
            [str(helper), str(daemon.dir)],
            input=b"meta1-pickup 1\n",
            capture_output=True,
            user="nobody",
            timeout=30,
        )
        assert elsewhere.returncode == 73 and b"not a pickup directory" in elsewhere.stderr

        daemon.start()
        # mailq answers everyone through qmgr's showq (tests/e2e/test_showq.py); -q is root's.
        denied = sendmail(daemon, "-q", user="nobody")
        assert denied.returncode == 77 and b"run it as root" in denied.stderr, denied
        got = delivered(daemon, "gus", b"from a user while down")
        assert f"Received: from userid {nobody.pw_uid}\n".encode() in got
        assert b"\nFrom: nobody@localhost\n" in got
        poll(lambda: not pickup_files(daemon), 30, "the pickup file to go")
    finally:
        subprocess.run(["groupdel", group], check=False, stderr=subprocess.DEVNULL)


# -- mailq, -bv, -q -----------------------------------------------------------------------------

MAILQ_HEADER = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
MAILQ_ENTRY = re.compile(r"^([0-9A-Z]{12})([*! ]) +(\d+) (\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d)  (\S+)$")


def test_mailq_is_in_postfixs_layout(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink(script=SinkScript(data_temp_failures=10**6)) as sink:
        daemon = make_routed_daemon(
            make_daemon, {"example.net": f"smtp:[127.0.0.1]:{sink.port}"}, qmgr="retry_min = 1h;"
        )
        with daemon:
            assert sendmail(daemon, "-bp").stdout == b"Mail queue is empty\n"
            qid = submit(daemon, "ana@localhost", ["x@example.net", "y@example.net"], message("waits"))
            poll(lambda: "451" in sendmail(daemon, "-bp").stdout.decode(), 60, "the first deferral")
            lines = sendmail(daemon, "-bp").stdout.decode().splitlines()
            assert lines[0] == MAILQ_HEADER
            m = MAILQ_ENTRY.match(lines[1])
            assert m is not None, lines[1]
            assert (m.group(1), m.group(2), m.group(5)) == (qid, " ", "ana@localhost")
            assert int(m.group(3)) > len(message("waits"))
            assert lines[2].strip().startswith("(451 ") and lines[2].endswith(")")
            assert lines[3:5] == [" " * 41 + "x@example.net", " " * 41 + "y@example.net"]
            assert lines[-2:] == ["", "-- 0 Kbytes in 1 Request."]
            # The same text as meta1 queue list, and as the mailq wrapper gives (meta1 sendmail -bp).
            listed = subprocess.run(
                [sys.executable, "-m", "meta1py", "queue", "list", "-f", str(daemon.conf_path)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert listed.stdout.splitlines() == lines


def test_bv_verifies_through_the_running_mta(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(sections={"smar": "access = ../access;"})
    (daemon.dir / "access").write_text(
        "to:closed@localhost  ERROR:550 5.2.1 this mailbox is closed\n"
        "to:later@localhost   ERROR:450 4.2.1 try again later\n"
    )
    (daemon.dir / "access").chmod(0o644)
    with daemon:
        ok = sendmail(daemon, "-bv", "open@localhost", "root")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.decode().splitlines() == [
            "open@localhost... deliverable",
            "root@localhost... deliverable",
        ]
        mixed = sendmail(daemon, "-bv", "open@localhost", "closed@localhost")
        assert mixed.returncode == 67
        assert "closed@localhost... undeliverable: 550 5.2.1 this mailbox is closed" in mixed.stdout.decode()
        later = sendmail(daemon, "-bv", "later@localhost")
        assert later.returncode == 75 and "later@localhost... deferred: 450 4.2.1" in later.stdout.decode()
        # Nothing was sent.
        assert not mailbox(daemon, "open")
        assert sendmail(daemon, "-bp").stdout == b"Mail queue is empty\n"
        daemon.stop()
        down = sendmail(daemon, "-bv", "open@localhost")
        assert down.returncode == 75 and b"cannot verify" in down.stderr


def test_q_delivers_deferred_mail_now(make_daemon: Callable[..., Meta1Daemon]) -> None:
    with recording_sink(script=SinkScript(data_temp_failures=1)) as sink:
        daemon = make_routed_daemon(
            make_daemon,
            {"example.net": f"smtp:[127.0.0.1]:{sink.port}"},
            qmgr="retry_min = 1h; retry_max = 2h;",
        )
        with daemon:
            submit(daemon, "ana@localhost", ["x@example.net"], message("flush me"))
            poll(lambda: "451" in sendmail(daemon, "-bp").stdout.decode(), 60, "the first deferral")
            flushed = sendmail(daemon, "-q")
            assert flushed.returncode == 0 and b"flush: 1 message" in flushed.stdout, flushed
            sink.wait_for_messages(1, 60)
            poll(lambda: sendmail(daemon, "-bp").stdout == b"Mail queue is empty\n", 60, "an empty queue")
            ignored = sendmail(daemon, "-q30m")
            assert ignored.returncode == 0 and b"ignored" in ignored.stderr
