"""Handlers behind a real channel: dispatch by type, unknown types, handlers that raise."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest
import trio

from meta1py.rpc import (
    Handlers,
    RpcChannel,
    RpcMessage,
    RpcPeerGoneError,
    RpcRemoteError,
    caps,
    open_channel_pair,
    rpc_message,
)
from meta1py.rpc.messages import RpcPingReply, RpcPingRequest
from meta1py.rpc.schema import RpcRequest

LIMIT_S = 60


@rpc_message
@dataclass(frozen=True, slots=True)
class HandlersSumReply(RpcMessage):
    """The sum of the numbers asked for.

    Sender: test.
    Receiver: test.
    """

    total: int


@rpc_message
@dataclass(frozen=True, slots=True)
class HandlersSumRequest(RpcRequest[HandlersSumReply]):
    """Add these numbers up.

    Sender: test.
    Receiver: test.
    """

    numbers: tuple[int, ...] = field(metadata=caps(max_items=100))


@rpc_message
@dataclass(frozen=True, slots=True)
class HandlersNoteNotify(RpcMessage):
    """A one-way note.

    Sender: test.
    Receiver: test.
    """

    text: str = field(metadata=caps(max_len=100))


async def _ping(req: RpcPingRequest) -> RpcPingReply:
    return RpcPingReply(nonce=req.nonce, pid=0, payload=req.payload, process="handlers")


async def _sum(req: HandlersSumRequest) -> HandlersSumReply:
    return HandlersSumReply(total=sum(req.numbers))


async def test_calls_are_answered_by_the_function_registered_for_their_type() -> None:
    notes: list[str] = []
    got_note = trio.Event()

    async def note(msg: HandlersNoteNotify) -> None:
        notes.append(msg.text)
        got_note.set()

    handlers = Handlers()
    handlers.on(RpcPingRequest).answer(_ping)
    handlers.on(HandlersSumRequest).answer(_sum)
    handlers.on_notification(HandlersNoteNotify, note)
    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, handlers) as (a, _b):
            ping = await a.call(RpcPingRequest(nonce=7, payload="hi"))
            total = await a.call(HandlersSumRequest(numbers=(1, 2, 39)))
            await a.notify(HandlersNoteNotify(text="hello"))
            await got_note.wait()
    assert ping == RpcPingReply(nonce=7, pid=0, payload="hi", process="handlers")
    assert total == HandlersSumReply(total=42)
    assert notes == ["hello"]


async def test_unknown_notification_is_dropped_and_the_channel_goes_on() -> None:
    handlers = Handlers()
    handlers.on(RpcPingRequest).answer(_ping)
    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, handlers) as (a, b):
            await a.notify(HandlersNoteNotify(text="nobody listens"))
            # Frames are handled in order: the call after the note proves the note was handled.
            reply = await a.call(RpcPingRequest(nonce=1, payload=""))
            assert reply.process == "handlers"
            assert not a.closed and not b.closed


async def test_a_call_nobody_serves_is_refused_and_the_channel_goes_on() -> None:
    handlers = Handlers()
    handlers.on(RpcPingRequest).answer(_ping)
    assert handlers.kinds == frozenset({RpcPingRequest})
    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, handlers) as (a, b):
            with pytest.raises(RpcRemoteError) as info:
                await a.call(HandlersSumRequest(numbers=(1,)))
            assert (info.value.code, info.value.message) == (
                "unsupported",
                "HandlersSumRequest is not served here",
            )
            assert (await a.call(RpcPingRequest(nonce=3, payload=""))).nonce == 3
            assert not a.closed and not b.closed


async def test_fallback_answers_unknown_calls_with_an_error() -> None:
    async def refuse(msg: RpcMessage) -> None:
        raise RpcRemoteError("tempfail", f"cannot answer {type(msg).__name__} now")

    handlers = Handlers(fallback=refuse)
    handlers.on(RpcPingRequest).answer(_ping)
    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, handlers) as (a, b):
            with pytest.raises(RpcRemoteError) as info:
                await a.call(HandlersSumRequest(numbers=(1, 2)))
            assert (info.value.code, info.value.message) == (
                "tempfail",
                "cannot answer HandlersSumRequest now",
            )
            # The registered type is still answered.
            assert (await a.call(RpcPingRequest(nonce=2, payload="x"))).nonce == 2
            assert not a.closed and not b.closed


async def test_declared_error_from_a_handler_reaches_the_caller() -> None:
    async def full(_req: HandlersSumRequest) -> HandlersSumReply:
        raise RpcRemoteError("too_big", "too many numbers")

    handlers = Handlers()
    handlers.on(HandlersSumRequest).answer(full)
    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, handlers) as (a, b):
            with pytest.raises(RpcRemoteError) as info:
                await a.call(HandlersSumRequest(numbers=(1,)))
            assert (info.value.code, info.value.message) == ("too_big", "too many numbers")
            assert not a.closed and not b.closed


async def test_bug_in_a_handler_stops_the_serving_channel() -> None:
    async def broken(_req: HandlersSumRequest) -> HandlersSumReply:
        raise ValueError("handler bug")

    handlers = Handlers()
    handlers.on(HandlersSumRequest).answer(broken)
    sock_a, sock_b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a = RpcChannel(trio.SocketStream(sock_a), name="a")
    b = RpcChannel(trio.SocketStream(sock_b), handlers, name="b")
    bugs: list[str] = []

    async def serve_b() -> None:
        try:
            await b.run()
        except* ValueError as group:
            bugs.extend(str(exc) for exc in group.exceptions)

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            nursery.start_soon(serve_b)
            with pytest.raises(RpcPeerGoneError):
                await a.call(HandlersSumRequest(numbers=(1,)))
            a.close()
    assert bugs == ["handler bug"]
