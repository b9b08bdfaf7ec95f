"""qmgr's serve(): open the envelope store, recover, serve qmgr.sock, run the scheduler, and
answer the metrics endpoint when mcp passed one."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import trio

from meta1py.conf import Config
from meta1py.contract import TEST_SCRIPTS_NAME, rpc_socket_path, test_directory
from meta1py.metrics import Counters
from meta1py.qmgr.exporter import serve_metrics
from meta1py.qmgr.manager import QueueManager
from meta1py.qmgr.pickup import Pickup
from meta1py.qmgr.showq import serve_showq
from meta1py.qmgr.stats import QueueStats
from meta1py.qmgr.testapi import ControlApi
from meta1py.qmgr.testserver import QmgrControl, serve_testapi, start_scripts
from meta1py.queue.envelopes import EnvelopeStore, envelope_store_path
from meta1py.queue.errors import QueueStorageError
from meta1py.rpc.channel import RpcClient, serve_unix
from meta1py.rpc.errors import RpcRemoteError
from meta1py.rpc.handlers import Handlers
from meta1py.rpc.messages import QueueEnvelopeCommitReply, QueueEnvelopeCommitRequest, SmtpReplyValue
from meta1py.rpc.schema import RpcMessage
from meta1py.smtp.status import TEMP_MAIL_SYSTEM_ERROR, TEMP_MAIL_SYSTEM_FULL
from meta1py.testmode.capture import MESSAGES_DIRNAME, CaptureStore
from meta1py.worker import WorkerFds

log = logging.getLogger(__name__)

# In-flight deliveries get this long to report after SIGTERM before they are cancelled (their
# recipients then stay queued and are tried again after the restart: at-least-once).
_DRAIN_S = 4.0


_OPEN_RETRY_MIN_S = 0.5
_OPEN_RETRY_MAX_S = 15.0


def _refusal(exc: QueueStorageError) -> QueueEnvelopeCommitReply:
    """The answer to a commit while the store cannot even be opened (see :func:`serve`)."""
    full = exc.disk_full
    return QueueEnvelopeCommitReply(
        ok=False,
        reply=SmtpReplyValue(
            code=452 if full else 451,
            enhanced=TEMP_MAIL_SYSTEM_FULL if full else TEMP_MAIL_SYSTEM_ERROR,
            text="Insufficient system storage" if full else "Local error in processing",
        ),
    )


def _open_and_recover(cfg: Config, smar: RpcClient, smtpc: RpcClient, counters: Counters) -> QueueManager:
    """Open the envelope store and load the queue (blocking: run it in a thread)."""
    store = EnvelopeStore(envelope_store_path(cfg.queue_directory))
    try:
        manager = QueueManager(cfg, store, smar, smtpc, counters=counters)
        manager.recover()
    except BaseException:
        store.close()
        raise
    return manager


async def serve(cfg: Config, fds: WorkerFds, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """qmgr's worker entry point (see :func:`meta1py.worker.run_worker`).

    If the envelope store cannot be opened or read at start (a full disk: SQLite must create its
    WAL and shared-memory files), qmgr does not exit, which would only make mcp restart it into
    the same wall: it reports ready, answers every commit with 452 4.3.1 (451 4.3.0 for other
    errors) and every operator command with an error, and opens the store again with backoff
    until it works; then it recovers the queue and serves as usual.
    """
    run_dir = Path(cfg.run_directory)
    smar = RpcClient(rpc_socket_path(run_dir, "smar"), name="qmgr->smar")
    smtpc = RpcClient(rpc_socket_path(run_dir, "smtpc"), name="qmgr->smtpc")
    # The counts outlive a store that has to be opened again; stats answers with or without it.
    counters = Counters()
    stats = QueueStats(cfg, smar, smtpc, counters)
    manager: QueueManager | None = None
    failure: QueueStorageError | None = None
    try:
        manager = await trio.to_thread.run_sync(_open_and_recover, cfg, smar, smtpc, counters)
        stats.manager = manager
    except QueueStorageError as exc:
        failure = exc
        log.error("cannot open the queue (%s): refusing new mail until it can be opened", exc)

    # While the store is closed: commits get a 4xx reply, every other call an error.
    async def refuse_commit(_req: QueueEnvelopeCommitRequest) -> QueueEnvelopeCommitReply:
        assert failure is not None
        return _refusal(failure)

    async def refuse(_msg: RpcMessage) -> None:
        raise RpcRemoteError("tempfail", f"the queue cannot be opened: {failure}")

    closed = Handlers(fallback=refuse)
    closed.on(QueueEnvelopeCommitRequest).answer(refuse_commit)

    status_kinds = stats.handle.kinds

    def handle(msg: RpcMessage) -> Awaitable[RpcMessage | None]:
        if type(msg) in status_kinds:
            return stats.handle(msg)
        return (closed if manager is None else manager.handle)(msg)

    # Commits through the same answer as smtps's calls (4xx while the store is closed).
    pickup = Pickup(cfg, handle, lambda: None if manager is None else manager.bounce_new)

    # Test mode's control API (docs/testmode.md): only when mcp passed its socket.
    testapi: ControlApi | None = None
    if fds.testapi is not None and cfg.test_mode.enable:
        test_dir = test_directory(cfg.queue_directory)
        await trio.to_thread.run_sync(start_scripts, test_dir / TEST_SCRIPTS_NAME, cfg.test_mode.script_file)
        testapi = ControlApi(
            test_dir,
            CaptureStore(test_dir / MESSAGES_DIRNAME),
            QmgrControl(manager, smar) if manager is not None else None,
        )

    async def reopen(nursery: trio.Nursery) -> None:
        nonlocal manager, failure
        delay = _OPEN_RETRY_MIN_S
        while True:
            await trio.sleep(delay)
            try:
                opened = await trio.to_thread.run_sync(_open_and_recover, cfg, smar, smtpc, counters)
            except QueueStorageError as exc:
                failure = exc
                delay = min(delay * 2, _OPEN_RETRY_MAX_S)
                log.debug("still cannot open the queue: %s", exc)
                continue
            manager = stats.manager = opened
            if testapi is not None:
                testapi.qmgr = QmgrControl(opened, smar)
            await nursery.start(opened.run)
            nursery.start_soon(pickup.run)
            log.info("queue opened: accepting mail again")
            return

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(smar.run)
            await nursery.start(smtpc.run)
            if fds.rpc is not None:
                await nursery.start(serve_unix, fds.rpc, handle)
            if fds.metrics is not None:
                await nursery.start(serve_metrics, fds.metrics, stats.metrics_page)
            await nursery.start(serve_showq, cfg)
            if testapi is not None and fds.testapi is not None:
                await nursery.start(serve_testapi, fds.testapi, testapi)
            if manager is not None:
                await nursery.start(manager.run)
                # After the manager: the pickup directory's messages are committed through it.
                nursery.start_soon(pickup.run)
            else:
                nursery.start_soon(reopen, nursery)
            task_status.started()
            await fds.shutdown.wait()
            if manager is not None:
                manager.stop_dispatching()
                with trio.move_on_after(_DRAIN_S):
                    await manager.idle()
                    manager.mark_clean_stop()
            nursery.cancel_scope.cancel()
    finally:
        if manager is not None:
            manager.store.close()
