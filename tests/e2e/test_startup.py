"""Start-up as a CI pipeline sees it: the greeting comes first, a stop during start is orderly.

mcp starts the workers before its own event loop runs (smtps first), smtps greets before smar
has named the client, and most content subdirectories are made while the workers start
(bench/startup.py measures the time to the first 220; these tests check what must stay true).
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
from collections.abc import Callable

import pytest

from meta1py_testing.daemon import Meta1Daemon, pid_alive, poll

pytestmark = pytest.mark.e2e

MakeDaemon = Callable[..., Meta1Daemon]


def test_the_greeting_does_not_wait_for_smar(make_daemon: MakeDaemon) -> None:
    """With smar stopped (SIGSTOP), a client still gets its 220 at once; the first command
    waits for the client's name, which then stays unknown (smar's deadline passed); once smar
    runs again, mail flows."""
    with make_daemon() as daemon:
        smar = daemon.worker_pid("smar")
        os.kill(smar, signal.SIGSTOP)
        try:
            mark = daemon.log_size()
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
                banner = daemon.read_line(sock)
                assert banner.startswith(b"220 ")
                # The greeting came before smtps gave up on smar: its warning is not there yet.
                assert "smar unavailable at connect" not in daemon.log_text()[mark:]
                sock.sendall(b"EHLO client.test\r\n")
                reply = daemon.read_line(sock)
                assert reply.startswith(b"250")
                daemon.wait_for_log(r"smar unavailable at connect", start=mark)
                sock.sendall(b"QUIT\r\n")
        finally:
            os.kill(smar, signal.SIGCONT)
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
            client.sendmail("a@example.org", ["postmaster@localhost"], b"Subject: hi\r\n\r\nbody\r\n")
        message = poll(lambda: next(iter(daemon.mail_directory.rglob("new/*")), None), 30, "delivery")
        assert b"Subject: hi" in message.read_bytes()


def test_a_sigterm_while_the_workers_start_stops_everything(make_daemon: MakeDaemon) -> None:
    """systemd may stop a unit that is still starting: mcp stops what it started, in order, and
    exits 0, leaving no worker behind."""
    daemon = make_daemon()  # closed by the fixture
    daemon.start(wait_ready=False)
    # As soon as anything answers, while the other workers may still be starting.
    poll(lambda: daemon.workers().get("smtps"), 30, "smtps")
    seen = dict(daemon.workers())
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert poll(lambda: not any(pid_alive(pid) for pid in seen.values()), 30, "workers gone")
    log = daemon.log_text()
    assert "SIGTERM: shutting down" in log
    assert "info: stopped" in log
    assert not (daemon.run_directory / "mcp.pid").exists()
