"""The shared worker skeleton: what every worker does between its start and serving.

mcp's fork server forks each worker and calls ``run_worker`` in it; without a fork server, mcp
starts ``python -m meta1py.<name>``, whose ``__main__`` calls ``sys.exit(run_worker(name, serve))``
(docs/internals.md, "Processes, sockets and readiness"). ``run_worker``:

1. parses ``META1_FDS`` (``rpc``, ``listen0..N``, ``metrics``, ``ready``, ``lifeline``; exit 64
   if malformed);
2. reads the effective config on stdin (mcp sends it parsed, ``conf.config_wire``) (exit 78 on errors);
3. runs the worker's ``prepare(cfg)`` if it has one (smtps loads its TLS keys and password files
   there, so that they can stay readable by root alone), then, when ``META1_USER`` is set, drops
   privileges in a fixed order (setgroups, setresgid, setresuid),
   then proves that root cannot be regained; a worker never runs as root (exit 77 otherwise);
4. asks the kernel for SIGTERM when mcp dies (``PR_SET_PDEATHSIG``, set after the drop because a
   credential change clears it) and also watches the lifeline pipe, whose EOF means mcp is gone;
5. sets up logging (and the ring of recent errors that ``meta1 status`` shows, meta1py.status),
   installs SIGTERM/SIGINT handling, and runs ``serve`` under ``trio.run``;
6. writes ``READY`` on the ready pipe when ``serve`` calls ``task_status.started()``.

On SIGTERM the skeleton sets ``WorkerFds.shutdown``; ``serve`` should then stop accepting, finish
or end its sessions (smtps answers 421 4.3.2) and return. After ``SHUTDOWN_GRACE_S`` the skeleton
cancels ``serve``. On SIGUSR1 (``DRAIN_SIGNAL``; mcp sends it to the old smtps when a reload hands
its listeners to a new one) the skeleton sets ``WorkerFds.drain``: ``serve`` stops accepting, lets
every open session finish normally and returns; the skeleton sets no deadline (serve bounds the
drain itself), and a later SIGTERM still means shutdown. Only smtps acts on ``drain``. Exit
statuses: 0 clean, 1 crash (mcp restarts), 64 usage, 77 privileges, 78 configuration.
"""

from __future__ import annotations

# Imported before the privilege drop because they are otherwise imported lazily, later: a worker
# that runs as another user may not be able to read the standard library any more (mcp checks
# that it can, meta1py.ownership.python_problems; this is a second line of defence).
import encodings.idna
import encodings.unicode_escape  # noqa: F401  -- log.format_value
import grp
import logging
import os
import pwd
import signal
import socket
import sys
import traceback  # noqa: F401  -- needed to log a crash after the drop
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from meta1py.conf import (
    Config,
    ConfigErrors,
    parse_config,
    parse_config_wire,
    process_log_level,
)
from meta1py.contract import (
    DRAIN_SIGNAL,
    EX_CONFIG,
    EX_CRASH,
    EX_NOPERM,
    EX_OK,
    EX_USAGE,
    FD_LIFELINE,
    FD_METRICS,
    FD_READY,
    FD_RPC,
    FD_TESTAPI,
    FDS_ENV,
    GROUP_ENV,
    READY_LINE,
    SYSLOG_ENV,
    USER_ENV,
    listen_fd_index,
    parse_fds,
)
from meta1py.crashpoints import set_process_name
from meta1py.libc import PR_SET_PDEATHSIG, prctl
from meta1py.log import setup_logging
from meta1py.status import install_recent_errors

log = logging.getLogger(__name__)

# How long serve() may take to wind down after SIGTERM before it is cancelled; mcp waits longer
# (its SIGKILL deadline) so that a worker normally exits on its own.
SHUTDOWN_GRACE_S = 5.0
# After the lifeline breaks nobody can restart us or receive our results: wind down fast.
ORPHAN_GRACE_S = 1.0


class WorkerConfigError(Exception):
    """Raised by a worker's serve() for a configuration problem found at start-up (a map file
    that cannot be read, a certificate that does not load): the worker exits 78 and mcp does
    not restart it, because restarting cannot fix it."""


