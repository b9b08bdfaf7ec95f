"""Supervision: start the workers, restart them with backoff, reload on SIGHUP, stop on SIGTERM.

One task per worker runs the spawn -> wait -> decide loop; the main task waits for a shutdown
request (a signal or a hard failure) and then stops the workers in reverse start order.

Restart policy (documented for operators in docs/mcp.md):

- A worker that exits or is killed is restarted after a backoff that starts at
  ``BACKOFF_INITIAL_S`` and doubles up to ``BACKOFF_MAX_S`` (:class:`RestartPolicy`); a worker
  that ran for ``STABLE_S`` before dying starts again from the initial backoff.
- A worker that keeps dying (``RESTART_LIMIT`` deaths within ``RESTART_WINDOW_S``) is in a crash
  loop: mcp says so once at critical level and restarts it at the longest delay until it stays
  up, but never gives up on it. Giving up stopped the whole MTA for a fault of one worker (a
  full disk under qmgr, one hostile DNS answer in smar) that is often gone a minute later, while
  the other workers can still serve: smtps answers 4xx while qmgr is down, and nothing is lost.
- Exit status 64 (usage), 77 (privileges) or 78 (configuration) is a hard failure: restarting
  cannot help. mcp stops every worker and exits with the worker's status.
- ``restart_dependencies`` of a worker that died are restarted with it (their exit is planned,
  so it is neither backed off nor counted).

Reload (SIGHUP with a valid file): qmgr, smar and smtpc are restarted one by one (each waits for
its successor to be ready). smtps is handed over instead: a new smtps starts at once on the same
listening sockets and the old one gets ``DRAIN_SIGNAL``; it stops accepting and exits once its
open sessions have ended normally. A draining smtps is no longer supervised (its exit is neither a
crash nor restarted) but it is stopped with everything else on shutdown, and the lifeline takes it
down if mcp dies. mcp SIGTERMs it after its drain limit (the longest ``session_timeout`` of the
configuration it runs, plus a margin) if it is somehow still there.

Status: mcp rewrites ``<run_directory>/mcp.status`` (meta1py.status) whenever a worker starts,
becomes ready or dies, and after a reload: pids, start times, starts and restarts per worker, and
mcp's own recent errors. qmgr reads it for its metrics, ``meta1 status`` for its process table.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from meta1py.conf import listen_sockets, process_config
from meta1py.contract import (
    DRAIN_SIGNAL,
    EX_CRASH,
    HARD_FAILURE_STATUSES,
    WORKER_NAMES,
    mcp_status_path,
)
from meta1py.log import setup_logging
from meta1py.mcp.child import Child, spawn_worker
from meta1py.mcp.forkserver import ForkServer
from meta1py.mcp.notify import notify
from meta1py.mcp.privs import Account, prepare_directories, resolve_accounts
from meta1py.mcp.spawn import Launched, StartupError, bind_listener, describe_status, worker_fds
from meta1py.status import McpStatus, WorkerStatus, recent_errors, write_mcp_status

if TYPE_CHECKING:
    from meta1py.conf import Config

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 60.0
STABLE_S = 30.0
RESTART_LIMIT = 10
RESTART_WINDOW_S = 60.0
READY_TIMEOUT_S = 30.0
# Beyond a draining smtps's own limit (longest session_timeout + its margin), before mcp SIGTERMs it.
DRAIN_BACKSTOP_S = 30.0
STOP_TIMEOUT_S = 10.0


def restart_limit_from_env() -> tuple[int, float]:
    """``(deaths, window_s)`` that make a crash loop; ``META1_RESTART_LIMIT=N/SECONDS`` overrides.

    The override exists for tests and for operators who want a different tolerance; malformed
    values are ignored with a warning.
    """
    text = os.environ.get("META1_RESTART_LIMIT")
    if text:
        count, _, window = text.partition("/")
        try:
            deaths, window_s = int(count), float(window)
            if deaths >= 1 and window_s > 0:
                return deaths, window_s
        except ValueError:
            pass
        log.warning("ignoring malformed META1_RESTART_LIMIT=%r (want N/SECONDS)", text)
    return RESTART_LIMIT, RESTART_WINDOW_S


def backoff_max_from_env() -> float:
    """The longest restart delay; ``META1_RESTART_BACKOFF_MAX=SECONDS`` overrides (tests)."""
    text = os.environ.get("META1_RESTART_BACKOFF_MAX")
    if text:
        try:
            value = float(text)
            if value >= BACKOFF_INITIAL_S:
                return value
        except ValueError:
            pass
        log.warning(
            "ignoring malformed META1_RESTART_BACKOFF_MAX=%r (want SECONDS >= %g)", text, BACKOFF_INITIAL_S
        )
    return BACKOFF_MAX_S


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """What to do after a worker died (not for a planned exit or a hard-failure status)."""

    delay_s: float
    #: The worker has just entered a crash loop (said once per loop, not at every death).
    crash_loop_started: bool
    #: Deaths counted within the window, this one included.
    recent_deaths: int


@dataclass
class RestartPolicy:
    """Pure restart backoff for one worker: capped exponential, never giving up.

    The delay starts at ``initial_s`` and doubles at each death up to ``max_s``; a worker that
    ran ``stable_s`` before it died starts again from ``initial_s`` (and leaves its crash loop).
    ``loop_deaths`` deaths within ``loop_window_s`` is a crash loop: the delay goes straight to
    ``max_s`` and stays there until the worker runs ``stable_s``.
    """

    initial_s: float = BACKOFF_INITIAL_S
    max_s: float = BACKOFF_MAX_S
    stable_s: float = STABLE_S
    loop_deaths: int = RESTART_LIMIT
    loop_window_s: float = RESTART_WINDOW_S
    deaths: deque[float] = field(default_factory=deque)
    in_loop: bool = False
    _next_s: float = -1.0

    def on_death(self, now: float, ran_s: float) -> RestartDecision:
        """Record a death at ``now`` of a worker that ran ``ran_s``; return the restart delay."""
        if self._next_s < 0 or ran_s >= self.stable_s:
            self._next_s = self.initial_s
            self.in_loop = False
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - self.loop_window_s:
            self.deaths.popleft()
        started = False
        if len(self.deaths) >= self.loop_deaths and not self.in_loop:
            self.in_loop = started = True
        delay = self.max_s if self.in_loop else min(self._next_s, self.max_s)
        self._next_s = min(self._next_s * 2, self.max_s)
        return RestartDecision(delay, started, len(self.deaths))


@dataclass
class WorkerState:
    """mcp's bookkeeping for one worker name across restarts."""

    name: str
    child: Child | None = None
    generation: int = 0
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    #: Restarts after a death (planned restarts and handovers not counted).
    restarts: int = 0
    #: When the current child started (Unix time), for the status file.
    started_wall: float | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    #: Set to retire the current child without waiting for it to exit (smtps handover on reload):
    #: the supervising task starts a successor at once and the old child drains on its own.
    handover: trio.Event = field(default_factory=trio.Event)

    def set_child(self, child: Child) -> None:
        self.child = child
        self.generation += 1
        self.started_wall = time.time()
        # A handover asked of the previous child (which died meanwhile) is not for this one.
        self.handover = trio.Event()
        self.changed.set()
        self.changed = trio.Event()


