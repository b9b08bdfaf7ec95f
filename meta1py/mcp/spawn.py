"""Binding the sockets mcp owns, and starting one worker process.

The listening sockets (SMTP and RPC) are bound by mcp and inherited by the workers, so that they
survive worker restarts: while a worker restarts, new connections wait in the kernel's backlog
instead of being refused.

Workers are started with ``subprocess.Popen`` from the main thread. ``trio.lowlevel.open_process``
would call Popen from a worker thread, and ``PR_SET_PDEATHSIG`` fires when the *thread* that forked
the child exits, so trio's idle-thread reaping would SIGTERM healthy workers. Popen forks and execs
in C immediately (no Python runs in the child), which is the "never fork inside trio.run" rule's
intent. Exits are awaited through a pidfd, which also makes signalling race-free.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

from meta1py.contract import (
    FD_LIFELINE,
    FD_READY,
    FDS_ENV,
    GROUP_ENV,
    READY_LINE,
    SYSLOG_ENV,
    USER_ENV,
    format_fds,
)
from meta1py.mcp.forkserver import ForkServer, ForkServerError

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024


class StartupError(Exception):
    """mcp cannot start: a socket cannot be bound, a directory cannot be created, ..."""


class Child:
    """One running worker process, as seen by mcp.

    Attributes:
        name: the worker's name.
        pid: the process id (a child of mcp, started by exec or by the fork server).
        started_at: ``trio.current_time()`` at spawn.
        ready: set once the worker wrote ``READY`` on its ready pipe.
        exited: set once the process has been reaped; ``returncode`` is then valid.
        planned: True when mcp itself asked it to stop (reload, dependency restart, shutdown)
            or retired it (smtps handover), so its exit is not counted as a death.
        drain_limit_s: for smtps, how long it may take to drain its sessions (the longest
            ``session_timeout`` of the configuration it runs); 0 for other workers.
    """

    def __init__(
        self, name: str, pid: int, ready_fd: int, popen: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.name = name
        self.pid = pid
        self.started_at = trio.current_time()
        self.ready = trio.Event()
        self.exited = trio.Event()
        self.planned = False
        self.drain_limit_s = 0.0
        #: The exit status (negative: killed by that signal), None while running.
        self.returncode: int | None = None
        self._popen = popen
        self._ready_fd = ready_fd
        self._pidfd = os.pidfd_open(pid)
        os.set_blocking(ready_fd, False)

    async def wait(self) -> int:
        """Wait for the process to exit, reap it and set ``exited``."""
        try:
            await trio.lowlevel.wait_readable(self._pidfd)
            # The pid cannot be reused before this reaps it.
            _pid, status = os.waitpid(self.pid, 0)
            code = self.returncode = os.waitstatus_to_exitcode(status)
            if self._popen is not None:
                # Reaped here: keep subprocess from ever waiting for this pid again.
                self._popen.returncode = code
        finally:
            if self.returncode is not None and self._pidfd >= 0:
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = -1
                self.exited.set()
        return code

    async def read_ready(self) -> bool:
        """Wait for ``READY`` on the ready pipe; False if it closed without it (the worker died)."""
        data = b""
        while b"\n" not in data:
            await trio.lowlevel.wait_readable(self._ready_fd)
            try:
                chunk = os.read(self._ready_fd, 64)
            except BlockingIOError:
                continue
            if not chunk:
                return False
            data += chunk
        if data.startswith(READY_LINE.rstrip()):
            self.ready.set()
            return True
        log.warning("%s sent %r on its ready pipe", self.name, data[:64])
        return False

    def send_signal(self, sig: int) -> None:
        """Signal the process through its pidfd (never a recycled pid); no-op once it exited."""
        if self.exited.is_set() or self._pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Release the ready pipe (after ``exited``, once nobody reads it any more)."""
        if self._ready_fd >= 0:
            trio.lowlevel.notify_closing(self._ready_fd)
            os.close(self._ready_fd)
            self._ready_fd = -1


