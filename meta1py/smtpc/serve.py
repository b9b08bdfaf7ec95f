"""smtpc's serve(): the delivery agents behind smtpc.sock."""

from __future__ import annotations

from typing import Any

import trio

from meta1py.conf import Config
from meta1py.rpc.channel import serve_unix
from meta1py.smtpc.delivery import DeliveryAgents
from meta1py.smtpc.local import LocalHelper, local_delivery_enabled
from meta1py.worker import WorkerFds

# Deliveries running at SIGTERM get this long to finish and report to qmgr.
_DRAIN_S = 4.0


def prepare(cfg: Config) -> DeliveryAgents:
    """Build the delivery agents before the privilege drop: their TLS contexts load the client
    certificate and key now, so the key file can stay readable by root alone; and, when commands
    or files may be delivered, start the root helper that runs them as their users
    (:mod:`meta1py.smtpc.runas`)."""
    helper = LocalHelper.start(cfg) if local_delivery_enabled(cfg) else None
    return DeliveryAgents(cfg, local_helper=helper)


async def serve(cfg: Config, fds: WorkerFds, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """smtpc's worker entry point (see :func:`meta1py.worker.run_worker`)."""
    agents = fds.prepared if isinstance(fds.prepared, DeliveryAgents) else DeliveryAgents(cfg)
    async with trio.open_nursery() as nursery:
        # Deliveries run here, so that one whose qmgr went away still finishes and is remembered
        # (DeliveryAgents.deliver_once); the shutdown below cancels them after _DRAIN_S.
        agents.nursery = nursery
        nursery.start_soon(agents.serve_cache_expiry)
        if fds.rpc is not None:
            await nursery.start(serve_unix, fds.rpc, agents.handle)
        task_status.started()
        await fds.shutdown.wait()
        with trio.move_on_after(_DRAIN_S):
            await agents.idle()
        nursery.cancel_scope.cancel()
