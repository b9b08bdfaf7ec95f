"""qmgr's serve(): open the envelope store, recover, serve qmgr.sock, run the scheduler."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from meta1py.conf import Config
from meta1py.qmgr.manager import QueueManager
from meta1py.queue.envelopes import EnvelopeStore, envelope_store_path
from meta1py.rpc.channel import RpcClient, serve_unix
from meta1py.worker import WorkerFds

log = logging.getLogger(__name__)

# In-flight deliveries get this long to report after SIGTERM before they are cancelled (their
# recipients then stay queued and are tried again after the restart: at-least-once).
_DRAIN_S = 4.0


async def serve(cfg: Config, fds: WorkerFds, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """qmgr's worker entry point (see :func:`meta1py.worker.run_worker`)."""
    run_dir = Path(cfg.run_directory)
    store = EnvelopeStore(envelope_store_path(cfg.queue_directory))
    smar = RpcClient(run_dir / "smar.sock", name="qmgr->smar")
    smtpc = RpcClient(run_dir / "smtpc.sock", name="qmgr->smtpc")
    manager = QueueManager(cfg, store, smar, smtpc)
    await trio.to_thread.run_sync(manager.recover)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(smar.run)
            await nursery.start(smtpc.run)
            if fds.rpc is not None:
                await nursery.start(serve_unix, fds.rpc, manager.handle)
            await nursery.start(manager.run)
            task_status.started()
            await fds.shutdown.wait()
            manager.stop_dispatching()
            with trio.move_on_after(_DRAIN_S):
                await manager.idle()
            nursery.cancel_scope.cancel()
    finally:
        store.close()
