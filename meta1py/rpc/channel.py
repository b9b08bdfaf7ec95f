"""RPC over trio streams: many concurrent calls on one connection, deadlines, peer loss.

`RpcChannel` runs one connection: a reader task that decodes frames and dispatches them, a writer
task that sends every queued frame in one ``send_all`` (so a burst of replies costs one system
call), and one task per incoming call or notification. Helpers serve a Unix listening socket
(`serve_unix`), connect to one (`connect_unix`), and keep a client connected across restarts of
the server process (`RpcClient`).

Error semantics, as seen by a caller of `RpcChannel.call`:

* the reply arrives: it is returned (its type was checked against the request's declared reply);
* the handler raised `RpcRemoteError`: the same error (code and message) is raised;
* the deadline passes: `RpcTimeoutError` (a late reply is dropped);
* the connection ends, or the peer breaks the protocol: `RpcPeerGoneError`, for every pending call
  at once.

A peer that sends a malformed, oversize or unknown frame is logged and disconnected; `run` then
returns normally, so a compromised peer cannot crash the receiver. A reply that cannot be encoded
(it breaks its schema or the frame cap) is logged as an error and the caller gets an
`RpcRemoteError` with code ``encode`` instead: one oversized answer must not take down the
worker and every other call in flight. Any other exception in a handler (not `RpcRemoteError`) is
a bug and propagates out of `run`.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import trio

from meta1py.rpc.codec import DEFAULT_MAX_FRAME_BYTES, Frame, FrameDecoder, decode_frame, encode_frame
from meta1py.rpc.errors import (
    RpcEncodeError,
    RpcPeerGoneError,
    RpcProtocolError,
    RpcRemoteError,
    RpcTimeoutError,
)
from meta1py.rpc.messages import RpcErrorReply
from meta1py.rpc.schema import RpcMessage, RpcRequest

log = logging.getLogger(__name__)

R = TypeVar("R", bound=RpcMessage)
Handler = Callable[[RpcMessage], Awaitable[RpcMessage | None]]
"""Answers an incoming message: returns the reply for a call, None for a notification."""

DEFAULT_TIMEOUT_S = 30.0
"""Deadline of a call that does not give its own."""
DEFAULT_MAX_CONCURRENT_CALLS = 10_000
_READ_BYTES = 256 * 1024
_MAX_IDLE_WORKERS = 1024
_DISPATCH_CHUNK = 32
"""Frames decoded from one read before the reader yields to the handlers and the writer."""


class _Pending:
    """One outgoing call waiting for its reply.

    The caller parks itself with `trio.lowlevel.wait_task_rescheduled` rather than waiting on a
    `trio.Event` inside a `move_on_after` scope: per-call cancel scopes and events were a third of
    the cost of a call. Deadlines are kept in one heap per channel and enforced by one task.
    """

    __slots__ = ("deadline", "done", "error", "name", "parked", "response", "result", "task")

    def __init__(self, response: type[RpcMessage], name: str, deadline: float) -> None:
        self.response = response
        self.name = name
        self.deadline = deadline
        self.task = trio.lowlevel.current_task()
        self.parked = False
        self.done = False
        self.result: Any = None
        self.error: Exception | None = None

    def finish(self, result: Any = None, error: Exception | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.result = result
        self.error = error
        if self.parked:
            self.parked = False
            trio.lowlevel.reschedule(self.task)


class RpcChannel:
    """One RPC connection over a trio stream; both ends may call and be called.

    Start it with ``await nursery.start(channel.run)``; it runs until the connection ends.

    Args:
        stream: a connected byte stream (usually a Unix `trio.SocketStream`).
        handler: answers incoming calls and notifications; None refuses calls with an
            ``unsupported`` error and drops notifications.
        max_frame_bytes: cap on a frame body, both directions.
        default_timeout_s: deadline of calls that do not pass ``timeout``.
        max_concurrent_calls: incoming calls handled at once; beyond it the channel stops reading
            until one finishes (backpressure instead of unbounded tasks).
        name: used in log lines (e.g. ``"qmgr"``).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler | None = None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        name: str = "rpc",
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.max_frame_bytes = max_frame_bytes
        self.default_timeout_s = default_timeout_s
        self.max_concurrent_calls = max_concurrent_calls
        self.name = name
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap; entries of finished calls linger
        self._deadline_scope: trio.CancelScope | None = None
        self._inbox: deque[Frame] = deque()
        self._idle_workers: list[trio.lowlevel.Task] = []
        self._next_id = 1
        self._out: list[bytes] = []
        self._out_bytes = 0
        # Senders wait while more than this is queued but not yet handed to the socket.
        self._high_water_bytes = max(4 * max_frame_bytes, 1 << 20)
        self._wakeup = trio.Event()
        self._drained = trio.Event()
        self._slot_free = trio.Event()
        self._handling = 0
        self._closed_reason: str | None = None
        self._cancel_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def closed(self) -> bool:
        """True once the connection has ended (or is ending); calls then fail at once."""
        return self._closed_reason is not None

    @property
    def pending_calls(self) -> int:
        """Outgoing calls waiting for their reply."""
        return len(self._pending)

    async def run(self, *, task_status: trio.TaskStatus[RpcChannel] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the connection until it ends; returns normally when the peer goes away.

        Raises:
            Exception: whatever a handler raised other than `RpcRemoteError` (a bug).
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._cancel_scope = nursery.cancel_scope
                if self._closed_reason is not None:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._deadline_loop)
                task_status.started(self)
                await self._read_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._mark_closed("channel stopped")
            await trio.aclose_forcefully(self.stream)

    def close(self) -> None:
        """Close the connection: pending calls fail with `RpcPeerGoneError`, `run` returns."""
        self._mark_closed("closed locally")
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def call(self, msg: RpcRequest[R], *, timeout: float | None = None) -> R:
        """Send a request and wait for its reply.

        Args:
            msg: a registered request message.
            timeout: deadline in seconds, covering backpressure and the reply; default
                ``default_timeout_s``. An enclosing trio deadline also applies.

        Returns:
            The reply, an instance of the request's declared reply class.

        Raises:
            RpcTimeoutError: no reply before the deadline.
            RpcPeerGoneError: the connection ended before the reply.
            RpcRemoteError: the peer's handler refused the request.
            RpcEncodeError: ``msg`` breaks its schema or the frame cap (a local bug).
        """
        response = type(msg).response
        if response is None:
            raise TypeError(f"{type(msg).__name__} is not a request (it declares no reply)")
        if self._closed_reason is not None:
            raise RpcPeerGoneError(f"{self.name}: {self._closed_reason}")
        request_id = self._next_id
        self._next_id += 1
        frame = encode_frame("call", request_id, msg, self.max_frame_bytes)
        deadline = trio.current_time() + (self.default_timeout_s if timeout is None else timeout)
        pending = _Pending(response, type(msg).__name__, deadline)
        self._pending[request_id] = pending
        self._add_deadline(deadline, request_id)
        try:
            await self._send(frame, pending)
            if not pending.done:
                pending.parked = True
                await trio.lowlevel.wait_task_rescheduled(self._abort_fn(pending))
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        result: R = pending.result
        return result

    @staticmethod
    def _abort_fn(pending: _Pending) -> Callable[[Any], trio.lowlevel.Abort]:
        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            # An enclosing cancel scope fired: the call is abandoned, a late reply is dropped.
            pending.parked = False
            pending.done = True
            return trio.lowlevel.Abort.SUCCEEDED

        return abort

    def _add_deadline(self, deadline: float, request_id: int) -> None:
        heap = self._deadlines
        if len(heap) > 2 * len(self._pending) + 1024:
            # Most entries belong to calls that already finished: rebuild from the live ones so
            # the heap stays proportional to the calls in flight.
            heap[:] = [(p.deadline, rid) for rid, p in self._pending.items()]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, request_id))
        scope = self._deadline_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def _deadline_loop(self) -> None:
        heap = self._deadlines
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, request_id = heapq.heappop(heap)
                pending = self._pending.get(request_id)
                if pending is not None:
                    pending.finish(error=RpcTimeoutError(f"{self.name}: no reply to {pending.name} in time"))
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._deadline_scope = scope
                await trio.sleep_forever()

    async def notify(self, msg: RpcMessage, *, timeout: float | None = None) -> None:
        """Send a message that expects no reply.

        Raises:
            RpcTimeoutError: backpressure held the message past the deadline.
            RpcPeerGoneError: the connection has ended.
            RpcEncodeError: ``msg`` breaks its schema or the frame cap.
        """
        frame = encode_frame("notify", 0, msg, self.max_frame_bytes)
        with trio.move_on_after(self.default_timeout_s if timeout is None else timeout):
            await self._send(frame)
            return
        raise RpcTimeoutError(f"{self.name}: could not send {type(msg).__name__} in time")

    # --- internals ------------------------------------------------------------------------------

    def _mark_closed(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        log.debug("%s: connection closed: %s", self.name, reason)
        for pending in list(self._pending.values()):
            pending.finish(error=RpcPeerGoneError(f"{self.name}: {reason}"))
        # Wake everyone who waits on the connection so they notice it is gone.
        self._drained.set()
        self._wakeup.set()
        self._slot_free.set()

    async def _send(self, frame: bytes, pending: _Pending | None = None) -> None:
        while self._out_bytes > self._high_water_bytes and self._closed_reason is None:
            # The peer is not reading fast enough: wait for the writer to drain the queue.
            if pending is None:
                await self._drained.wait()
                continue
            with trio.move_on_at(pending.deadline) as scope:
                await self._drained.wait()
            if scope.cancelled_caught or pending.done:
                pending.finish(error=RpcTimeoutError(f"{self.name}: {pending.name} not sent in time"))
                return
        if self._closed_reason is not None:
            raise RpcPeerGoneError(f"{self.name}: {self._closed_reason}")
        self._out.append(frame)
        self._out_bytes += len(frame)
        self._wakeup.set()

    async def _write_loop(self) -> None:
        try:
            while self._closed_reason is None:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                batch = self._out
                self._out = []
                self._out_bytes = 0
                drained = self._drained
                self._drained = trio.Event()
                drained.set()
                if batch and self._closed_reason is None:
                    await self.stream.send_all(batch[0] if len(batch) == 1 else b"".join(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._mark_closed(f"connection lost while sending: {exc!r}")
            if self._cancel_scope is not None:
                self._cancel_scope.cancel()

    async def _read_loop(self) -> None:
        decoder = FrameDecoder(self.max_frame_bytes)
        while self._closed_reason is None:
            try:
                data = await self.stream.receive_some(_READ_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._mark_closed(f"connection lost: {exc!r}")
                return
            if not data:
                self._mark_closed("peer closed the connection")
                return
            try:
                decoder.feed(data)
                dispatched = 0
                for body in decoder:
                    self._dispatch(decode_frame(body))
                    dispatched += 1
                    if dispatched % _DISPATCH_CHUNK == 0:
                        # Let the handlers and the writer run before decoding the rest, so the
                        # first answers of a burst go out while this side is still decoding and
                        # the peer works in parallel instead of waiting for the whole batch.
                        await trio.lowlevel.checkpoint()
                        if self._closed_reason is not None:
                            return
            except RpcProtocolError as exc:
                log.warning("%s: protocol error from peer, closing the connection: %s", self.name, exc)
                self._mark_closed(f"protocol error: {exc}")
                return
            while self._handling >= self.max_concurrent_calls and self._closed_reason is None:
                self._slot_free = trio.Event()
                await self._slot_free.wait()

    def _dispatch(self, frame: Frame) -> None:
        msg = frame.message
        kind = frame.kind
        if kind == "reply" or kind == "error":
            pending = self._pending.get(frame.request_id)
            if kind == "error" and type(msg) is not RpcErrorReply:
                raise RpcProtocolError(f"error frame carries {type(msg).__name__}")
            if pending is None or pending.done:
                # Most likely the call timed out and the reply came late; harmless.
                log.debug("%s: reply to unknown request id %d dropped", self.name, frame.request_id)
                return
            if kind == "error":
                assert isinstance(msg, RpcErrorReply)
                pending.finish(error=RpcRemoteError(msg.code, msg.message))
            elif type(msg) is not pending.response:
                raise RpcProtocolError(
                    f"reply {type(msg).__name__} does not answer the request"
                    f" (expected {pending.response.__name__})"
                )
            else:
                pending.finish(result=msg)
            return
        if kind == "call" and type(msg).response is None:
            raise RpcProtocolError(f"{type(msg).__name__} is not a request")
        # Each incoming message is handled in its own task. Spawning a trio task per call cost
        # as much as the rest of the call, so finished tasks park and are reused for later ones.
        self._handling += 1
        self._inbox.append(frame)
        if self._idle_workers:
            trio.lowlevel.reschedule(self._idle_workers.pop())
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._work_loop)

    async def _work_loop(self) -> None:
        task = trio.lowlevel.current_task()
        inbox = self._inbox
        idle = self._idle_workers

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            while inbox:
                await self._handle(inbox.popleft())
            if len(idle) >= _MAX_IDLE_WORKERS:
                return
            idle.append(task)
            await trio.lowlevel.wait_task_rescheduled(abort)

    async def _handle(self, frame: Frame) -> None:
        msg = frame.message
        try:
            if frame.kind == "notify":
                if self.handler is None:
                    log.debug("%s: notification %s dropped (no handler)", self.name, type(msg).__name__)
                elif await self.handler(msg) is not None:
                    raise TypeError(f"handler answered notification {type(msg).__name__}")
                return
            if self.handler is None:
                reply: RpcMessage | None = RpcErrorReply("unsupported", "this peer accepts no calls")
                kind = "error"
            else:
                try:
                    reply = await self.handler(msg)
                    kind = "reply"
                except RpcRemoteError as exc:
                    reply = RpcErrorReply(exc.code[:64], exc.message[:1024])
                    kind = "error"
                if kind == "reply" and type(reply) is not type(msg).response:
                    raise TypeError(f"handler answered {type(msg).__name__} with {type(reply).__name__}")
            assert reply is not None
            try:
                data = encode_frame(kind, frame.request_id, reply, self.max_frame_bytes)  # type: ignore[arg-type]
            except RpcEncodeError as exc:
                # A reply that breaks its schema or the frame cap is a bug, but usually one that
                # input from outside triggers (a DNS answer with 300 MX records, a huge batch).
                # Killing the worker would fail every other call in flight, and the same input
                # would kill it again after the restart: answer this one call with an error (the
                # caller sees RpcRemoteError and defers) and keep serving the others.
                log.error("%s: reply to %s cannot be sent: %s", self.name, type(msg).__name__, exc)
                data = encode_frame(
                    "error",
                    frame.request_id,
                    RpcErrorReply("encode", f"reply could not be encoded: {exc}"[:1024]),
                    self.max_frame_bytes,
                )
            try:
                await self._send(data)
            except RpcPeerGoneError:
                pass  # the caller is gone; there is nobody to answer
        finally:
            self._handling -= 1
            self._slot_free.set()


# --- Unix sockets ---------------------------------------------------------------------------------

Listener = str | os.PathLike[str] | trio.SocketListener | trio.socket.SocketType


def unix_listener_from_fd(fd: int) -> trio.SocketListener:
    """Wrap an inherited, bound and listening Unix stream socket descriptor (takes ownership)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
    return trio.SocketListener(sock)


async def _open_listener(where: Listener) -> trio.SocketListener:
    if isinstance(where, trio.SocketListener):
        return where
    if isinstance(where, trio.socket.SocketType):
        return trio.SocketListener(where)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(where))
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def serve_unix(
    listener: Listener,
    handler: Handler | None,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    name: str = "rpc",
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept connections on a Unix listening socket and run a channel for each.

    Args:
        listener: a path to bind (must not exist), a listening trio socket, or a
            `trio.SocketListener` (e.g. from `unix_listener_from_fd`).
        handler: answers the calls and notifications of every connection.
        max_frame_bytes: frame cap of each channel.
        name: used in log lines.
    """
    listeners = [await _open_listener(listener)]

    async def serve_connection(stream: trio.SocketStream) -> None:
        channel = RpcChannel(stream, handler, max_frame_bytes=max_frame_bytes, name=name)
        await channel.run()

    await trio.serve_listeners(serve_connection, listeners, task_status=task_status)
    raise AssertionError("serve_listeners returned")  # pragma: no cover


async def connect_unix(
    path: str | os.PathLike[str],
    handler: Handler | None = None,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    default_timeout_s: float = DEFAULT_TIMEOUT_S,
    name: str = "rpc",
) -> RpcChannel:
    """Connect to a Unix socket; start the result with ``await nursery.start(channel.run)``.

    Raises:
        OSError: the connection failed.
    """
    stream = await trio.open_unix_socket(os.fspath(path))
    return RpcChannel(
        stream,
        handler,
        max_frame_bytes=max_frame_bytes,
        default_timeout_s=default_timeout_s,
        name=name,
    )


class RpcClient:
    """A client that stays connected to a Unix socket across restarts of the server.

    Workers restart independently; this reconnects with exponential backoff, and a call made
    while disconnected waits for the connection, within its deadline. A call in flight when the
    connection drops fails with `RpcPeerGoneError` (it is not retried: it may have been done).

    Start it with ``await nursery.start(client.run)``; `run` does not wait for the first
    connection.

    Args:
        path: the server's socket.
        handler: answers calls the server makes on the connection.
        max_frame_bytes: frame cap.
        default_timeout_s: deadline of calls that do not pass ``timeout``.
        backoff_min_s: first reconnection delay; doubles up to ``backoff_max_s``.
        backoff_max_s: longest reconnection delay.
        name: used in log lines.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: Handler | None = None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_min_s: float = 0.02,
        backoff_max_s: float = 2.0,
        name: str = "rpc",
    ) -> None:
        self.path = path
        self.handler = handler
        self.max_frame_bytes = max_frame_bytes
        self.default_timeout_s = default_timeout_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.name = name
        self.connections = 0
        """How many times a connection was established (for tests and diagnostics)."""
        self._channel: RpcChannel | None = None
        self._changed = trio.Event()

    @property
    def connected(self) -> bool:
        """True while a live connection exists."""
        return self._channel is not None and not self._channel.closed

    def _set_channel(self, channel: RpcChannel | None) -> None:
        self._channel = channel
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[RpcClient] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Keep a connection open forever (until cancelled)."""
        task_status.started(self)
        delay = self.backoff_min_s
        while True:
            try:
                channel = await connect_unix(
                    self.path,
                    self.handler,
                    max_frame_bytes=self.max_frame_bytes,
                    default_timeout_s=self.default_timeout_s,
                    name=self.name,
                )
            except OSError as exc:
                log.debug("%s: cannot connect to %s: %s", self.name, self.path, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            self.connections += 1
            started = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(channel.run)
                    self._set_channel(channel)
            finally:
                self._set_channel(None)
            log.info("%s: connection to %s lost", self.name, self.path)
            # A connection that lived a while resets the backoff; one that dies at once (a server
            # crashing on start) keeps growing it.
            if trio.current_time() - started > 1.0:
                delay = self.backoff_min_s
            else:
                await trio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)

    async def _channel_within(self, deadline: float, what: str) -> RpcChannel:
        channel = self._channel
        if channel is not None and not channel.closed:
            return channel  # connected: no cancel scope (the call checkpoints anyway)
        with trio.move_on_at(deadline):
            while (channel := self._channel) is None or channel.closed:
                await self._changed.wait()
            return channel
        raise RpcTimeoutError(f"{self.name}: not connected to {self.path} in time for {what}")

    async def call(self, msg: RpcRequest[R], *, timeout: float | None = None) -> R:
        """Like `RpcChannel.call`; waits for a connection within the same deadline."""
        deadline = trio.current_time() + (self.default_timeout_s if timeout is None else timeout)
        channel = await self._channel_within(deadline, type(msg).__name__)
        return await channel.call(msg, timeout=max(0.0, deadline - trio.current_time()))

    async def notify(self, msg: RpcMessage, *, timeout: float | None = None) -> None:
        """Like `RpcChannel.notify`; waits for a connection within the deadline."""
        deadline = trio.current_time() + (self.default_timeout_s if timeout is None else timeout)
        channel = await self._channel_within(deadline, type(msg).__name__)
        await channel.notify(msg, timeout=max(0.0, deadline - trio.current_time()))


@asynccontextmanager
async def open_channel_pair(
    handler_a: Handler | None = None,
    handler_b: Handler | None = None,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> AsyncIterator[tuple[RpcChannel, RpcChannel]]:
    """Two running channels connected by a real Unix socketpair (for tests and in-process peers).

    Yields:
        ``(a, b)``: calls on ``a`` are answered by ``handler_b`` and vice versa.
    """
    sock_a, sock_b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a = RpcChannel(trio.SocketStream(sock_a), handler_a, max_frame_bytes=max_frame_bytes, name="a")
    b = RpcChannel(trio.SocketStream(sock_b), handler_b, max_frame_bytes=max_frame_bytes, name="b")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        yield a, b
        a.close()
        b.close()
