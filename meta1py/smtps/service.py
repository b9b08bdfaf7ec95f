"""smtps's serve(): accept loops on the listeners mcp passed, one task per session.

Shutdown (SIGTERM from mcp): the accept loops stop at once; sessions waiting for the client's next
command are interrupted and answered ``421 4.3.2``; a session in the middle of committing a message
finishes that first (the worker skeleton cancels whatever is left after its grace period).

Drain (DRAIN_SIGNAL from mcp on reload): the accept loops stop and this process closes its copies of
the listeners; a new smtps, started with the new configuration, already accepts on the same
sockets. Every open session goes on normally (no 421) until the client quits or its
``session_timeout`` ends it; then the process exits 0. A SIGTERM while draining is a shutdown.

TLS certificates, keys and password files are loaded once, at start, by :func:`prepare`, which the
worker skeleton runs *before* the privilege drop: the files can stay root:root 0600 and this process
cannot read them again once it serves. A file that cannot be used is a configuration error (exit
78, no restart loop). On SIGHUP mcp hands the listeners to a
new smtps, which loads the files again, while the old one drains with the certificates it has: a
reload never drops a session.

Counters (meta1py.metrics: connections, TLS sessions, refusals) and the recent errors go to qmgr
in a ``QueueStatsReport`` about once a second while they change (:class:`StatsReporter`), and once
more as the process ends; smtps serves no socket, so qmgr cannot ask for them.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import trio

from meta1py.conf import Config, ListenSocket, SmtpsConfig, listen_sockets
from meta1py.contract import rpc_socket_path
from meta1py.metrics import SMTPS_CONNECTIONS, Counters
from meta1py.passwords import PasswordFileError
from meta1py.rpc.caller import Caller, Notifier
from meta1py.rpc.channel import RpcClient
from meta1py.rpc.errors import RpcError
from meta1py.rpc.messages import QueueStatsReport
from meta1py.smtp import replies
from meta1py.smtps.auth import Authenticator, AuthFailureLimiter
from meta1py.smtps.limits import Admission, QueueSpace, SessionLimits, is_trusted
from meta1py.smtps.session import Session, SmtpsContext, count_refusal
from meta1py.smtps.stages import Checks, scripted_checks
from meta1py.status import recent_errors_seq, worker_stats
from meta1py.tls.contexts import ReloadableServerContext, ServerTlsSettings, TlsConfigError, parse_protocols
from meta1py.worker import WorkerConfigError, WorkerFds

log = logging.getLogger(__name__)

#: How often smtps sends its counters to qmgr (when they changed).
STATS_INTERVAL_S = 1.0
_STATS_TIMEOUT_S = 2.0


class StatsReporter:
    """Sends smtps's counters and recent errors to qmgr (``QueueStatsReport``) when they changed."""

    def __init__(self, qmgr: Notifier, counters: Counters) -> None:
        self.qmgr = qmgr
        self.counters = counters
        self._sent: tuple[int, int] | None = None

    async def report(self) -> None:
        """Send a report if anything changed since the last one that was sent."""
        state = (self.counters.version, recent_errors_seq())
        if state == self._sent:
            return
        try:
            report = QueueStatsReport(stats=worker_stats("smtps", self.counters))
            await self.qmgr.notify(report, timeout=_STATS_TIMEOUT_S)
        except RpcError as exc:
            log.debug("cannot report counters to qmgr: %s", exc)
            return
        self._sent = state

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Report every ``STATS_INTERVAL_S`` (a clock, not a wait for anything)."""
        task_status.started()
        while True:
            await trio.sleep(STATS_INTERVAL_S)
            await self.report()


def _peer_address(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "unknown"
    if isinstance(peer, tuple):
        return str(peer[0])
    return "local"


def _where(section: SmtpsConfig) -> str:
    return f"smtps {section.name}" if section.name else "smtps"


def tls_settings(section: SmtpsConfig) -> ServerTlsSettings | None:
    """The ``tls`` section of an smtps section as :class:`ServerTlsSettings` (None: no certificate).

    Raises:
        WorkerConfigError: key without certificate (or the reverse), a bad protocol range, or an
            implicit-TLS listener without a certificate.
    """
    tls = section.tls
    where = _where(section)
    if tls.cert_file is None:
        if tls.key_file is not None:
            raise WorkerConfigError(f"{where}: tls key_file is set but cert_file is not")
        if any(ls.tls == "implicit" for ls in section.listen_socket):
            raise WorkerConfigError(f"{where}: listen_socket with tls = implicit needs tls {{ cert_file }}")
        return None
    if tls.key_file is None:
        raise WorkerConfigError(f"{where}: tls cert_file is set but key_file is not")
    try:
        low, high = parse_protocols(tls.protocols)
    except TlsConfigError as exc:
        raise WorkerConfigError(f"{where}: tls: {exc}") from None
    return ServerTlsSettings(
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        ca_file=tls.ca_file,
        ca_directory=tls.ca_directory,
        crl_file=tls.crl_file,
        min_protocol=low,
        max_protocol=high,
        ciphers=tls.ciphers,
        request_cert=section.requests_client_cert(),
        verify_depth=tls.verify_depth,
    )


@dataclass
class SmtpsSecurity:
    """Per smtps section (keyed by section name): what :func:`prepare` loaded before the drop."""

    tls: dict[str | None, ReloadableServerContext] = field(default_factory=dict)
    authenticators: dict[str | None, Authenticator] = field(default_factory=dict)
    auth_limiters: dict[str | None, AuthFailureLimiter] = field(default_factory=dict)


def prepare(cfg: Config) -> SmtpsSecurity:
    """Load every section's certificates, keys and password files (run before the privilege drop).

    Raises:
        WorkerConfigError: a certificate, key or password file that cannot be used.
    """
    security = SmtpsSecurity()
    for section in cfg.smtps:
        load_section_security(security, section)
    return security


def load_section_security(ctx: SmtpsContext | SmtpsSecurity, section: SmtpsConfig) -> None:
    """Load one section's TLS context and password file into ``ctx`` (at start).

    Raises:
        WorkerConfigError: a certificate, key or password file that cannot be used.
    """
    where = _where(section)
    settings = tls_settings(section)
    if settings is not None:
        try:
            ctx.tls[section.name] = ReloadableServerContext(settings)
        except TlsConfigError as exc:
            raise WorkerConfigError(f"{where}: tls: {exc}") from None
    if section.password_file is not None:
        try:
            ctx.authenticators[section.name] = Authenticator(section.password_file)
        except OSError as exc:
            raise WorkerConfigError(
                f"{where}: password_file: cannot read {exc.filename}: {exc.strerror}"
            ) from None
        except PasswordFileError as exc:
            raise WorkerConfigError(f"{where}: password_file: {exc}") from None
        if settings is None and section.require_tls_for_auth and not section.auth_plaintext_loopback:
            log.warning("%s: password_file is set but AUTH is never offered: no TLS certificate", where)
    ctx.auth_limiters[section.name] = AuthFailureLimiter(
        section.max_auth_failures, section.auth_failure_window
    )


class SmtpsServer:
    """The sessions of one smtps process."""

    def __init__(
        self, config: Config, smar: Caller, qmgr: Caller, security: SmtpsSecurity | None = None
    ) -> None:
        if security is None:
            security = prepare(config)
        self.ctx = SmtpsContext(
            config=config,
            smar=smar,
            qmgr=qmgr,
            limits=SessionLimits(),
            shutdown=trio.Event(),
            tls=security.tls,
            authenticators=security.authenticators,
            auth_limiters=security.auth_limiters,
            space=_queue_space(config),
            # Test mode: the scripted replies for mail coming in (docs/testmode.md).
            added_checks=scripted_checks(config.queue_directory) if config.test_mode.enable else Checks(),
        )
        self.sessions: set[Session] = set()
        # The open sessions of each client address (to find one to evict at the cap).
        self._by_client: dict[str, set[Session]] = {}
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        self.idle = trio.Event()
        self.idle.set()

    async def serve_listener(
        self,
        listener: trio.SocketListener,
        service: SmtpsConfig,
        sessions: trio.Nursery,
        listen_socket: ListenSocket | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled; each session runs as a task of ``sessions``."""
        task_status.started()
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: log, breathe, go on (the listener itself is fine).
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            sessions.start_soon(self._run_session, stream, service, listen_socket, sessions)

    async def _run_session(
        self,
        stream: trio.SocketStream,
        service: SmtpsConfig,
        listen_socket: ListenSocket | None = None,
        sessions: trio.Nursery | None = None,
    ) -> None:
        client = _peer_address(stream)
        sid = f"{self._pid:x}.{next(self._ids)}"
        self.ctx.counters.inc(SMTPS_CONNECTIONS)
        limits = self.ctx.limits
        trusted = is_trusted(client, service)
        refusal: replies.Reply | None = None
        if self.ctx.shutdown.is_set():
            refusal = replies.shutting_down()
            log.info("session %s from %s refused: %s", sid, client, refusal)
        else:
            now = trio.current_time()
            admission = limits.admit(client, service, now, trusted)
            if not admission.admitted and admission.reason in ("total", "reserve"):
                admission = self._make_room(client, service, now, sid) or admission
            if not admission.admitted:
                refusal = (
                    replies.too_many_sessions()
                    if admission.reason == "total"
                    else replies.too_many_sessions_client()
                )
                count_refusal(self.ctx.counters, "connect", refusal)
                if admission.log:
                    # Once per client per minute: a flood must not flood the log too.
                    log.info(
                        "session %s from %s refused (%s limit; further refusals of this client "
                        "within a minute are not logged): %s",
                        sid,
                        client,
                        admission.reason,
                        refusal,
                    )
        if refusal is not None:
            with trio.move_on_after(5):
                try:
                    await stream.send_all(refusal.to_bytes())
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            await _close(stream)
            return
        session = Session(self.ctx, service, stream, client, sid, listen_socket, trusted, background=sessions)
        self.sessions.add(session)
        self._by_client.setdefault(client, set()).add(session)
        self.idle = trio.Event()
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            mine = self._by_client.get(client)
            if mine is not None:
                mine.discard(session)
                if not mine:
                    del self._by_client[client]
            limits.release(client)
            # The session's stream may be a TLS stream wrapping ``stream``: closing it sends
            # close_notify and closes the socket too.
            await _close(session.stream)
            if not self.sessions:
                self.idle.set()

    def _make_room(self, client: str, service: SmtpsConfig, now: float, sid: str) -> Admission | None:
        """At the cap: evict an idle session of the heaviest client for a client with none
        (:meth:`SessionLimits.eviction_victim`); the admission, or None if nobody can make room."""
        limits = self.ctx.limits
        victim = limits.eviction_victim(client, service)
        if victim is None:
            return None
        for other in self._by_client.get(victim, ()):
            if other.evict():
                log.info(
                    "session %s from %s: at the session cap; closing idle session %s of %s "
                    "(%d sessions) to make room",
                    sid,
                    client,
                    other.sid,
                    victim,
                    limits.per_client.get(victim, 0),
                )
                return limits.admit_over_cap(client, service, now)
        return None

    def begin_shutdown(self) -> None:
        """Stop sessions at their next wait for input (they answer 421 4.3.2)."""
        self.ctx.shutdown.set()
        for session in list(self.sessions):
            session.interrupt()


