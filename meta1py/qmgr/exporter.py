"""The metrics endpoint: ``GET /metrics`` over HTTP/1.x on the socket mcp bound for qmgr.

Why here: the endpoint parses network input, so it must not run in mcp (root); qmgr already
holds the numbers that matter most (the queue, every message's fate) and collects the rest
(meta1py.qmgr.stats). mcp binds ``metrics { listen }`` as it binds the SMTP ports (so a port
below 1024 works, the socket outlives qmgr's restarts and a scrape during one waits in the
backlog) and passes it as ``metrics`` in META1_FDS.

Each connection gets one answer and is closed (meta1py.httpget has the rules). Limits: at most
``MAX_CONNECTIONS`` connections at once (more wait in the listen backlog), ``HEAD_TIMEOUT_S`` to
send the request head (408 after it), ``SEND_TIMEOUT_S`` to take the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from meta1py.httpget import (
    MAX_HEAD_BYTES,
    Refusal,
    error_response,
    head_complete,
    parse_head,
    response,
)
from meta1py.metrics import CONTENT_TYPE
from meta1py.qmgr.listening import serve_limited

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8
HEAD_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0
# After the answer, what the client still sends (a body, the rest of an oversized head) is read
# and dropped for a moment before the socket is closed: closing with unread data would reset the
# connection, and the client could lose the answer (RFC 9112 §9.6).
LINGER_S = 1.0
LINGER_BYTES = 65536

Page = Callable[[], Awaitable[str]]


async def serve_metrics(
    listener: trio.SocketListener,
    page: Page,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Answer scrapes on ``listener`` with ``await page()`` until cancelled."""

    async def one(stream: trio.SocketStream) -> None:
        answer = await _answer(stream, page)
        if answer:
            with trio.move_on_after(SEND_TIMEOUT_S):
                await stream.send_all(answer)
                await stream.send_eof()
            await _linger(stream)

    await serve_limited(listener, one, MAX_CONNECTIONS, "metrics", task_status=task_status)


async def _linger(stream: trio.SocketStream) -> None:
    dropped = 0
    with trio.move_on_after(LINGER_S):
        while dropped < LINGER_BYTES:
            data = await stream.receive_some(LINGER_BYTES)
            if not data:
                return
            dropped += len(data)


async def _answer(stream: trio.SocketStream, page: Page) -> bytes:
    """Read the request head and build the answer (b"" when the client left without asking)."""
    buffer = bytearray()
    with trio.move_on_after(HEAD_TIMEOUT_S):
        while not head_complete(buffer) and len(buffer) < MAX_HEAD_BYTES:
            data = await stream.receive_some(MAX_HEAD_BYTES - len(buffer))
            if not data:
                return b""
            buffer += data
    if not head_complete(buffer) and len(buffer) < MAX_HEAD_BYTES:
        return error_response(Refusal(408))
    verdict = parse_head(bytes(buffer))
    if isinstance(verdict, Refusal):
        log.debug("metrics: refused a request with %d", verdict.status)
        return error_response(verdict)
    body = (await page()).encode("utf-8")
    return response(200, body, CONTENT_TYPE, head_only=verdict.head_only)
