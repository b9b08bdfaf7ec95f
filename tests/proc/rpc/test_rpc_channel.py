"""RpcChannel in one process: calls, errors, deadlines, peer loss and hostile peers."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from meta1py.rpc import (
    RpcChannel,
    RpcClient,
    RpcMessage,
    RpcPeerGoneError,
    RpcRemoteError,
    RpcTimeoutError,
    connect_unix,
    encode_frame,
    open_channel_pair,
    rpc_message,
    serve_unix,
    unix_listener_from_fd,
)
from meta1py.rpc.messages import RpcErrorReply, RpcPingReply, RpcPingRequest

LIMIT_S = 60


@rpc_message
@dataclass(frozen=True, slots=True)
class ProbeEventNotify(RpcMessage):
    """A notification used by these tests.

    Sender: test.
    Receiver: test.
    """

    text: str


def pong(msg: RpcPingRequest, process: str = "b") -> RpcPingReply:
    return RpcPingReply(nonce=msg.nonce, pid=0, payload=msg.payload, process=process)


async def echo(msg: RpcMessage) -> RpcMessage:
    assert isinstance(msg, RpcPingRequest)
    return pong(msg)


async def test_call_both_directions() -> None:
    async def echo_a(msg: RpcMessage) -> RpcMessage:
        assert isinstance(msg, RpcPingRequest)
        return pong(msg, "a")

    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(echo_a, echo) as (a, b):
            reply = await a.call(RpcPingRequest(nonce=1, payload="hi"))
            assert reply == RpcPingReply(nonce=1, pid=0, payload="hi", process="b")
            reply = await b.call(RpcPingRequest(nonce=2, payload="yo"), timeout=10)
            assert reply.process == "a"


async def test_thousands_of_concurrent_calls() -> None:
    in_handler = 0
    most = 0

    async def slow_echo(msg: RpcMessage) -> RpcMessage:
        nonlocal in_handler, most
        assert isinstance(msg, RpcPingRequest)
        in_handler += 1
        most = max(most, in_handler)
        await trio.sleep(0)
        await trio.sleep(0)
        in_handler -= 1
        return pong(msg)

    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, slow_echo) as (a, _b):
            got: dict[int, int] = {}

            async def one(n: int) -> None:
                reply = await a.call(RpcPingRequest(nonce=n, payload=f"p{n}"), timeout=50)
                assert reply.payload == f"p{n}"
                got[n] = reply.nonce

            async with trio.open_nursery() as nursery:
                for n in range(5000):
                    nursery.start_soon(one, n)
            assert got == {n: n for n in range(5000)}
            assert a.pending_calls == 0
    assert most > 1  # handlers really ran concurrently


async def test_remote_error_and_missing_handler() -> None:
    async def refuse(msg: RpcMessage) -> RpcMessage:
        raise RpcRemoteError("tempfail", "queue is full")

    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, refuse) as (a, b):
            with pytest.raises(RpcRemoteError) as info:
                await a.call(RpcPingRequest(nonce=1, payload=""))
            assert (info.value.code, info.value.message) == ("tempfail", "queue is full")
            with pytest.raises(RpcRemoteError) as info:
                await b.call(RpcPingRequest(nonce=1, payload=""))
            assert info.value.code == "unsupported"
            # The channel survives declared errors.
            assert not a.closed and not b.closed


async def test_timeout_then_channel_still_works(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()

    async def stuck_then_echo(msg: RpcMessage) -> RpcMessage:
        assert isinstance(msg, RpcPingRequest)
        if msg.payload == "stuck":
            await release.wait()
        return pong(msg)

    async with open_channel_pair(None, stuck_then_echo) as (a, _b):
        start = trio.current_time()
        with pytest.raises(RpcTimeoutError):
            await a.call(RpcPingRequest(nonce=1, payload="stuck"), timeout=5)
        assert trio.current_time() - start >= 5
        release.set()  # the late reply arrives and is dropped
        reply = await a.call(RpcPingRequest(nonce=2, payload="ok"), timeout=5)
        assert reply.nonce == 2
        # Default deadline applies when none is given.
        a.default_timeout_s = 7
        release = trio.Event()
        start = trio.current_time()
        with pytest.raises(RpcTimeoutError):
            await a.call(RpcPingRequest(nonce=3, payload="stuck"))
        assert trio.current_time() - start >= 7
        release.set()


async def test_enclosing_cancel_scope_abandons_call() -> None:
    async def never(msg: RpcMessage) -> RpcMessage:
        await trio.sleep_forever()
        raise AssertionError

    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, never) as (a, _b):
            with trio.move_on_after(0.05) as scope:
                await a.call(RpcPingRequest(nonce=1, payload=""), timeout=3600)
            assert scope.cancelled_caught
            assert a.pending_calls == 0


async def test_peer_closing_mid_call_fails_all_pending_at_once() -> None:
    arrived = 0
    b_side: list[RpcChannel] = []

    async def wait_then_close(msg: RpcMessage) -> RpcMessage:
        nonlocal arrived
        arrived += 1
        if arrived == 100:
            b_side[0].close()
        await trio.sleep_forever()
        raise AssertionError

    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, wait_then_close) as (a, b):
            b_side.append(b)
            errors: list[BaseException] = []

            async def one(n: int) -> None:
                try:
                    await a.call(RpcPingRequest(nonce=n, payload=""), timeout=3600)
                except RpcPeerGoneError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for n in range(100):
                    nursery.start_soon(one, n)
            assert len(errors) == 100
            assert a.closed
            with pytest.raises(RpcPeerGoneError):
                await a.call(RpcPingRequest(nonce=1, payload=""))


async def test_notifications() -> None:
    seen: list[str] = []
    got_two = trio.Event()

    async def record(msg: RpcMessage) -> None:
        assert isinstance(msg, ProbeEventNotify)
        seen.append(msg.text)
        if len(seen) == 2:
            got_two.set()

    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, record) as (a, _b):
            await a.notify(ProbeEventNotify("one"))
            await a.notify(ProbeEventNotify("two"))
            await got_two.wait()
            assert seen == ["one", "two"]


async def test_handler_bug_propagates() -> None:
    async def buggy(msg: RpcMessage) -> RpcMessage:
        raise ZeroDivisionError

    with trio.fail_after(LIMIT_S):
        sock_a, sock_b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a = RpcChannel(trio.SocketStream(sock_a))
        b = RpcChannel(trio.SocketStream(sock_b), buggy)
        caught = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(a.run)
                await nursery.start(b.run)
                with pytest.raises(RpcPeerGoneError):
                    await a.call(RpcPingRequest(nonce=1, payload=""), timeout=50)
        except* ZeroDivisionError:
            caught = True
        assert caught


# --- hostile peers ------------------------------------------------------------------------------


@asynccontextmanager
async def raw_peer() -> AsyncIterator[tuple[RpcChannel, trio.SocketStream]]:
    """A running channel whose peer is a raw socket driven by the test."""
    sock_a, sock_b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = RpcChannel(trio.SocketStream(sock_a), echo, max_frame_bytes=4096)
    raw = trio.SocketStream(sock_b)
    async with trio.open_nursery() as nursery:
        await nursery.start(channel.run)
        yield channel, raw
        channel.close()
    await raw.aclose()


def frame_of(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


async def read_until_eof(raw: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await raw.receive_some(65536):
        data += chunk
    return data


HOSTILE = {
    "oversize header": struct.pack(">I", 4097),
    "huge header": b"\xff\xff\xff\xff",
    "not json": struct.pack(">I", 5) + b"hello",
    "empty body": struct.pack(">I", 0),
    "bad utf8": struct.pack(">I", 2) + b"\xc3\x28",
    "unknown type": frame_of({"t": "Evil", "i": 1, "k": "call", "b": {}}),
    "wrong field type": frame_of(
        {"t": "RpcPingRequest", "i": 1, "k": "call", "b": {"nonce": "1", "payload": ""}}
    ),
    "extra field": frame_of(
        {"t": "RpcPingRequest", "i": 1, "k": "call", "b": {"nonce": 1, "payload": "", "x": 1}}
    ),
    "call of a non-request": frame_of(
        {"t": "RpcPingReply", "i": 1, "k": "call", "b": {"nonce": 1, "pid": 1, "payload": "", "process": ""}}
    ),
    "error frame with wrong type": frame_of(
        {"t": "RpcPingRequest", "i": 1, "k": "error", "b": {"nonce": 1, "payload": ""}}
    ),
    "deep nesting": struct.pack(">I", 4000) + b"[" * 4000,
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_frames_close_the_connection(data: bytes) -> None:
    with trio.fail_after(LIMIT_S):
        async with raw_peer() as (channel, raw):
            errors: list[BaseException] = []

            async def pending_call() -> None:
                try:
                    await channel.call(RpcPingRequest(nonce=7, payload=""), timeout=3600)
                except RpcPeerGoneError as exc:
                    errors.append(exc)

            call_frame = encode_frame("call", 1, RpcPingRequest(nonce=7, payload=""))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending_call)
                # The call is on the wire before the hostile bytes go out (a pending call alone
                # does not say that its frame left the channel's write loop).
                sent = b""
                while len(sent) < len(call_frame):
                    chunk = await raw.receive_some(65536)
                    assert chunk, "the channel closed before sending its call"
                    sent += chunk
                await raw.send_all(data)
                sent += await read_until_eof(raw)  # the channel hangs up on us
            assert sent.startswith(call_frame)
            assert errors and "protocol error" in str(errors[0])
            assert channel.closed


async def test_reply_of_wrong_type_closes_the_connection() -> None:
    with trio.fail_after(LIMIT_S):
        async with raw_peer() as (channel, raw):

            async def answer_wrongly() -> None:
                await raw.receive_some(65536)
                await raw.send_all(encode_frame("reply", 1, RpcErrorReply("x", "y")))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_wrongly)
                with pytest.raises(RpcPeerGoneError, match="does not answer"):
                    await channel.call(RpcPingRequest(nonce=1, payload=""), timeout=3600)


async def test_raw_peer_gets_answers_and_unknown_ids_are_ignored() -> None:
    with trio.fail_after(LIMIT_S):
        async with raw_peer() as (channel, raw):
            # A reply nobody asked for is ignored, not fatal.
            stray = encode_frame("reply", 999, RpcPingReply(nonce=1, pid=1, payload="", process=""))
            call = encode_frame("call", 5, RpcPingRequest(nonce=5, payload="x"))
            # Split the call across two writes to exercise reassembly on the channel side.
            await raw.send_all(stray + call[:7])
            await raw.send_all(call[7:])
            data = b""
            while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
                data += await raw.receive_some(65536)
            obj = json.loads(data[4:])
            assert obj == {
                "t": "RpcPingReply",
                "i": 5,
                "k": "reply",
                "b": {"nonce": 5, "pid": 0, "payload": "x", "process": "b"},
            }
            assert not channel.closed


# --- Unix sockets -------------------------------------------------------------------------------


async def test_serve_unix_path_and_inherited_fd(tmp_path: Path) -> None:
    path = tmp_path / "by-path.sock"
    inherited = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inherited.bind(str(tmp_path / "by-fd.sock"))
    inherited.listen()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_unix, path, echo)
            await nursery.start(serve_unix, unix_listener_from_fd(inherited.detach()), echo)
            for where in (path, tmp_path / "by-fd.sock"):
                channels = [await connect_unix(where) for _ in range(3)]
                for n, channel in enumerate(channels):
                    await nursery.start(channel.run)
                    reply = await channel.call(RpcPingRequest(nonce=n, payload=str(where)))
                    assert reply.payload == str(where)
                for channel in channels:
                    channel.close()
            nursery.cancel_scope.cancel()


async def test_client_waits_for_server_within_deadline(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    with trio.fail_after(LIMIT_S):
        client = RpcClient(path, backoff_min_s=0.01, backoff_max_s=0.1)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with pytest.raises(RpcTimeoutError, match="not connected"):
                await client.call(RpcPingRequest(nonce=1, payload=""), timeout=0.2)
            await nursery.start(serve_unix, path, echo)
            reply = await client.call(RpcPingRequest(nonce=2, payload="up"), timeout=50)
            assert reply.payload == "up"
            await client.notify(ProbeEventNotify("fine"), timeout=50)
            nursery.cancel_scope.cancel()


async def test_peer_that_does_not_read_cannot_hold_calls_past_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sock_a, sock_b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = RpcChannel(trio.SocketStream(sock_a))
    outcomes: list[str] = []

    async def one(n: int) -> None:
        try:
            await channel.call(RpcPingRequest(nonce=n, payload="x" * 4000), timeout=5)
        except RpcTimeoutError:
            outcomes.append("timeout")

    async with trio.open_nursery() as nursery:
        await nursery.start(channel.run)
        async with trio.open_nursery() as calls:
            for n in range(600):  # about 2.4 MB: more than the socket buffers and the queue cap
                calls.start_soon(one, n)
        assert outcomes == ["timeout"] * 600
        assert channel.pending_calls == 0
        channel.close()
    sock_b.close()
