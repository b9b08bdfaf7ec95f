"""End-to-end supervision tests: the real ``meta1 run`` with its real (placeholder) workers.

Each test starts mcp through ``Meta1Daemon`` on a free loopback port. As root the workers run as
the four users of etc/meta1.conf (or one throw-away user with ``META1_TEST_ACCOUNTS=one``; see
tests/e2e/conftest.py); otherwise everything runs as the invoking user (the unprivileged mode).
"""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest

from meta1py_testing.daemon import (
    WORKER_NAMES,
    Meta1Daemon,
    forkserver_pid,
    free_port,
    pid_alive,
    poll,
    proc_ids,
)

pytestmark = pytest.mark.e2e

MakeDaemon = Callable[..., Meta1Daemon]


def _all_gone(pids: list[int]) -> bool:
    return not any(pid_alive(pid) for pid in pids)


def test_start_reports_ready_and_serves(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        workers = daemon.workers()
        assert sorted(workers) == sorted(WORKER_NAMES)
        assert daemon.banner().startswith(b"220 localhost ESMTP")
        assert (daemon.run_directory / "mcp.pid").read_text().strip() == str(daemon.pid)
        for name in ("qmgr", "smar", "smtpc"):
            path = daemon.run_directory / f"{name}.sock"
            # As root smtpc.sock is qmgr's alone (meta1py.ownership).
            want = 0o600 if name == "smtpc" and os.geteuid() == 0 else 0o660
            assert oct(path.stat().st_mode & 0o777) == oct(want)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
        assert any(m.startswith("READY=1") for m in daemon.notifications)


def test_each_worker_killed_comes_back_and_serves(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        for name in WORKER_NAMES:
            old = daemon.worker_pid(name)
            mark = daemon.log_size()
            os.kill(old, signal.SIGKILL)
            new = daemon.restarted_worker_pid(name, old)
            daemon.wait_for_log(rf"{name} \(pid {old}\) was killed by SIGKILL", start=mark)
            daemon.wait_for_log(rf"{name} \(pid {new}\) is ready", start=mark)
            assert daemon.banner().startswith(b"220 ")
        assert daemon.running()


def test_worker_killed_in_a_loop_is_restarted_slower_and_never_given_up(make_daemon: MakeDaemon) -> None:
    # A crash loop is 3 deaths within 300 s here; the longest delay is cut to 2 s to keep it short.
    daemon = make_daemon(env={"META1_RESTART_LIMIT": "3/300", "META1_RESTART_BACKOFF_MAX": "2"})
    daemon.start()
    others = {name: pid for name, pid in daemon.workers().items() if name != "smar"}
    pid = daemon.worker_pid("smar")
    for _ in range(5):
        os.kill(pid, signal.SIGKILL)
        pid = daemon.restarted_worker_pid("smar", pid)
    daemon.wait_for_log(r"critical: smar is in a crash loop: died 3 times within 300s")
    delays = [
        float(d)
        for d in re.findall(
            r"smar \(pid \d+\) was killed by SIGKILL after [\d.]+s; restarting in ([\d.]+)s",
            daemon.log_text(),
        )
    ]
    # Slower and slower (0.1, 0.2, then the crash loop's longest delay), never a hard failure.
    assert delays == [0.1, 0.2, 2.0, 2.0, 2.0]
    assert "hard failure" not in daemon.log_text()
    assert daemon.running()
    # The other workers were never touched, and smtps still greets clients.
    assert {name: pid for name, pid in daemon.workers().items() if name != "smar"} == others
    assert daemon.banner().startswith(b"220 ")
    assert daemon.stop() == 0


def test_worker_exiting_78_is_a_hard_failure(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(env={"META1_TEST_EXIT": "smtpc=78"})
    daemon.start(wait_ready=False)
    assert daemon.wait() == 78
    daemon.wait_for_log(r"hard failure: smtpc \(pid \d+\) exited with status 78")
    assert not any(m.startswith("READY=1") for m in daemon.notifications)
    assert "started smtpc" in daemon.log_text()
    # Only one start: a configuration failure is never retried.
    assert daemon.log_text().count("started smtpc") == 1


def test_sighup_good_config_restarts_workers_without_refusing(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        before = daemon.workers()
        port2 = free_port()
        text = daemon.conf_path.read_text().replace(
            "listen_socket {",
            f"listen_socket {{ address = 127.0.0.1; port = {port2}; }} listen_socket {{",
        )
        daemon.write_config(text.replace("log_level", "log_level") + "log_level = debug;\n")

        with daemon.connecting_in_a_loop() as results:
            poll(lambda: len(results) >= 3, 30, "connections before the reload")
            mark = daemon.log_size()
            daemon.send_signal(signal.SIGHUP)
            daemon.wait_for_log(r"mcp\[\d+\]: info: reload done", timeout=90, start=mark)
            count = len(results)
            poll(lambda: len(results) >= count + 3, 30, "connections after the reload")
        errors = [r for r in results if isinstance(r, OSError)]
        assert not errors
        # The old smtps drains instead of answering 421: every connection got the greeting.
        assert all(isinstance(r, bytes) and r.startswith(b"220 ") for r in results)
        # The old smtps may still be finishing its last session: wait for it to go.
        poll(lambda: not pid_alive(before["smtps"]), 60, "the old smtps to finish draining")
        after = daemon.workers()
        assert all(after[name] != before[name] for name in WORKER_NAMES)
        with socket.create_connection(("127.0.0.1", port2), timeout=30) as sock:
            assert daemon.read_line(sock).startswith(b"220 ")
        assert daemon.wait_notify("READY=1", start=1)


def test_sighup_bad_config_keeps_running(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        before = daemon.workers()
        good = daemon.conf_path.read_text()
        daemon.write_config(good + "max_rcpt = 5;\nsmtps { IO_timeout = soon; }\n")
        mark = daemon.log_size()
        daemon.send_signal(signal.SIGHUP)
        daemon.wait_for_log(r"reload failed, keeping the running configuration", start=mark)
        logged = daemon.log_text()[mark:]
        assert "max_rcpt" in logged
        assert "IO_timeout" in logged or "soon" in logged
        assert daemon.workers() == before
        assert daemon.banner().startswith(b"220 ")


def test_sigterm_with_open_session_sends_421_and_exits_0(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.start()
    workers = list(daemon.workers().values())
    with daemon.connect() as sock:
        assert daemon.read_line(sock).startswith(b"220 ")
        sock.sendall(b"EHLO client.example\r\n")
        while (line := daemon.read_line(sock)).startswith(b"250-"):
            pass
        assert line.startswith(b"250 ")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.read_line(sock).startswith(b"421 4.3.2")
        assert daemon.read_line(sock) == b""
    assert daemon.wait() == 0
    assert _all_gone(workers)
    assert daemon.wait_notify("STOPPING=1")
    assert not (daemon.run_directory / "mcp.pid").exists()


def test_kill_9_mcp_takes_every_worker_down(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.start()
    workers = list(daemon.workers().values())
    assert len(workers) == 4
    forkserver = forkserver_pid(daemon.pid)
    assert forkserver is not None
    workers.append(forkserver)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    poll(lambda: _all_gone(workers), 30, "every worker to exit after mcp died")


def test_config_error_exits_78_before_listening(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon("max_rcpt = 5;\n")
    daemon.start(wait_ready=False)
    assert daemon.wait() == 78
    log = daemon.log_text()
    assert "meta1.conf:" in log and "max_rcpt" in log
    assert not daemon.queue_directory.exists()
    with pytest.raises(ConnectionRefusedError), daemon.connect():
        pass


def test_port_in_use_is_a_clear_error(make_daemon: MakeDaemon) -> None:
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        daemon = make_daemon(port=port)
        daemon.start(wait_ready=False)
        assert daemon.wait() == 71
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in daemon.log_text()
    assert "started qmgr" not in daemon.log_text()


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_as_root_only_mcp_and_its_fork_server_keep_uid_0(
    make_daemon: MakeDaemon, worker_accounts: dict[str, Any]
) -> None:
    import grp
    import pwd

    one = worker_accounts.get("user")
    users = worker_accounts.get("users") or dict.fromkeys(WORKER_NAMES, (one, one))
    with make_daemon() as daemon:
        assert proc_ids(daemon.pid)["Uid"][0] == 0
        forkserver = forkserver_pid(daemon.pid)
        assert forkserver is not None and proc_ids(forkserver)["Uid"][0] == 0
        workers = daemon.workers()
        assert sorted(workers) == sorted(WORKER_NAMES)
        for name, pid in workers.items():
            uid = pwd.getpwnam(users[name][0]).pw_uid
            gid = grp.getgrnam(users[name][1]).gr_gid
            ids = proc_ids(pid)
            assert ids["Uid"] == (uid,) * 4, name
            assert ids["Gid"] == (gid,) * 4, name
            assert ids["Groups"] == (gid,), name
        qmgr_uid = pwd.getpwnam(users["qmgr"][0]).pw_uid
        gid = grp.getgrnam(users["qmgr"][1]).gr_gid
        queue = daemon.queue_directory.stat()
        assert (queue.st_uid, queue.st_gid, queue.st_mode & 0o7777) == (qmgr_uid, gid, 0o750)
        sock = (daemon.run_directory / "qmgr.sock").stat()
        assert (sock.st_uid, sock.st_gid, sock.st_mode & 0o777) == (0, gid, 0o660)
        sock = (daemon.run_directory / "smtpc.sock").stat()
        assert (sock.st_uid, sock.st_mode & 0o777) == (qmgr_uid, 0o600)
        assert daemon.banner().startswith(b"220 ")


# -- the fork server ---------------------------------------------------------------------------


def _fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


def test_workers_are_forked_by_a_fork_server_that_holds_no_socket(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        forkserver = forkserver_pid(daemon.pid)
        assert forkserver is not None
        daemon.wait_for_log(rf"fork server started \(pid {forkserver}\)")
        for name, pid in daemon.workers().items():
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert f.read().split(b"\0")[0] == f"meta1py: {name}".encode()
        # stdio plus its one socketpair end: none of mcp's listeners or RPC sockets.
        sockets = [t for t in _fd_targets(forkserver) if t.startswith("socket:")]
        assert len(sockets) == 1, _fd_targets(forkserver)
        assert daemon.banner().startswith(b"220 ")


def test_workers_start_as_fresh_interpreters_once_the_fork_server_is_gone(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        forkserver = forkserver_pid(daemon.pid)
        assert forkserver is not None
        os.kill(forkserver, signal.SIGKILL)
        old = daemon.worker_pid("smtps")
        mark = daemon.log_size()
        os.kill(old, signal.SIGKILL)
        new = daemon.restarted_worker_pid("smtps", old)
        daemon.wait_for_log(r"fork server failed .*: starting workers as fresh interpreters", start=mark)
        daemon.wait_for_log(rf"smtps \(pid {new}\) is ready", start=mark)
        with open(f"/proc/{new}/cmdline", "rb") as f:
            assert b"meta1py.smtps" in f.read().split(b"\0")
        assert daemon.banner().startswith(b"220 ")
        assert not pid_alive(forkserver)


def test_fork_server_can_be_disabled(make_daemon: MakeDaemon) -> None:
    with make_daemon(env={"META1_FORKSERVER": "0"}) as daemon:
        assert forkserver_pid(daemon.pid) is None
        for name, pid in daemon.workers().items():
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert f"meta1py.{name}".encode() in f.read().split(b"\0")
        assert sorted(daemon.workers()) == sorted(WORKER_NAMES)
        assert daemon.banner().startswith(b"220 ")