# Descriptors besides the sessions' sockets: listeners, RPC, logs, content files being written.
_FD_MARGIN = 256


def _raise_open_files(cfg: Config) -> None:
    """Raise the soft RLIMIT_NOFILE to what max_sessions needs (up to the hard limit).

    Each session holds a socket and, while it receives a message, a content file. The soft limit
    is often 1024 (systemd's default), which would make accept() fail with EMFILE long before
    max_sessions; the hard limit (524288 under systemd) is usually plenty.
    """
    need = sum(s.max_sessions for s in cfg.smtps) * 2 + _FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.warning(
            "open files limit %d is below what max_sessions needs (%d): raise LimitNOFILE", target, need
        )


def _queue_space(cfg: Config) -> QueueSpace | None:
    """The queue_minfree check on the queue directory (None when queue_minfree is 0)."""
    minfree = cfg.queue_minfree_bytes()
    if not minfree:
        return None
    directory = str(cfg.queue_directory)

    def free_bytes() -> int:
        st = os.statvfs(directory)
        return st.f_bavail * st.f_frsize

    return QueueSpace(minfree, free_bytes)


async def _close(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, OSError):
            pass


# Beyond the longest session_timeout, a draining smtps cancels what is left: every session should
# have ended on its own (the session timer answers 421 4.4.2) by then.
DRAIN_MARGIN_S = 10.0
# After SIGTERM: how long sessions may take to answer 421 and close (the skeleton allows 5s).
SHUTDOWN_WAIT_S = 4.5


