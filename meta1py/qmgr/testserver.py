"""Test mode's control API over HTTP/1.1 (h11 on trio), and its link to the queue manager.

mcp binds ``test_mode { listen }`` and passes it to qmgr as ``testapi`` in META1_FDS (as the
metrics socket). Each connection is served by an ``h11.Connection``: keep-alive, bodies
(Content-Length or chunked) up to :data:`meta1py.qmgr.testapi.MAX_BODY_BYTES` (413 above it),
``Expect: 100-continue``. Limits: at most :data:`MAX_CONNECTIONS` connections at once (more
wait in the listen backlog), :data:`HEAD_TIMEOUT_S` for a request head and its body (408),
:data:`IDLE_TIMEOUT_S` between requests, :data:`SEND_TIMEOUT_S` to take an answer. A request
that h11 refuses gets the status it suggests (400, 431, 505) and the connection is closed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, NoReturn

import h11
import trio

from meta1py import clock
from meta1py.qmgr import testclock
from meta1py.qmgr.listening import serve_limited
from meta1py.qmgr.manager import QueueManager
from meta1py.qmgr.testapi import MAX_BODY_BYTES, ControlApi, Request, Response, write_script
from meta1py.rpc.caller import Caller
from meta1py.rpc.errors import RpcError
from meta1py.rpc.messages import QueueControlRequest, SmarClockRequest
from meta1py.testmode import scripts

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
HEAD_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
SEND_TIMEOUT_S = 10.0
#: The longest a handler may run (a clock advance through many timers; a wait is at most 60 s).
HANDLER_TIMEOUT_S = 600.0
_MAX_HEAD_BYTES = 16 * 1024
_SMAR_CLOCK_TIMEOUT_S = 10.0
_RESET_SETTLE_S = 10.0


class QmgrControl:
    """The :class:`meta1py.qmgr.testapi.Qmgr` of the daemon: the manager and smar's client."""

    def __init__(self, manager: QueueManager, smar: Caller) -> None:
        self.manager = manager
        self.smar = smar

    def queue(self) -> list[dict[str, Any]]:
        out = []
        for qid in sorted(self.manager.messages):
            msg = self.manager.messages[qid]
            out.append(
                {
                    "qid": qid,
                    "from": msg.env.sender,
                    "kind": msg.env.kind,
                    "hold": msg.env.hold,
                    "arrival_time": msg.env.arrival_time,
                    "recipients": [
                        {
                            "address": r.address,
                            "status": r.status,
                            "attempts": r.attempts,
                            "next_attempt": None if r.is_final else r.next_attempt,
                            "last_reply": r.last_reply,
                        }
                        for r in sorted(msg.rcpts.values(), key=lambda r: r.idx)
                    ],
                }
            )
        return out

    async def tell_smar(self, offset: float) -> None:
        try:
            await self.smar.call(SmarClockRequest(offset=offset), timeout=_SMAR_CLOCK_TIMEOUT_S)
        except RpcError as exc:
            # Greylisting then runs on the real clock; the rest of the advance is still right.
            log.warning("test mode: cannot move smar's clock: %s", exc)

    async def advance(self, seconds: float) -> testclock.Advanced:
        return await testclock.advance(self.manager, seconds, self.tell_smar)

    async def delete_all(self) -> int:
        reply = await self.manager.handle(
            QueueControlRequest(action="delete", qids=(), to_domain=None, all_deferred=False)
        )
        assert reply is not None
        # Deliveries that were running report into deleted messages: wait for them to end, so
        # that no capture arrives after the reset.
        with trio.move_on_after(_RESET_SETTLE_S):
            await self.manager.settle()
        self.manager.scheduler.revive()
        return int(getattr(reply, "count", 0))

    async def reset_clock(self) -> None:
        clock.set_offset(0.0)
        await self.tell_smar(0.0)
        self.manager.wake()