def _find_config_error(exc: BaseException) -> WorkerConfigError | None:
    if isinstance(exc, WorkerConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_config_error(inner)
            if found is not None:
                return found
    return None


class PrivilegeError(Exception):
    """The privilege drop failed or could be undone; the worker must not run."""


@dataclass
class WorkerFds:
    """What a worker inherited from mcp, as trio objects, plus the shutdown signal.

    Attributes:
        name: the worker's name (``qmgr``, ``smar``, ``smtpc``, ``smtps``).
        rpc: the worker's RPC listening socket (``<run_directory>/<name>.sock``), or None.
        listeners: the SMTP listening sockets, ``listen0..N``, in ``listen_sockets(cfg)`` order.
        metrics: the metrics endpoint's listening socket (qmgr, with ``metrics { listen }``), or None.
        testapi: test mode's control API listening socket (qmgr, in test mode), or None.
        shutdown: set when mcp asked this worker to stop (SIGTERM) or mcp went away.
        drain: set when mcp asked this worker to drain (``DRAIN_SIGNAL``): stop accepting, let
            open sessions end normally, then return from serve.
        raw: the ``META1_FDS`` mapping as received (name -> descriptor).
        prepared: what the worker's ``prepare(cfg)`` returned before the privilege drop, or None.
    """

    name: str
    rpc: trio.SocketListener | None
    listeners: list[trio.SocketListener]
    metrics: trio.SocketListener | None = None
    testapi: trio.SocketListener | None = None
    shutdown: trio.Event = field(default_factory=trio.Event)
    drain: trio.Event = field(default_factory=trio.Event)
    raw: dict[str, int] = field(default_factory=dict)
    prepared: Any = None


class TaskStatus(Protocol):
    """The part of ``trio.TaskStatus`` that ``serve`` uses."""

    def started(self, value: Any = None) -> None: ...


Serve = Callable[["Config", WorkerFds, Any], Awaitable[None]]
#: Runs before the privilege drop (as root when mcp is root); its result is ``WorkerFds.prepared``.
Prepare = Callable[["Config"], Any]


def drop_privileges(user: str, group: str | None = None) -> None:
    """Become ``user``:``group`` for good, then prove it.

    The order is fixed (OpenSMTPD's): supplementary groups first (they need root), then all three
    gids, then all three uids. Afterwards ``setuid(0)`` and ``seteuid(0)`` must fail and no real,
    effective or saved id may be 0.

    Raises:
        PrivilegeError: unknown account, target is root, a call failed, or root is regainable.
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"unknown user {user!r}") from None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"unknown group {group!r}") from None
    else:
        gid = pw.pw_gid
    uid = pw.pw_uid
    if uid == 0 or gid == 0:
        raise PrivilegeError(f"refusing to run as {user}:{group or gid} (uid or gid 0)")
    try:
        os.setgroups([gid])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot become {user}:{group or gid}: {exc}") from exc
    for regain in (os.setuid, os.seteuid, os.setgid, os.setegid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise PrivilegeError(f"{regain.__name__}(0) succeeded after dropping privileges")
    if 0 in os.getresuid() or 0 in os.getresgid() or 0 in os.getgroups():
        raise PrivilegeError("an id is still 0 after dropping privileges")
    os.environ["HOME"] = pw.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = pw.pw_name


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` when our parent (mcp) exits; False if unsupported."""
    return prctl(PR_SET_PDEATHSIG, int(sig))


def _test_exit_status(name: str) -> int | None:
    """Test hook: ``META1_TEST_EXIT=smar=78,qmgr=1`` makes those workers exit at once.

    End-to-end tests use it to exercise mcp's hard-failure path with a config that mcp itself
    accepted (a worker never sees an invalid config otherwise).
    """
    for item in os.environ.get("META1_TEST_EXIT", "").split(","):
        worker, _, status = item.partition("=")
        if worker.strip() == name and status.strip().isdigit():
            return int(status)
    return None


def _read_config_text() -> str:
    text = sys.stdin.buffer.read().decode("utf-8")
    # stdin was only the config channel; keep fd 0 valid but empty.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return text


async def _watch_signals(
    fds: WorkerFds,
    serve_scope: trio.CancelScope,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, DRAIN_SIGNAL) as signals:
        # Started (handlers installed) before serve reports ready: mcp may send DRAIN_SIGNAL to
        # any ready worker, and its default action would kill the process.
        task_status.started()
        async for signum in signals:
            if signum == DRAIN_SIGNAL:
                if not fds.shutdown.is_set() and not fds.drain.is_set():
                    log.info(
                        "%s: draining (no new sessions; open ones may finish)", signal.Signals(signum).name
                    )
                    fds.drain.set()
                continue
            if fds.shutdown.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                serve_scope.cancel()
                return
            log.info("%s: shutting down", signal.Signals(signum).name)
            fds.shutdown.set()
            serve_scope.deadline = min(serve_scope.deadline, trio.current_time() + SHUTDOWN_GRACE_S)


async def _watch_lifeline(fd: int, fds: WorkerFds, serve_scope: trio.CancelScope) -> None:
    os.set_blocking(fd, False)
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            continue
        if not data:
            break
    log.warning("mcp went away (lifeline closed): exiting")
    fds.shutdown.set()
    serve_scope.deadline = min(serve_scope.deadline, trio.current_time() + ORPHAN_GRACE_S)


def _report_ready(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.write(fd, READY_LINE)
    except OSError as exc:  # mcp gone: the lifeline watcher handles it
        log.warning("cannot report readiness: %s", exc)
    finally:
        os.close(fd)


def _listener(fd: int) -> trio.SocketListener:
    return trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))


