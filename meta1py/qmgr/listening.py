"""The accept loop of qmgr's HTTP endpoints (the metrics page, test mode's control API)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

log = logging.getLogger(__name__)

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_limited(
    listener: trio.SocketListener,
    handler: Handler,
    max_connections: int,
    what: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept on ``listener`` until cancelled, each connection served by ``handler`` in a task of
    its own; at most ``max_connections`` at once (more wait in the listen backlog). The stream is
    closed after ``handler``; a connection that breaks is logged at debug level."""
    slots = trio.Semaphore(max_connections)

    async def serve(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("%s: connection lost: %s", what, exc)
        finally:
            slots.release()
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: log, breathe, go on (the listener itself is fine).
                slots.release()
                log.warning("%s: accept failed: %s", what, exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(serve, stream)