def drain_limit_s(cfg: Config) -> float:
    """How long a draining smtps may run: the longest ``session_timeout`` plus a margin."""
    return max((s.session_timeout for s in cfg.smtps), default=0.0) + DRAIN_MARGIN_S


async def _wait_either(first: trio.Event, second: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for event in (first, second):

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


def _shut_down(server: SmtpsServer, sessions: trio.Nursery) -> None:
    log.info("shutting down: %d sessions open", len(server.sessions))
    server.begin_shutdown()
    scope = sessions.cancel_scope
    scope.deadline = min(scope.deadline, trio.current_time() + SHUTDOWN_WAIT_S)


async def _shut_down_when_asked(fds: WorkerFds, server: SmtpsServer, sessions: trio.Nursery) -> None:
    # A draining smtps still obeys SIGTERM (mcp stopping): its sessions get 421 4.3.2 as usual.
    await fds.shutdown.wait()
    _shut_down(server, sessions)


async def serve(cfg: Config, fds: WorkerFds, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """smtps's worker entry point (see :func:`meta1py.worker.run_worker`).

    Runs until ``fds.shutdown`` (stop accepting, answer open sessions 421 4.3.2, return) or
    ``fds.drain`` (stop accepting, close this process's copies of the listeners, let every open
    session end normally within :func:`drain_limit_s`, return).
    """
    _raise_open_files(cfg)
    run_dir = Path(cfg.run_directory)
    smar = RpcClient(rpc_socket_path(run_dir, "smar"), name="smtps->smar")
    qmgr = RpcClient(rpc_socket_path(run_dir, "qmgr"), name="smtps->qmgr")
    security = fds.prepared if isinstance(fds.prepared, SmtpsSecurity) else None
    server = SmtpsServer(cfg, smar, qmgr, security)
    reporter = StatsReporter(qmgr, server.ctx.counters)
    sections = listen_sockets(cfg)
    if len(sections) != len(fds.listeners):
        raise RuntimeError(f"mcp passed {len(fds.listeners)} listeners for {len(sections)} listen_sockets")
    async with trio.open_nursery() as nursery:
        await nursery.start(smar.run)
        await nursery.start(qmgr.run)
        await nursery.start(reporter.run)
        # The sessions nursery ends when its last session does; its deadline bounds that.
        async with trio.open_nursery() as sessions:
            async with trio.open_nursery() as accepting:
                for (section, sock), listener in zip(sections, fds.listeners, strict=True):
                    await accepting.start(server.serve_listener, listener, section, sessions, sock)
                task_status.started()
                await _wait_either(fds.shutdown, fds.drain)
                # Stop accepting at once: new clients wait in the listen backlog (mcp keeps the
                # sockets) for the next smtps instead of being refused.
                accepting.cancel_scope.cancel()
            if fds.shutdown.is_set():
                _shut_down(server, sessions)
            else:
                # Handover on reload: the new smtps accepts on the same sockets; ours are only
                # copies, closed so that this process holds no listener while it drains.
                for listener in fds.listeners:
                    await listener.aclose()
                limit_s = drain_limit_s(cfg)
                log.info(
                    "draining: %d sessions open; exiting when they end (at most %gs)",
                    len(server.sessions),
                    limit_s,
                )
                sessions.cancel_scope.deadline = trio.current_time() + limit_s
                nursery.start_soon(_shut_down_when_asked, fds, server, sessions)
        if sessions.cancel_scope.cancelled_caught and not fds.shutdown.is_set():
            log.warning("drain limit reached: the remaining sessions were cancelled")
        # What the last sessions counted (bounded: qmgr may be gone already).
        with trio.move_on_after(_STATS_TIMEOUT_S):
            await reporter.report()
        nursery.cancel_scope.cancel()
