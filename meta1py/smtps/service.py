"""smtps's serve(): accept loops on the listeners mcp passed, one task per session.

Shutdown (SIGTERM from mcp): the accept loops stop at once; sessions waiting for the client's next
command are interrupted and answered ``421 4.3.2``; a session in the middle of committing a message
finishes that first (the worker skeleton cancels whatever is left after its grace period).
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import trio

from meta1py.conf import Config, SmtpsConfig
from meta1py.queue.content import DirectorySyncer
from meta1py.rpc.channel import RpcClient
from meta1py.smtp import replies
from meta1py.smtps.session import Session, SessionLimits, SmtpsContext
from meta1py.worker import WorkerFds, listen_sockets

log = logging.getLogger(__name__)


def _peer_address(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "unknown"
    if isinstance(peer, tuple):
        return str(peer[0])
    return "local"


class SmtpsServer:
    """The sessions of one smtps process."""

    def __init__(self, config: Config, smar: Any, qmgr: Any) -> None:
        self.ctx = SmtpsContext(
            config=config,
            smar=smar,
            qmgr=qmgr,
            syncer=DirectorySyncer(),
            limits=SessionLimits(),
            shutdown=trio.Event(),
        )
        self.sessions: set[Session] = set()
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        self.idle = trio.Event()
        self.idle.set()

    async def serve_listener(
        self,
        listener: trio.SocketListener,
        service: SmtpsConfig,
        sessions: trio.Nursery,
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
            sessions.start_soon(self._run_session, stream, service)

    async def _run_session(self, stream: trio.SocketStream, service: SmtpsConfig) -> None:
        client = _peer_address(stream)
        sid = f"{self._pid:x}.{next(self._ids)}"
        limits = self.ctx.limits
        if self.ctx.shutdown.is_set() or not limits.admit(client, service):
            reply = replies.shutting_down() if self.ctx.shutdown.is_set() else replies.too_many_sessions()
            log.info("session %s from %s refused: %s", sid, client, reply)
            with trio.move_on_after(5):
                try:
                    await stream.send_all(reply.to_bytes())
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            await _close(stream)
            return
        session = Session(self.ctx, service, stream, client, sid)
        self.sessions.add(session)
        self.idle = trio.Event()
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            limits.release(client)
            await _close(stream)
            if not self.sessions:
                self.idle.set()

    def begin_shutdown(self) -> None:
        """Stop sessions at their next wait for input (they answer 421 4.3.2)."""
        self.ctx.shutdown.set()
        for session in list(self.sessions):
            session.interrupt()


async def _close(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, OSError):
            pass


async def serve(cfg: Config, fds: WorkerFds, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """smtps's worker entry point (see :func:`meta1py.worker.run_worker`)."""
    run_dir = Path(cfg.run_directory)
    smar = RpcClient(run_dir / "smar.sock", name="smtps->smar")
    qmgr = RpcClient(run_dir / "qmgr.sock", name="smtps->qmgr")
    server = SmtpsServer(cfg, smar, qmgr)
    sections = listen_sockets(cfg)
    if len(sections) != len(fds.listeners):
        raise RuntimeError(f"mcp passed {len(fds.listeners)} listeners for {len(sections)} listen_sockets")
    async with trio.open_nursery() as nursery:
        await nursery.start(smar.run)
        await nursery.start(qmgr.run)
        async with trio.open_nursery() as sessions:
            async with trio.open_nursery() as accepting:
                for (section, _sock), listener in zip(sections, fds.listeners, strict=True):
                    await accepting.start(server.serve_listener, listener, section, sessions)
                task_status.started()
                await fds.shutdown.wait()
                # Stop accepting at once: new clients wait in the listen backlog (mcp keeps the
                # sockets) for the next smtps instead of being refused.
                accepting.cancel_scope.cancel()
            log.info("shutting down: %d sessions open", len(server.sessions))
            server.begin_shutdown()
            with trio.move_on_after(4.5):
                await server.idle.wait()
            sessions.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