async def _run(name: str, serve: Serve, cfg: Config, raw: dict[str, int], prepared: Any) -> int:
    listen_fds = sorted((index, fd) for key, fd in raw.items() if (index := listen_fd_index(key)) is not None)
    fds = WorkerFds(
        name=name,
        rpc=_listener(raw[FD_RPC]) if FD_RPC in raw else None,
        listeners=[_listener(fd) for _index, fd in listen_fds],
        metrics=_listener(raw[FD_METRICS]) if FD_METRICS in raw else None,
        testapi=_listener(raw[FD_TESTAPI]) if FD_TESTAPI in raw else None,
        raw=dict(raw),
        prepared=prepared,
    )
    serve_scope = trio.CancelScope()
    finished_cleanly = False

    async def serve_task(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal finished_cleanly
        with serve_scope:
            await serve(cfg, fds, task_status)
            finished_cleanly = True
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, fds, serve_scope)
        if FD_LIFELINE in raw:
            nursery.start_soon(_watch_lifeline, raw[FD_LIFELINE], fds, serve_scope)
        try:
            await nursery.start(serve_task)
        except RuntimeError:
            # serve was cancelled by an early SIGTERM before it reported ready.
            if not fds.shutdown.is_set():
                raise
        else:
            _report_ready(raw.get(FD_READY))
            log.info("ready")
    if fds.shutdown.is_set() or fds.drain.is_set():
        if not finished_cleanly:
            log.warning("shutdown grace period over: sessions were cancelled")
        log.info("stopped" if fds.shutdown.is_set() else "drained: stopped")
        return EX_OK
    log.error("serve() returned without a shutdown or drain request")
    return EX_CRASH


def run_worker(name: str, serve: Serve, prepare: Prepare | None = None) -> int:
    """Start worker ``name``: fds, config, privilege drop, logging, signals, then ``serve``.

    Args:
        name: ``qmgr``, ``smar``, ``smtpc`` or ``smtps``.
        serve: ``async def serve(cfg, fds, task_status)``; calls ``task_status.started()`` once it
            serves, then runs until ``fds.shutdown`` is set and returns after winding down.

    Returns:
        The exit status for ``sys.exit``: 0, 1 (crash), 64, 77 or 78.
    """
    syslog = os.environ.get(SYSLOG_ENV) == "1"
    setup_logging(name, "info", syslog=syslog)
    try:
        raw = parse_fds(os.environ.get(FDS_ENV, ""))
    except ValueError as exc:
        log.critical("%s", exc)
        return EX_USAGE
    try:
        text = _read_config_text()
        # mcp sends the parsed tree (config_wire); a configuration text is read too (by hand).
        cfg = parse_config_wire(text) if text.startswith("{") else parse_config(text, "<config from mcp>")
    except ConfigErrors as exc:
        log.critical("configuration errors:\n%s", exc)
        return EX_CONFIG
    except (UnicodeDecodeError, OSError) as exc:
        log.critical("cannot read the configuration on stdin: %s", exc)
        return EX_CONFIG
    setup_logging(name, process_log_level(cfg, name), syslog=syslog, log_format=cfg.log_format)
    # The last errors, for meta1 status (meta1py.status): kept from here on.
    install_recent_errors(name)
    set_process_name(name)
    forced = _test_exit_status(name)
    if forced is not None:
        log.critical("exiting with status %d as META1_TEST_EXIT asks", forced)
        return forced

    prepared = None
    if prepare is not None:
        try:
            prepared = prepare(cfg)
        except WorkerConfigError as exc:
            log.critical("configuration error: %s", exc)
            return EX_CONFIG
    user = os.environ.get(USER_ENV)
    if user:
        try:
            drop_privileges(user, os.environ.get(GROUP_ENV) or None)
        except PrivilegeError as exc:
            log.critical("privilege drop failed: %s", exc)
            return EX_NOPERM
        log.debug("running as uid %d gid %d", os.getuid(), os.getgid())
    elif os.geteuid() == 0 or os.getuid() == 0:
        log.critical("refusing to run as root: mcp must set META1_USER")
        return EX_NOPERM
    # Set after the drop: a credential change clears the parent-death signal.
    if not set_parent_death_signal():
        log.warning("PR_SET_PDEATHSIG unavailable; relying on the lifeline pipe")
    try:
        os.chdir(cfg.queue_directory)
    except OSError:
        os.chdir("/")
    try:
        return trio.run(_run, name, serve, cfg, raw, prepared)
    except Exception as exc:
        config_error = _find_config_error(exc)
        if config_error is not None:
            log.critical("configuration error: %s", config_error)
            return EX_CONFIG
        log.critical("%s crashed", name, exc_info=True)
        return EX_CRASH
