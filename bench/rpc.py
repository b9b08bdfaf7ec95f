"""Benchmark: RPC round trips per second between two processes over one Unix connection.

Run ``.venv/bin/python bench/rpc.py [--seconds S]``. It starts a server process answering
`RpcPingRequest`, connects to it over a Unix socket, and for several numbers of calls in flight
(1, 10, 100, 1000) measures completed calls per second. The goal: over 30,000 small calls/s with
many in flight on one connection.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from meta1py.rpc import Handlers, RpcChannel, connect_unix, serve_unix
from meta1py.rpc.messages import RpcPingReply, RpcPingRequest


async def _answer(msg: RpcPingRequest) -> RpcPingReply:
    return RpcPingReply(nonce=msg.nonce, pid=os.getpid(), payload=msg.payload, process="bench")


async def _serve(path: str) -> None:
    # Served through Handlers, as the workers serve their sockets.
    handlers = Handlers()
    handlers.on(RpcPingRequest).answer(_answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_unix, path, handlers)
        print("READY", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # EOF on stdin: stop
        nursery.cancel_scope.cancel()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(channel: RpcChannel, in_flight: int, seconds: float) -> tuple[int, float]:
    done = 0
    stop_at = trio.current_time() + seconds
    payload = "x" * 32

    async def worker(base: int) -> None:
        nonlocal done
        n = base
        while trio.current_time() < stop_at:
            reply = await channel.call(RpcPingRequest(nonce=n, payload=payload), timeout=30)
            assert reply.nonce == n
            n += in_flight
            done += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(in_flight):
            nursery.start_soon(worker, i)
    return done, time.perf_counter() - start


async def _client(path: str, seconds: float, levels: list[int], server_pid: int) -> None:
    channel = await connect_unix(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(channel.run)
        await _measure(channel, 10, 0.3)  # warm up
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        for in_flight in levels:
            cpu_client, cpu_server = _cpu_s(os.getpid()), _cpu_s(server_pid)
            done, elapsed = await _measure(channel, in_flight, seconds)
            client_us = (_cpu_s(os.getpid()) - cpu_client) / done * 1e6
            server_us = (_cpu_s(server_pid) - cpu_server) / done * 1e6
            print(
                f"in flight {in_flight:5d}: {done / elapsed:9.0f} calls/s"
                f"  (CPU per call: client {client_us:5.1f} us, server {server_us:5.1f} us)"
            )
        channel.close()


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--levels", default="1,10,100,1000", help="calls in flight, comma-separated")
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(_serve, args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.sock")
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "READY"
            levels = [int(x) for x in args.levels.split(",")]
            trio.run(_client, path, args.seconds, levels, server.pid)
        finally:
            assert server.stdin is not None
            server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


if __name__ == "__main__":
    main()
