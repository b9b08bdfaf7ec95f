"""smtpc's connection cache: a connection is used by one delivery at a time, whatever the timing.

The expiry task closes idle connections politely (QUIT, then wait for the reply), which takes a
while; deliveries take and return connections meanwhile. A connection taken during that time
must not be put back in the cache by the expiry task (smtpc once crashed with BusyResourceError
when two deliveries read the same socket, and qmgr's requeue then sent some messages twice).
"""

from __future__ import annotations

import time
from pathlib import Path

import trio
import trio.testing

from meta1py.conf import parse_config
from meta1py.rpc.messages import SmarHostValue
from meta1py.smtpc.delivery import DeliveryAgents
from meta1py.tls.requirements import parse_tls_requirements

HOST = SmarHostValue(name="mx.example.net", address="127.0.0.1", port=25)
MAY = parse_tls_requirements("may")


class _Conn:
    """Stands in for a cached SMTP session: its age, and a polite close that the test releases."""

    def __init__(self, name: str, last_used: float) -> None:
        self.name = name
        self.last_used = last_used
        self.closing = trio.Event()
        self.may_finish = trio.Event()
        self.closed = trio.Event()

    async def close(self, polite: bool) -> None:
        self.closing.set()
        await self.may_finish.wait()
        self.closed.set()


async def test_a_connection_taken_while_expiry_closes_another_is_not_cached_again(tmp_path: Path) -> None:
    agents = DeliveryAgents(parse_config(f"queue_directory = {tmp_path};\n"))
    now = time.monotonic()
    idle = _Conn("idle", now - 3600)  # expired
    fresh = _Conn("fresh", now + 3600)  # stays fresh for the whole test
    agents._cache[agents._cache_key(HOST, MAY)] = [fresh, idle]  # type: ignore[list-item]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agents.serve_cache_expiry)
            await idle.closing.wait()  # the expiry task is in the middle of a polite close
            taken = agents._cached(HOST, MAY)
            assert taken is fresh  # a delivery takes the fresh connection meanwhile
            idle.may_finish.set()
            await idle.closed.wait()
            # Let the expiry task finish its pass.
            await trio.testing.wait_all_tasks_blocked()
            assert agents._cached(HOST, MAY) is None, "a connection in use was cached again"
            nursery.cancel_scope.cancel()


async def test_expiry_keeps_fresh_connections_and_closes_idle_ones(tmp_path: Path) -> None:
    agents = DeliveryAgents(parse_config(f"queue_directory = {tmp_path};\n"))
    now = time.monotonic()
    idle, fresh = _Conn("idle", now - 3600), _Conn("fresh", now + 3600)
    idle.may_finish.set()
    agents._cache[agents._cache_key(HOST, MAY)] = [idle, fresh]  # type: ignore[list-item]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agents.serve_cache_expiry)
            await idle.closed.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert not fresh.closing.is_set()
            assert agents._cached(HOST, MAY) is fresh
            assert agents._cached(HOST, MAY) is None
            nursery.cancel_scope.cancel()
