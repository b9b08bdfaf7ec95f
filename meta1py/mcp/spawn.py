"""Binding the sockets mcp owns, and starting one worker process (no trio here: mcp starts the
first workers before it imports trio; meta1py.mcp.child watches them once trio runs).

The listening sockets (SMTP and RPC) are bound by mcp and inherited by the workers, so that they
survive worker restarts: while a worker restarts, new connections wait in the kernel's backlog
instead of being refused.

Workers are started with ``subprocess.Popen`` from the main thread. ``trio.lowlevel.open_process``
would call Popen from a worker thread, and ``PR_SET_PDEATHSIG`` fires when the *thread* that forked
the child exits, so trio's idle-thread reaping would SIGTERM healthy workers. Popen forks and execs
in C immediately (no Python runs in the child), which is the "never fork inside trio.run" rule's
intent.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meta1py.conf.model import listen_sockets
from meta1py.contract import (
    FD_LIFELINE,
    FD_METRICS,
    FD_READY,
    FD_RPC,
    FD_TESTAPI,
    FDS_ENV,
    GROUP_ENV,
    SYSLOG_ENV,
    USER_ENV,
    format_fds,
    listen_fd_name,
)
from meta1py.mcp.forkserver import ForkServer, ForkServerError

if TYPE_CHECKING:
    from meta1py.conf import Config

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024


class StartupError(Exception):
    """mcp cannot start: a socket cannot be bound, a directory cannot be created, ..."""


@dataclass(frozen=True)
class Launched:
    """A worker process just started (meta1py.mcp.child.Child wraps it once trio runs)."""

    name: str
    pid: int
    #: The read end of its ready pipe.
    ready_fd: int
    #: Set when it was started as a fresh interpreter (no fork server).
    popen: subprocess.Popen[bytes] | None = None


def worker_fds(
    name: str,
    cfg: Config,
    listeners: dict[tuple[str, int], socket.socket],
    rpc_sockets: dict[str, socket.socket],
    metrics_listener: socket.socket | None,
    test_listener: socket.socket | None = None,
) -> dict[str, int]:
    """The descriptors worker ``name`` gets, by name: its RPC socket, smtps's listening sockets,
    qmgr's metrics socket and, in test mode, qmgr's control API socket."""
    fds: dict[str, int] = {}
    if name in rpc_sockets:
        fds[FD_RPC] = rpc_sockets[name].fileno()
    if name == "smtps":
        for index, (_section, ls) in enumerate(listen_sockets(cfg)):
            fds[listen_fd_name(index)] = listeners[(ls.address, ls.port)].fileno()
    if name == "qmgr" and metrics_listener is not None:
        fds[FD_METRICS] = metrics_listener.fileno()
    if name == "qmgr" and test_listener is not None:
        fds[FD_TESTAPI] = test_listener.fileno()
    return fds


def launch_worker(
    name: str,
    config_text: str,
    fds: dict[str, int],
    lifeline_fd: int,
    user: str | None = None,
    group: str | None = None,
    syslog: bool = False,
    forkserver: ForkServer | None = None,
) -> Launched:
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
                return Launched(name, pid, ready_r)
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
    return Launched(name, popen.pid, ready_r, popen)


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