def spawn_worker(
    name: str,
    config_text: str,
    fds: dict[str, int],
    lifeline_fd: int,
    user: str | None = None,
    group: str | None = None,
    syslog: bool = False,
    forkserver: ForkServer | None = None,
) -> Child:
    """Start worker ``name`` with only ``fds``, the lifeline and a ready pipe.

    The worker is forked by ``forkserver`` when it is given and alive, else it is started as a
    fresh interpreter, ``python -m meta1py.<name>``; both run the same ``run_worker``.

    Args:
        name: the worker to start.
        config_text: the effective configuration, sent on the worker's stdin.
        fds: descriptors to pass (``rpc``, ``listenN``); they keep their numbers in the child.
        lifeline_fd: read end of the lifeline pipe (mcp holds the write end and never writes).
        user: when set (mcp is root), the account the worker drops to; group likewise.
        syslog: tell the worker to log to syslog.
        forkserver: mcp's fork server (meta1py.mcp.forkserver), or None.

    Raises:
        OSError: the process could not be started.
    """
    ready_r, ready_w = os.pipe()
    # A memfd, not a pipe: the whole config is written before the child exists, so writing can
    # never block the event loop, whatever the config's size.
    conf_fd = os.memfd_create(f"meta1-{name}.conf", os.MFD_CLOEXEC)
    try:
        os.write(conf_fd, config_text.encode("utf-8"))
        os.lseek(conf_fd, 0, os.SEEK_SET)
        child_fds = {**fds, FD_READY: ready_w, FD_LIFELINE: lifeline_fd}
        env = {k: v for k, v in os.environ.items() if not k.startswith((USER_ENV, GROUP_ENV))}
        # Only mcp talks to systemd.
        env.pop("NOTIFY_SOCKET", None)
        env[FDS_ENV] = format_fds(child_fds)
        if syslog:
            env[SYSLOG_ENV] = "1"
        if user:
            env[USER_ENV] = user
            if group:
                env[GROUP_ENV] = group
        if forkserver is not None and forkserver.alive:
            try:
                pid = forkserver.spawn(name, env, child_fds, conf_fd)
            except ForkServerError as exc:
                log.warning(
                    "fork server failed (%s): starting workers as fresh interpreters from now on", exc
                )
            else:
                return Child(name, pid, ready_r)
        popen = subprocess.Popen(
            [sys.executable, "-m", f"meta1py.{name}"],
            stdin=conf_fd,
            pass_fds=tuple(child_fds.values()),
            env=env,
            # Its own process group: a Ctrl-C on the terminal reaches mcp only, which then stops
            # the workers in order instead of all of them racing to exit.
            process_group=0,
        )
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        os.close(conf_fd)
        os.close(ready_w)
    return Child(name, popen.pid, ready_r, popen)


def describe_status(returncode: int | None) -> str:
    """``exited with status 3`` / ``killed by SIGKILL`` for log lines."""
    if returncode is None:
        return "is running"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def bind_listener(address: str, port: int) -> socket.socket:
    """Bind and listen on ``address:port`` (TCP).

    Raises:
        StartupError: naming ``address:port`` and the reason (in use, permission, no such address).
    """
    shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        raise StartupError(f"cannot listen on {shown}: not an IP address") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use (is another MTA running?)"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need root)"
        else:
            reason = exc.strerror or str(exc)
        raise StartupError(f"cannot listen on {shown}: {reason}") from exc
    return sock


def bind_rpc_socket(path: Path, owner: tuple[int, int, int] | None) -> socket.socket:
    """Bind the Unix listening socket ``path``: ``owner`` is ``(uid, gid, mode)``; None means ours,
    mode 0660.

    A stale socket file is removed; a live one (something accepts connections on it) means
    another mcp runs with the same run directory, which is an error.

    Raises:
        StartupError: another instance is running, the path is too long, or binding failed.
    """
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise StartupError(f"{path} is in use: is another mcp running with this run_directory?")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bound with a umask that lets nobody in, then opened up: never briefly too open.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        if owner is not None:
            uid, gid, mode = owner
            os.chown(path, uid, gid, follow_symlinks=False)
            os.chmod(path, mode)
        else:
            os.chmod(path, 0o660)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot create RPC socket {path}: {exc.strerror or exc}") from exc
    return sock