def start_scripts(path: Path, script_file: str | os.PathLike[str] | None) -> None:
    """At qmgr's start in test mode: the active rules are ``test_mode { script_file }``'s (or
    none). A script file that is not valid is logged and taken as no rules."""
    rules: tuple[scripts.Rule, ...] = ()
    if script_file:
        try:
            with open(script_file, "rb") as f:
                rules = scripts.loads(f.read())
        except (OSError, scripts.ScriptError) as exc:
            log.error("test mode: script_file %s not loaded: %s", script_file, exc)
    write_script(path, rules)


async def serve_testapi(
    listener: trio.SocketListener,
    api: ControlApi,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Answer the control API on ``listener`` until cancelled."""

    async def one(stream: trio.SocketStream) -> None:
        await _Connection(stream, api).run()

    await serve_limited(listener, one, MAX_CONNECTIONS, "test API", task_status=task_status)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Connection:
    def __init__(self, stream: trio.SocketStream, api: ControlApi) -> None:
        self.stream = stream
        self.api = api
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)

    async def run(self) -> None:
        while True:
            try:
                request = await self._read_request()
            except _Refused as exc:
                await self._refuse(exc.status, exc.message)
                return
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, f"bad request: {exc}")
                return
            if request is None:
                return
            started = time.monotonic()
            with trio.move_on_after(HANDLER_TIMEOUT_S) as scope:
                response = await self.api.handle(request)
            if scope.cancelled_caught:
                response = Response.error(503, "the request took too long")
            log.debug(
                "test API: %s %s -> %d (%.3fs)",
                request.method,
                request.path,
                response.status,
                time.monotonic() - started,
            )
            await self._send(response, head_only=request.method == "HEAD")
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                return
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return  # the client has not finished sending its request (a body we refused)

    async def _next_event(self, timeout_s: float) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(timeout_s) as scope:
                data = await self.stream.receive_some(65536)
            if scope.cancelled_caught:
                raise _Refused(408, "request timeout")
            self.conn.receive_data(data)

    async def _read_request(self) -> Request | None:
        try:
            event = await self._next_event(IDLE_TIMEOUT_S)
        except _Refused:
            return None  # an idle keep-alive connection: just close it
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _Refused(400, "expected a request")
        length = next((v for k, v in event.headers if k == b"content-length"), None)
        if length is not None and int(length) > MAX_BODY_BYTES:
            raise _Refused(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        if self.conn.client_is_waiting_for_100_continue:
            await self.stream.send_all(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        with trio.move_on_after(HEAD_TIMEOUT_S) as scope:
            while True:
                part = await self._next_event(HEAD_TIMEOUT_S)
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > MAX_BODY_BYTES:
                        raise _Refused(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
                elif isinstance(part, h11.EndOfMessage):
                    break
                elif isinstance(part, h11.ConnectionClosed):
                    return None
        if scope.cancelled_caught:
            raise _Refused(408, "request timeout")
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("ascii", "replace")
        return Request.from_target(method, target, bytes(body))

    async def _send(self, response: Response, *, head_only: bool = False) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        if response.content_type.startswith("text/html"):
            headers.append(
                (
                    "Content-Security-Policy",
                    "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'",
                )
            )
        if response.allow:
            headers.append(("Allow", ", ".join(response.allow)))
        data = self.conn.send(h11.Response(status_code=response.status, headers=headers))
        if not head_only:
            data += self.conn.send(h11.Data(data=response.body))
        data += self.conn.send(h11.EndOfMessage())
        with trio.move_on_after(SEND_TIMEOUT_S) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("the client did not take the answer")

    async def _refuse(self, status: int, message: str) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = Response.error(status, message)
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Connection", "close"),
        ]
        try:
            data = self.conn.send(h11.Response(status_code=status, headers=headers))
            data += self.conn.send(h11.Data(data=response.body))
            data += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        with trio.move_on_after(SEND_TIMEOUT_S):
            await self.stream.send_all(data)
