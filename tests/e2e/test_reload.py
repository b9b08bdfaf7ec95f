"""Reload end to end: SIGHUP hands the listeners to a new smtps while the old one drains.

The real ``meta1 run`` is started unprivileged (or with a throw-away account as root). Which smtps
process serves a connection is found through /proc: the server side of the TCP connection is a
socket inode that only the serving process holds.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meta1py_testing.certs import Pki, make_pki
from meta1py_testing.daemon import Meta1Daemon, pid_alive, poll, worker_name

pytestmark = pytest.mark.e2e

MakeDaemon = Callable[..., Meta1Daemon]
TIMEOUT = 60
MESSAGE = b"From: a@localhost\r\nTo: b@localhost\r\nSubject: reload\r\n\r\nsent across a reload\r\n"
TLS_SECTION = "tls { cert_file = ../pki/server.crt; key_file = ../pki/server.key; }"


# -- helpers -----------------------------------------------------------------------------------


def _children(parent: int, name: str) -> list[int]:
    """Pids of worker ``name`` processes (forked or exec'd) whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and worker_name(int(entry)) == name:
            found.append(int(entry))
    return sorted(found)


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _server_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the accepted socket 127.0.0.1:server_port <- 127.0.0.1:client_port."""
    want_local, want_remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want_local and fields[2] == want_remote and fields[9] != "0":
            return int(fields[9])
    return None


def serving_pid(daemon: Meta1Daemon, client_port: int) -> int:
    """The smtps process holding the server side of the connection from ``client_port``."""

    def find() -> int | None:
        inode = _server_inode(daemon.port, client_port)
        if inode is None:
            return None
        for pid in _children(daemon.pid, "smtps"):
            if inode in _socket_inodes(pid):
                return pid
        return None

    return poll(find, TIMEOUT, f"the smtps serving client port {client_port}")


def active_smtps(daemon: Meta1Daemon, old: int) -> int:
    """Wait for the smtps started after ``old`` (the only smtps pid other than it); return it."""

    def new() -> int | None:
        pids = [pid for pid in _children(daemon.pid, "smtps") if pid != old]
        return pids[0] if len(pids) == 1 else None

    return poll(new, TIMEOUT, "a new smtps")


def reload(daemon: Meta1Daemon, extra: str = "") -> None:
    """Rewrite the config (adding ``extra``), SIGHUP mcp, wait for ``reload done``."""
    daemon.write_config(daemon.conf_path.read_text() + extra)
    mark = daemon.log_size()
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_for_log(r"mcp\[\d+\]: info: reload done", timeout=120, start=mark)


def delivered(daemon: Meta1Daemon, user: str = "b") -> list[bytes]:
    new = daemon.mail_directory / "localhost" / user / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def send_rest(client: smtplib.SMTP) -> None:
    """MAIL, RCPT, DATA and QUIT on an open session; every step must succeed."""
    assert client.mail("a@localhost")[0] == 250
    assert client.rcpt("b@localhost")[0] == 250
    assert client.data(MESSAGE)[0] == 250
    assert client.quit()[0] == 221


def readable_pki(directory: Path) -> Pki:
    pki = make_pki(directory)
    # As root the workers run as the test account: they must read the keys.
    directory.chmod(0o755)
    for key in directory.glob("*.key"):
        key.chmod(0o644)
    return pki


def cert_der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def peer_cert(client: smtplib.SMTP) -> bytes:
    """The DER certificate the server presented on ``client``'s TLS session."""
    assert isinstance(client.sock, ssl.SSLSocket)
    der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def any_cert_context() -> ssl.SSLContext:
    # The tests compare the certificate itself; trust is not what they check.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# -- tests -------------------------------------------------------------------------------------


def test_session_open_across_sighup_finishes_normally(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        old = _children(daemon.pid, "smtps")[0]
        client = smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT)
        try:
            assert client.ehlo("client.example")[0] == 250
            assert client.sock is not None
            client_port = client.sock.getsockname()[1]
            assert serving_pid(daemon, client_port) == old
            reload(daemon, "log_level = debug;\n")
            new = active_smtps(daemon, old)
            daemon.wait_for_log(rf"smtps \(pid {old}\) is draining")
            assert pid_alive(old), "the old smtps must wait for its open session"
            # A new connection goes to the new smtps.
            with daemon.connect() as sock:
                assert daemon.read_line(sock).startswith(b"220 ")
                assert serving_pid(daemon, sock.getsockname()[1]) == new
            send_rest(client)
        finally:
            client.close()
        poll(lambda: not pid_alive(old), TIMEOUT, "the old smtps to exit after its last session")
        daemon.wait_for_log(rf"draining smtps \(pid {old}\) exited with status 0")
        poll(lambda: len(delivered(daemon)) == 1, TIMEOUT, "the message to be delivered")
        assert b"sent across a reload" in delivered(daemon)[0]
        assert f"smtps (pid {old}) exited" not in daemon.log_text().replace("draining smtps", "")
        assert daemon.running()


def test_no_connection_refused_during_reload(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        old = _children(daemon.pid, "smtps")[0]
        with daemon.connecting_in_a_loop() as results:
            poll(lambda: len(results) >= 3, TIMEOUT, "connections before the reload")
            reload(daemon, "log_level = debug;\n")
            count = len(results)
            poll(lambda: len(results) >= count + 5, TIMEOUT, "connections after the reload")
        assert not [r for r in results if isinstance(r, OSError)]
        assert all(isinstance(r, bytes) and r.startswith(b"220 ") for r in results), set(results)
        new = active_smtps(daemon, old)
        with daemon.connect() as sock:
            assert daemon.read_line(sock).startswith(b"220 ")
            assert serving_pid(daemon, sock.getsockname()[1]) == new


def test_sighup_reloads_certificates_without_dropping_tls_sessions(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(sections={"smtps": TLS_SECTION})
    first = readable_pki(daemon.dir / "pki")
    with daemon:
        old_cert = cert_der(first.server.cert)
        old = _children(daemon.pid, "smtps")[0]
        client = smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT)
        try:
            client.ehlo("client.example")
            assert client.starttls(context=any_cert_context())[0] == 220
            client.ehlo("client.example")
            assert peer_cert(client) == old_cert

            # A renewed certificate: new files written over the configured ones.
            second = readable_pki(daemon.dir / "pki2")
            for path in (second.server.cert, second.server.key):
                shutil.copyfile(path, daemon.dir / "pki" / path.name)
            new_cert = cert_der(second.server.cert)
            assert new_cert != old_cert
            reload(daemon)
            active_smtps(daemon, old)

            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=TIMEOUT) as fresh:
                fresh.ehlo("fresh.example")
                assert fresh.starttls(context=any_cert_context())[0] == 220
                assert peer_cert(fresh) == new_cert
                fresh.ehlo("fresh.example")
                assert fresh.noop()[0] == 250

            # The session that started TLS before the reload goes on with the old certificate.
            assert peer_cert(client) == old_cert
            send_rest(client)
        finally:
            client.close()
        poll(lambda: len(delivered(daemon)) == 1, TIMEOUT, "the message to be delivered")
        poll(lambda: not pid_alive(old), TIMEOUT, "the old smtps to exit")


def test_sigterm_stops_a_draining_smtps_too(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.start()
    old = _children(daemon.pid, "smtps")[0]
    with daemon.connect() as sock:
        assert daemon.read_line(sock).startswith(b"220 ")
        reload(daemon, "log_level = debug;\n")
        new = active_smtps(daemon, old)
        workers = [
            *_children(daemon.pid, "qmgr"),
            *_children(daemon.pid, "smar"),
            *_children(daemon.pid, "smtpc"),
        ]
        assert pid_alive(old)
        daemon.send_signal(signal.SIGTERM)
        # The draining session is ended like any other on shutdown.
        assert daemon.read_line(sock).startswith(b"421 4.3.2")
        assert daemon.read_line(sock) == b""
    assert daemon.wait() == 0
    poll(lambda: not any(pid_alive(p) for p in [old, new, *workers]), TIMEOUT, "every worker to exit")


def test_kill_9_mcp_takes_a_draining_smtps_down(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    daemon.start()
    old = _children(daemon.pid, "smtps")[0]
    with daemon.connect() as sock:
        assert daemon.read_line(sock).startswith(b"220 ")
        reload(daemon, "log_level = debug;\n")
        new = active_smtps(daemon, old)
        assert pid_alive(old)
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        poll(lambda: not pid_alive(old) and not pid_alive(new), TIMEOUT, "both smtps to exit")


def test_missing_certificate_exits_78_before_listening(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(sections={"smtps": TLS_SECTION})
    daemon.start(wait_ready=False)
    assert daemon.wait() == 78
    log = daemon.log_text()
    assert "meta1.conf:" in log and "cert_file file" in log and "does not exist" in log
    assert "started qmgr" not in log
    with pytest.raises(ConnectionRefusedError), daemon.connect():
        pass


def test_sighup_with_missing_certificate_keeps_running(make_daemon: MakeDaemon) -> None:
    with make_daemon() as daemon:
        before = sorted(_children(daemon.pid, "smtps"))
        text = daemon.conf_path.read_text()
        daemon.write_config(text.replace("smtps {", f"smtps {{ {TLS_SECTION}", 1))
        mark = daemon.log_size()
        daemon.send_signal(signal.SIGHUP)
        daemon.wait_for_log(r"reload failed, keeping the running configuration", start=mark)
        assert "cert_file file" in daemon.log_text()[mark:]
        assert sorted(_children(daemon.pid, "smtps")) == before
        assert daemon.banner().startswith(b"220 ")
