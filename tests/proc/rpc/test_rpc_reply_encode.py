"""A reply that cannot be encoded fails that one call, not the serving process (issue 16)."""

from __future__ import annotations

import logging

import pytest
import trio

from meta1py.rpc import RpcRemoteError, open_channel_pair
from meta1py.rpc.messages import RpcPingReply, RpcPingRequest
from meta1py.rpc.schema import RpcMessage

LIMIT_S = 30


async def _answer(msg: RpcMessage) -> RpcMessage:
    assert isinstance(msg, RpcPingRequest)
    # "big" answers with a payload over its 4096-character cap: the reply breaks its schema.
    # "dbl..." answers with the payload twice: under its cap, but maybe not under the frame cap.
    payload = "x" * 5000 if msg.payload == "big" else msg.payload
    if payload.startswith("dbl"):
        payload *= 2
    return RpcPingReply(nonce=msg.nonce, pid=1, payload=payload, process="test")


async def test_unencodable_reply_becomes_an_error_reply(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="meta1py.rpc.channel")
    with trio.fail_after(LIMIT_S):
        async with open_channel_pair(None, _answer) as (a, b):
            with pytest.raises(RpcRemoteError) as info:
                await a.call(RpcPingRequest(nonce=1, payload="big"), timeout=5)
            assert info.value.code == "encode"
            assert "RpcPingReply.payload" in info.value.message
            # The serving side is still up: later calls on the same connection are answered.
            reply = await a.call(RpcPingRequest(nonce=2, payload="small"), timeout=5)
            assert reply.payload == "small"
            assert not a.closed and not b.closed
    assert any("cannot be sent" in r.getMessage() for r in caplog.records)


async def test_reply_over_the_frame_cap_becomes_an_error_reply() -> None:
    with trio.fail_after(LIMIT_S):
        # A request of 1500 characters fits a 2 KiB frame; its reply of 3000 does not.
        async with open_channel_pair(None, _answer, max_frame_bytes=2048) as (a, _b):
            with pytest.raises(RpcRemoteError) as info:
                await a.call(RpcPingRequest(nonce=1, payload="dbl" + "y" * 1500), timeout=5)
            assert info.value.code == "encode"
            assert (await a.call(RpcPingRequest(nonce=3, payload="ok"), timeout=5)).payload == "ok"