class Supervisor:
    """Runs the workers for one mcp lifetime.

    Args:
        cfg: the validated configuration.
        conf_path: the file to re-read on SIGHUP (None: built-in defaults).
        config_text: ``config_wire(cfg)``, sent to each worker.
        listeners: bound SMTP listening sockets by ``(address, port)``.
        rpc_sockets: bound RPC listening sockets by worker name.
        accounts: worker accounts when mcp is root, else None.
        syslog: workers log to syslog.
        forkserver: the fork server to start workers with (None: fresh interpreters).
        metrics_listener: the bound ``metrics { listen }`` socket, passed to qmgr; None: off.
        test_listener: the bound ``test_mode { listen }`` socket, passed to qmgr; None: off.
    """

    def __init__(
        self,
        cfg: Config,
        conf_path: Path | None,
        config_text: str,
        listeners: dict[tuple[str, int], socket.socket],
        rpc_sockets: dict[str, socket.socket],
        accounts: dict[str, Account] | None,
        syslog: bool = False,
        forkserver: ForkServer | None = None,
        metrics_listener: socket.socket | None = None,
        test_listener: socket.socket | None = None,
        lifeline: tuple[int, int] | None = None,
        prestarted: dict[str, Launched] | None = None,
        early_signals: list[int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics_listener = metrics_listener
        #: test mode's control API socket (qmgr answers it); kept across reloads.
        self.test_listener = test_listener
        self.started_wall = time.time()
        self._status_error: str | None = None
        self.forkserver = forkserver
        self.conf_path = conf_path
        self.config_text = config_text
        self.listeners = listeners
        self.rpc_sockets = rpc_sockets
        self.accounts = accounts
        self.syslog = syslog
        self.restart_limit, self.restart_window_s = restart_limit_from_env()
        backoff_max_s = backoff_max_from_env()
        self.states = {
            name: WorkerState(
                name,
                policy=RestartPolicy(
                    max_s=backoff_max_s, loop_deaths=self.restart_limit, loop_window_s=self.restart_window_s
                ),
            )
            for name in WORKER_NAMES
        }
        #: Old smtps processes finishing their sessions after a handover.
        self.draining: set[Child] = set()
        self.stopping = False
        self.failure: tuple[int, str] | None = None
        self.shutdown_requested = trio.Event()
        self.announced_ready = False
        self._reload_lock = trio.Lock()
        # The lifeline: workers hold the read end; when mcp dies for any reason the kernel closes
        # the write end and every worker sees EOF. Nobody ever writes to it.
        self._lifeline_r, self._lifeline_w = lifeline if lifeline is not None else os.pipe()
        #: Workers mcp started before trio ran (meta1py.mcp.main): adopted by their first spawn.
        self._prestarted = dict(prestarted or {})
        #: SIGTERM, SIGINT or SIGHUP received before trio ran: acted on as soon as it does.
        self._early_signals = early_signals if early_signals is not None else []
        self._nursery: trio.Nursery | None = None

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> int:
        """Start the workers, supervise until told to stop, stop them; return mcp's exit status."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._watch_signals)
            for name in WORKER_NAMES:
                if self.shutdown_requested.is_set() and name not in self._prestarted:
                    continue  # told to stop while starting: only adopt (and stop) what runs
                # start(), not start_soon(): each worker is spawned or adopted before we go on,
                # so a stop that comes now finds it.
                await nursery.start(self._supervise, self.states[name])
            await self.shutdown_requested.wait()
            await self._stop_all()
            nursery.cancel_scope.cancel()
        os.close(self._lifeline_r)
        os.close(self._lifeline_w)
        if self.failure is not None:
            code, reason = self.failure
            log.critical("stopped after a hard failure: %s", reason)
            notify(f"STATUS=failed: {reason}")
            return code
        log.info("stopped")
        return 0

    def _spawn(self, name: str) -> Child:
        launched = self._prestarted.pop(name, None)
        if launched is not None:
            child = Child.adopt(launched)
        else:
            account = self.accounts.get(name) if self.accounts else None
            child = spawn_worker(
                name,
                self.config_text,
                worker_fds(
                    name,
                    self.cfg,
                    self.listeners,
                    self.rpc_sockets,
                    self.metrics_listener,
                    self.test_listener,
                ),
                self._lifeline_r,
                user=account.user if account else None,
                group=account.group if account else None,
                syslog=self.syslog,
                forkserver=self.forkserver,
            )
        if name == "smtps":
            # Mirrors smtps.service.drain_limit_s (process packages never import each other).
            child.drain_limit_s = max((s.session_timeout for s in self.cfg.smtps), default=0.0)
        return child

    async def _supervise(
        self, state: WorkerState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Spawn (or adopt) the worker, report started, then watch and restart it."""
        name = state.name
        started = False
        while not self.stopping:
            try:
                child = self._spawn(name)
            except OSError as exc:
                self._hard_fail(EX_CRASH, f"cannot start {name}: {exc}")
                break
            state.set_child(child)
            log.info("started %s (pid %d)", name, child.pid)
            self.write_status()
            if not started:
                started = True
                task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._await_ready, child)
                handed_over = await _wait_exit_or(child, state.handover)
                nursery.cancel_scope.cancel()
            if handed_over:
                self._start_draining(child)
                continue
            child.close()
            self.write_status()
            if self.stopping:
                return
            status = child.returncode
            what = describe_status(status)
            if child.planned:
                log.info("%s (pid %d) %s; restarting as planned", name, child.pid, what)
                continue
            now = trio.current_time()
            ran_s = now - child.started_at
            if status in HARD_FAILURE_STATUSES:
                assert status is not None
                self._hard_fail(status, f"{name} (pid {child.pid}) {what}: not restarting it")
                return
            decision = state.policy.on_death(now, ran_s)
            state.restarts += 1
            if decision.crash_loop_started:
                log.critical(
                    "%s is in a crash loop: died %d times within %gs (last: pid %d %s); "
                    "restarting it every %gs until it stays up",
                    name,
                    decision.recent_deaths,
                    self.restart_window_s,
                    child.pid,
                    what,
                    decision.delay_s,
                )
            log.error(
                "%s (pid %d) %s after %.1fs; restarting in %.2fs",
                name,
                child.pid,
                what,
                ran_s,
                decision.delay_s,
            )
            notify(f"STATUS={name} {what}; restarting in {decision.delay_s:g}s")
            self.write_status()
            section = process_config(self.cfg, name)
            for dependent in getattr(section, "restart_dependencies", ()):
                self._restart_soon(dependent, reason=f"it depends on {name}")
            await trio.sleep(decision.delay_s)
        if not started:
            task_status.started()

    async def _await_ready(self, child: Child) -> None:
        with trio.move_on_after(READY_TIMEOUT_S):
            if await child.read_ready():
                log.info("%s (pid %d) is ready", child.name, child.pid)
                self.write_status()
                self._maybe_announce_ready()
            return
        log.error("%s (pid %d) not ready after %gs: killing it", child.name, child.pid, READY_TIMEOUT_S)
        child.send_signal(signal.SIGKILL)

    def _all_ready(self) -> bool:
        return all(
            s.child is not None and s.child.ready.is_set() and not s.child.exited.is_set()
            for s in self.states.values()
        )

    def _maybe_announce_ready(self) -> None:
        if self.stopping or not self._all_ready():
            return
        pids = " ".join(f"{s.name}={s.child.pid}" for s in self.states.values() if s.child)
        if not self.announced_ready:
            self.announced_ready = True
            log.info("all workers ready: %s", pids)
            notify("READY=1", f"STATUS=running: {pids}", f"MAINPID={os.getpid()}")
        else:
            notify(f"STATUS=running: {pids}")

    def _hard_fail(self, code: int, reason: str) -> None:
        if self.failure is None:
            self.failure = (code, reason)
            log.critical("hard failure: %s; stopping", reason)
        self.shutdown_requested.set()

    # -- stopping and restarting ---------------------------------------------------------------

    async def _terminate(self, child: Child) -> None:
        """SIGTERM ``child``, SIGKILL it after ``STOP_TIMEOUT_S``, and wait until it is reaped."""
        if child.exited.is_set():
            return
        child.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT_S):
            await child.exited.wait()
            return
        log.warning("%s (pid %d) ignored SIGTERM for %gs: killing it", child.name, child.pid, STOP_TIMEOUT_S)
        child.send_signal(signal.SIGKILL)
        await child.exited.wait()

    def _start_draining(self, child: Child) -> None:
        """Retire ``child`` (a ready smtps): from now on it only finishes its sessions."""
        child.planned = True
        self.draining.add(child)
        child.send_signal(DRAIN_SIGNAL)
        log.info("%s (pid %d) is draining: it finishes its open sessions, then exits", child.name, child.pid)
        assert self._nursery is not None
        self._nursery.start_soon(self._reap_draining, child)

    async def _reap_draining(self, child: Child) -> None:
        async with trio.open_nursery() as nursery:

            async def backstop() -> None:
                await trio.sleep(child.drain_limit_s + DRAIN_BACKSTOP_S)
                log.warning(
                    "%s (pid %d) still draining after %gs: stopping it",
                    child.name,
                    child.pid,
                    child.drain_limit_s + DRAIN_BACKSTOP_S,
                )
                await self._terminate(child)

            nursery.start_soon(backstop)
            await child.wait()
            nursery.cancel_scope.cancel()
        child.close()
        self.draining.discard(child)
        status = child.returncode
        level = logging.INFO if status == 0 or self.stopping else logging.WARNING
        log.log(level, "draining %s (pid %d) %s", child.name, child.pid, describe_status(status))

    def _restart_soon(self, name: str, reason: str) -> None:
        state = self.states.get(name)
        child = state.child if state else None
        if child is None or child.exited.is_set() or self._nursery is None:
            return
        log.info("restarting %s (pid %d): %s", name, child.pid, reason)
        child.planned = True
        self._nursery.start_soon(self._terminate, child)

    async def _stop_all(self) -> None:
        self.stopping = True
        notify("STOPPING=1", "STATUS=stopping")
        log.info("stopping workers")
        for name in reversed(WORKER_NAMES):
            active = self.states[name].child
            children = [active] if active is not None else []
            if name == "smtps":
                # Draining smtps processes stop with the active one: their sessions get 421 too.
                children += sorted(self.draining, key=lambda c: c.pid)
            async with trio.open_nursery() as nursery:
                for child in children:
                    if not child.exited.is_set():
                        child.planned = True
                        nursery.start_soon(self._terminate_and_log, child)

    async def _terminate_and_log(self, child: Child) -> None:
        await self._terminate(child)
        log.info("%s (pid %d) %s", child.name, child.pid, describe_status(child.returncode))

    async def _restart_and_wait(self, name: str) -> None:
        """Restart one worker (planned) and wait until its successor is ready or gone."""
        state = self.states[name]
        old = state.child
        if old is None or old.exited.is_set():
            return  # waiting in backoff: the next start uses the new config anyway
        old.planned = True
        await self._terminate(old)
        await self._wait_successor(state, old)

    async def _hand_over(self, name: str) -> None:
        """Start a new ``name`` (smtps) at once and let the old one drain; wait for the new one.

        A child that is not ready yet serves nobody: it is simply restarted.
        """
        state = self.states[name]
        old = state.child
        if old is None or old.exited.is_set():
            return  # waiting in backoff: the next start uses the new config anyway
        if not old.ready.is_set():
            await self._restart_and_wait(name)
            return
        log.info("handing %s over: pid %d drains, a new %s takes new connections", name, old.pid, name)
        state.handover.set()
        await self._wait_successor(state, old)

    async def _wait_successor(self, state: WorkerState, old: Child) -> None:
        """Wait until a successor of ``old`` is ready or gone (bounded)."""
        with trio.move_on_after(READY_TIMEOUT_S + STOP_TIMEOUT_S):
            while (state.child is old or state.child is None) and not self.stopping:
                await state.changed.wait()
            new = state.child
            if new is None or new is old:
                return
            async with trio.open_nursery() as nursery:

                async def cancel_when_exited() -> None:
                    await new.exited.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_when_exited)
                await new.ready.wait()
                nursery.cancel_scope.cancel()

    # -- signals and reload --------------------------------------------------------------------

    async def _watch_signals(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            # Signals that came while mcp started the workers, before trio ran (meta1py.mcp.main).
            for signum in self._early_signals:
                self._on_signal(signum)
            self._early_signals.clear()
            async for signum in signals:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if self._nursery is not None and not self.stopping:
                self._nursery.start_soon(self._reload)
            return
        if self.shutdown_requested.is_set():
            log.info("%s: already stopping", name)
            return
        log.info("%s: shutting down", name)
        self.shutdown_requested.set()

    async def _reload(self) -> None:
        async with self._reload_lock:
            if self.stopping:
                return
            await self._reload_locked()
            self.write_status()

    async def _reload_locked(self) -> None:
        from meta1py.conf import ConfigErrors, check_accounts, check_files, config_wire, load_config
        from meta1py.conf.accounts import check_tls_support

        source = self.conf_path or "the built-in defaults"
        log.info("SIGHUP: reloading %s", source)
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")
        try:
            new = load_config(self.conf_path)
            # Test mode and its socket stay as they started (--test-mode is not in the file).
            new = dataclasses.replace(new, test_mode=self.cfg.test_mode)
            problems = check_files(new) + check_tls_support(new)
            if self.accounts is not None:
                problems += check_accounts(new)
            if problems:
                raise ConfigErrors(problems)
        except ConfigErrors as exc:
            log.error("reload failed, keeping the running configuration:\n%s", exc)
            notify("READY=1", "STATUS=reload failed; running the previous configuration")
            return
        except OSError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            notify("READY=1", "STATUS=reload failed; running the previous configuration")
            return
        if (new.queue_directory, new.run_directory) != (self.cfg.queue_directory, self.cfg.run_directory):
            log.error("reload failed: changing queue_directory or run_directory needs a restart of mcp")
            notify("READY=1", "STATUS=reload refused; running the previous configuration")
            return
        try:
            accounts = resolve_accounts(new) if self.accounts is not None else None
            prepare_directories(new, accounts)
            added = self._bind_new_listeners(new)
            try:
                metrics_changed, new_metrics = self._bind_new_metrics(new)
            except StartupError:
                for sock in added.values():
                    sock.close()
                raise
        except StartupError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            notify("READY=1", "STATUS=reload failed; running the previous configuration")
            return
        wanted = {(ls.address, ls.port) for _section, ls in listen_sockets(new)}
        removed = {key: sock for key, sock in self.listeners.items() if key not in wanted}
        self.listeners.update(added)
        old_metrics = self.metrics_listener
        if metrics_changed:
            # The new qmgr (restarted below) gets the new socket.
            self.metrics_listener = new_metrics
        self.cfg = new
        self.accounts = accounts
        self.config_text = config_wire(new)
        setup_logging("mcp", new.log_level, syslog=self.syslog, log_format=new.log_format)
        for name in WORKER_NAMES:
            if self.stopping:
                return
            if name == "smtps":
                await self._hand_over(name)
            else:
                await self._restart_and_wait(name)
        # The new smtps no longer has the removed sockets; now close mcp's copies.
        for key, sock in removed.items():
            log.info("closed listener %s:%d", *key)
            del self.listeners[key]
            sock.close()
        if metrics_changed and old_metrics is not None:
            log.info("closed the old metrics endpoint")
            old_metrics.close()
        log.info("reload done")
        notify("READY=1", "STATUS=running (reloaded)")

    def _bind_new_metrics(self, new: Config) -> tuple[bool, socket.socket | None]:
        """``(changed, socket)`` for a reload: a new ``metrics { listen }`` is bound here.

        Raises:
            StartupError: the new address cannot be bound.
        """
        if new.metrics.listen == self.cfg.metrics.listen:
            return False, None
        if new.metrics.listen is None:
            return True, None
        sock = bind_listener(*new.metrics.listen)
        log.info("metrics endpoint on %s:%d", *new.metrics.listen)
        return True, sock

    def write_status(self) -> None:
        """Rewrite mcp's status file (meta1py.status); a failure is logged once until it works."""
        workers = []
        for state in self.states.values():
            child = state.child
            running = child is not None and not child.exited.is_set()
            workers.append(
                WorkerStatus(
                    name=state.name,
                    pid=child.pid if running and child is not None else None,
                    started=state.started_wall if running else None,
                    ready=running and child is not None and child.ready.is_set(),
                    starts=state.generation,
                    restarts=state.restarts,
                )
            )
        status = McpStatus(
            pid=os.getpid(),
            started=self.started_wall,
            config=str(self.conf_path or ""),
            updated=time.time(),
            workers=tuple(workers),
            errors=recent_errors(),
        )
        try:
            write_mcp_status(mcp_status_path(self.cfg.run_directory), status)
        except OSError as exc:
            if str(exc) != self._status_error:
                log.warning("cannot write the status file: %s", exc)
            self._status_error = str(exc)
            return
        self._status_error = None

    def _bind_new_listeners(self, new: Config) -> dict[tuple[str, int], socket.socket]:
        added: dict[tuple[str, int], socket.socket] = {}
        try:
            for _section, ls in listen_sockets(new):
                key = (ls.address, ls.port)
                if key not in self.listeners and key not in added:
                    added[key] = bind_listener(ls.address, ls.port)
                    log.info("listening on %s:%d", *key)
        except StartupError:
            for sock in added.values():
                sock.close()
            raise
        return added


async def _wait_exit_or(child: Child, event: trio.Event) -> bool:
    """Wait until ``child`` exits (False) or ``event`` is set first (True; the child runs on)."""
    handed_over = False
    async with trio.open_nursery() as nursery:

        async def on_event() -> None:
            nonlocal handed_over
            await event.wait()
            handed_over = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_event)
        await child.wait()
        nursery.cancel_scope.cancel()
    return handed_over and not child.exited.is_set()
