"""A peer process for the RPC process tests: serves RpcPingRequest on a Unix socket.

Usage: ``python rpc_peer.py PATH``. Prints ``READY`` once listening. The payload steers it:
``error`` answers with RpcRemoteError, ``hang`` never answers, ``exit`` ends the process at once
(without answering), anything else is echoed.
"""

from __future__ import annotations

import os
import sys

import trio

from meta1py.rpc import RpcRemoteError, serve_unix
from meta1py.rpc.messages import RpcPingReply, RpcPingRequest
from meta1py.rpc.schema import RpcMessage


async def answer(msg: RpcMessage) -> RpcMessage:
    assert isinstance(msg, RpcPingRequest)
    if msg.payload == "error":
        raise RpcRemoteError("tempfail", "asked to fail")
    if msg.payload == "hang":
        await trio.sleep_forever()
    if msg.payload == "exit":
        os._exit(3)
    return RpcPingReply(nonce=msg.nonce, pid=os.getpid(), payload=msg.payload, process="peer")


async def main(path: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_unix, path, answer)
        print("READY", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
