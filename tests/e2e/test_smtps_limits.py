"""smtps under a full disk, many sessions and impolite clients: the real daemon (issue 16).

As root the daemon runs in production mode (four worker users); the disk-full test needs root to
mount a small tmpfs as the queue directory.
"""

from __future__ import annotations

import os
import re
import select
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll

pytestmark = pytest.mark.e2e


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill_to(directory: Path, leave: int) -> Path:
    """Write a file so that about ``leave`` bytes stay free on ``directory``'s file system."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "ab", buffering=0) as f:
        while _free(directory) > leave + len(chunk):
            try:
                f.write(chunk)
            except OSError:
                break
    return filler


def _mail(daemon: Meta1Daemon, *options: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as client:
        client.ehlo("client.example")
        return client.mail("a@example.org", list(options))


def test_queue_minfree_refuses_mail_before_any_body(make_daemon: Callable[..., Meta1Daemon]) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    # max_message_size 2M: queue_minfree defaults to 3M.
    daemon = make_daemon(sections={"smtps": "max_message_size = 2M;"})
    queue = daemon.queue_directory
    queue.mkdir()
    # The queue directory itself is the small file system (mount_tmpfs mounts elsewhere; mcp
    # creates the queue's layout and ownership on whatever is mounted here).
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "meta1-minfree", str(queue)], check=True
    )
    try:
        with daemon:
            pids = daemon.workers()
            assert _mail(daemon)[0] == 250
            filler = _fill_to(queue, 4 * 1024 * 1024)
            time.sleep(1.1)  # smtps's reading of the free space is cached for a second
            # 4M free, 3M kept: a declared SIZE of 2M does not fit; an undeclared size does.
            code, text = _mail(daemon, "SIZE=2000000")
            assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
            assert _mail(daemon, "SIZE=500000")[0] == 250
            assert _mail(daemon)[0] == 250
            # Below queue_minfree: MAIL itself gets 452 4.3.1 (no body is ever sent).
            _fill_to(queue, 1024 * 1024)
            time.sleep(1.1)
            code, text = _mail(daemon)
            assert (code, text) == (452, b"4.3.1 Insufficient system storage"), (code, text)
            daemon.wait_for_log(r"below queue_minfree")
            filler.unlink()
            poll(lambda: _mail(daemon)[0] == 250, 10, "MAIL to be accepted again")
            # Nothing crashed on the way.
            assert daemon.running() and daemon.workers() == pids
    finally:
        subprocess.run(["umount", "--lazy", str(queue)], check=False)


def _connect(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return sock


def _line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        got = sock.recv(1)
        if not got:
            break
        data += got
    return data


def test_trusted_clients_are_exempt_and_refusals_are_logged_once(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    # 127.0.0.1 is a relay client (an application server); 127.0.0.2 is not.
    daemon = make_daemon(sections={"smtps": "relay_clients = { 127.0.0.1 }; max_sessions_per_client = 50;"})
    with daemon:
        socks: list[socket.socket] = []
        try:
            # Issue 16: an application server in relay_clients opening 100 sessions at once got
            # 421 past the 50th.
            for _ in range(100):
                socks.append(_connect(daemon.port, "127.0.0.1"))
            greetings = [_line(s) for s in socks]
            assert all(g.startswith(b"220 ") for g in greetings), {g for g in greetings}
            # An untrusted client: 50 sessions, then 421 4.7.0 for every further one.
            others = [_connect(daemon.port, "127.0.0.2") for _ in range(50)]
            socks.extend(others)
            assert all(_line(s).startswith(b"220 ") for s in others)
            refused = []
            for _ in range(5):
                s = _connect(daemon.port, "127.0.0.2")
                refused.append(_line(s))
                s.close()
            assert refused == [b"421 4.7.0 Too many connections from your host, try again later\r\n"] * 5
            daemon.wait_for_log(r"from 127\.0\.0\.2 refused \(client limit")
            time.sleep(0.5)
            lines = re.findall(r"from 127\.0\.0\.2 refused", daemon.log_text())
            assert len(lines) == 1, lines  # once per client per minute
        finally:
            for s in socks:
                s.close()


def test_a_client_talking_before_the_greeting_is_dropped(make_daemon: Callable[..., Meta1Daemon]) -> None:
    daemon = make_daemon(sections={"smtps": "greet_pause = 1s; relay_clients = { 127.0.0.1 };"})
    with daemon:
        # Relay clients are not paused: use another loopback address.
        rude = _connect(daemon.port, "127.0.0.3")
        rude.sendall(b"EHLO spammer.example\r\n")
        assert _line(rude) == b"554 5.5.1 Protocol error: talking before the greeting\r\n"
        assert rude.recv(100) == b""
        rude.close()
        daemon.wait_for_log(r"pregreet: 127\.0\.0\.3 sent b'EHLO spammer")
        polite = _connect(daemon.port, "127.0.0.3")
        began = time.monotonic()
        assert _line(polite).startswith(b"220 ")
        assert time.monotonic() - began >= 0.9
        polite.close()


def test_a_newcomer_gets_in_at_the_cap_and_an_idle_flood_session_makes_room(
    make_daemon: Callable[..., Meta1Daemon],
) -> None:
    # Two flooding addresses hold every session; a client with none still gets a greeting at
    # once, and one idle session of the heaviest flooder is closed with 421 4.7.0.
    smtps = "relay_clients = { 127.0.0.1 }; max_sessions = 20; session_reserve = 0;"
    daemon = make_daemon(sections={"smtps": smtps})
    with daemon:
        flood: list[socket.socket] = []
        try:
            for i in range(20):
                flood.append(_connect(daemon.port, "127.0.0.2" if i < 12 else "127.0.0.3"))
            assert all(_line(s).startswith(b"220 ") for s in flood)
            with smtplib.SMTP(timeout=30, source_address=("127.0.0.4", 0)) as client:
                code, _banner = client.connect("127.0.0.1", daemon.port)
                assert code == 220
                client.sendmail("a@localhost", ["b@localhost"], b"Subject: room\r\n\r\nmade\r\n")
            evicted = r"127\.0\.0\.4: at the session cap; closing idle session \S+ of 127\.0\.0\.2 "
            daemon.wait_for_log(evicted)
            # Exactly one of the heaviest flooder's sessions was told and closed.
            readable, _, _ = select.select(flood, [], [], 30)
            assert len(readable) == 1 and readable[0] in flood[:12], readable
            assert _line(readable[0]) == b"421 4.7.0 Too many connections from your host, try again later\r\n"
        finally:
            for s in flood:
                s.close()
