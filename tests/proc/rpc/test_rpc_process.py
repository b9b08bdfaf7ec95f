"""RPC between two real processes over a real Unix socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from meta1py.rpc import RpcClient, RpcPeerGoneError, RpcRemoteError, connect_unix
from meta1py.rpc.messages import RpcPingRequest

PEER = Path(__file__).with_name("rpc_peer.py")
LIMIT_S = 60


@asynccontextmanager
async def peer_process(path: Path) -> AsyncIterator[trio.Process]:
    """Start rpc_peer.py, wait for READY, and stop it by pid afterwards."""
    proc = await trio.lowlevel.open_process([sys.executable, str(PEER), str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        seen = b""
        while b"READY\n" not in seen:
            chunk = await proc.stdout.receive_some(100)
            assert chunk, f"peer exited before READY: {proc.poll()}"
            seen += chunk
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await proc.wait()


async def test_many_calls_and_errors_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "peer.sock"
    with trio.fail_after(LIMIT_S):
        async with peer_process(path) as proc:
            channel = await connect_unix(path)
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                results: dict[int, int] = {}

                async def one(n: int) -> None:
                    reply = await channel.call(RpcPingRequest(nonce=n, payload=str(n)), timeout=50)
                    assert reply.payload == str(n)
                    results[n] = reply.pid

                async with trio.open_nursery() as calls:
                    for n in range(2000):
                        calls.start_soon(one, n)
                assert sorted(results) == list(range(2000))
                assert set(results.values()) == {proc.pid}

                with pytest.raises(RpcRemoteError) as info:
                    await channel.call(RpcPingRequest(nonce=1, payload="error"), timeout=50)
                assert info.value.code == "tempfail"
                channel.close()


async def test_peer_process_dying_mid_call_fails_pending_calls(tmp_path: Path) -> None:
    path = tmp_path / "peer.sock"
    with trio.fail_after(LIMIT_S):
        async with peer_process(path) as proc:
            channel = await connect_unix(path)
            async with trio.open_nursery() as nursery:
                await nursery.start(channel.run)
                failures: list[BaseException] = []

                async def hang(n: int) -> None:
                    # The deadline is far beyond the test's limit: only peer loss can end it.
                    try:
                        await channel.call(RpcPingRequest(nonce=n, payload="hang"), timeout=3600)
                    except RpcPeerGoneError as exc:
                        failures.append(exc)

                async with trio.open_nursery() as calls:
                    for n in range(50):
                        calls.start_soon(hang, n)
                    while channel.pending_calls < 50:
                        await trio.sleep(0.01)
                    with pytest.raises(RpcPeerGoneError):
                        await channel.call(RpcPingRequest(nonce=99, payload="exit"), timeout=3600)
                assert len(failures) == 50
                assert await proc.wait() == 3
            with pytest.raises(RpcPeerGoneError):
                await channel.call(RpcPingRequest(nonce=1, payload="late"), timeout=5)


async def test_client_reconnects_after_peer_restart(tmp_path: Path) -> None:
    path = tmp_path / "peer.sock"
    with trio.fail_after(LIMIT_S):
        client = RpcClient(path, backoff_min_s=0.01, backoff_max_s=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            async with peer_process(path) as first:
                reply = await client.call(RpcPingRequest(nonce=1, payload="a"), timeout=30)
                assert reply.pid == first.pid
                os.kill(first.pid, signal.SIGKILL)
                await first.wait()
            while client.connected:
                await trio.sleep(0.01)
            path.unlink()  # the dead peer left its socket file behind

            async def call_while_down() -> int:
                # Made while no peer runs: it waits for the connection within its deadline.
                reply = await client.call(RpcPingRequest(nonce=2, payload="b"), timeout=50)
                return reply.pid

            result: list[int] = []

            async def record() -> None:
                result.append(await call_while_down())

            async with trio.open_nursery() as waiting:
                waiting.start_soon(record)
                async with peer_process(path) as second:
                    while not result:
                        await trio.sleep(0.01)
                    assert result == [second.pid]
            assert client.connections == 2
            nursery.cancel_scope.cancel()
