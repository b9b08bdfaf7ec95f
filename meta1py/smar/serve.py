"""smar's serve(): the router and resolver behind smar.sock."""

from __future__ import annotations

from typing import Any

import trio

from meta1py.conf import Config
from meta1py.maps import MapErrors
from meta1py.rpc.channel import serve_unix
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import Router
from meta1py.smar.service import SmarService
from meta1py.worker import WorkerConfigError, WorkerFds


async def serve(cfg: Config, fds: WorkerFds, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """smar's worker entry point (see :func:`meta1py.worker.run_worker`)."""
    try:
        router = Router(cfg, Resolver.from_config(cfg.smar, cfg.smtpc))
    except MapErrors as exc:
        raise WorkerConfigError(str(exc)) from exc
    service = SmarService(cfg, router)
    async with trio.open_nursery() as nursery:
        if fds.rpc is not None:
            await nursery.start(serve_unix, fds.rpc, service.handle)
        task_status.started()
        await fds.shutdown.wait()
        nursery.cancel_scope.cancel()
