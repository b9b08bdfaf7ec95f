"""smar's serve(): the router and resolver behind smar.sock."""

from __future__ import annotations

import logging
from typing import Any

import trio

from meta1py.conf import Config
from meta1py.maps import MapErrors
from meta1py.rpc.channel import serve_unix
from meta1py.smar.resolver import NoDnsBackend, Resolver, ZoneBackend, ZoneFileError
from meta1py.smar.router import Router
from meta1py.smar.service import SmarService
from meta1py.worker import WorkerConfigError, WorkerFds

log = logging.getLogger(__name__)


async def serve(cfg: Config, fds: WorkerFds, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """smar's worker entry point (see :func:`meta1py.worker.run_worker`)."""
    try:
        resolver = Resolver.from_config(cfg.smar, cfg.smtpc, cfg.test_mode)
        router = Router(cfg, resolver)
    except MapErrors as exc:
        raise WorkerConfigError(str(exc)) from exc
    except ZoneFileError as exc:
        # mcp checks the file before it starts the workers; this is a file replaced since.
        raise WorkerConfigError(f"zone_file {exc}") from exc
    backend = resolver.backend
    if isinstance(backend, ZoneBackend):
        log.info(
            "TEST MODE: DNS answers from %s (%d records), no DNS server is asked",
            backend.path,
            backend.zone.records,
        )
    elif isinstance(backend, NoDnsBackend):
        log.info("TEST MODE: no DNS; every domain that is not local routes to its own captured destination")
    service = SmarService(cfg, router)
    async with trio.open_nursery() as nursery:
        if fds.rpc is not None:
            await nursery.start(serve_unix, fds.rpc, service.handle)
        task_status.started()
        await fds.shutdown.wait()
        nursery.cancel_scope.cancel()
