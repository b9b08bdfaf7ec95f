"""smtps's counters in the process tier, as they reach qmgr's metrics.

A real :class:`SmtpsServer` accepts on a loopback TCP listener; smar is the real
:class:`SmarService` and qmgr the real :class:`QueueManager` (dispatching stopped) with its
:class:`QueueStats`, both reached over channel pairs as in production. Clients are smtplib-like
raw sockets. What smtps counted travels in a ``QueueStatsReport`` (:class:`StatsReporter`), and
the test reads the numbers where an operator would: in qmgr's answer to ``QueueStatusRequest``
and on the metrics page, parsed with prometheus_client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from meta1py.conf import Config, SmtpsConfig
from meta1py.qmgr.manager import QueueManager
from meta1py.qmgr.stats import QueueStats
from meta1py.queue.envelopes import EnvelopeStore, envelope_store_path
from meta1py.rpc import RpcChannel, open_channel_pair
from meta1py.rpc.handlers import Handlers
from meta1py.rpc.messages import QueueStatusRequest, WorkerStatsReply, WorkerStatsRequest
from meta1py.rpc.schema import RpcMessage
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import Router
from meta1py.smar.service import SmarService
from meta1py.smtps.service import SmtpsServer, StatsReporter
from meta1py.status import worker_stats

pytestmark = pytest.mark.deadline(30)


class NoAgent:
    """smtpc for a qmgr that never dispatches (stop_dispatching): never called."""

    connected = False

    async def call(self, msg: Any, *, timeout: float | None = None) -> Any:
        raise AssertionError(f"qmgr dispatched {msg!r}")


def smtpc_stats() -> Handlers:
    """smtpc's answer to qmgr's ``WorkerStatsRequest``: nothing counted."""
    handlers = Handlers()

    async def answer(_req: WorkerStatsRequest) -> WorkerStatsReply:
        return WorkerStatsReply(stats=worker_stats("smtpc", None))

    handlers.on(WorkerStatsRequest).answer(answer)
    return handlers


@dataclass
class Mta:
    server: SmtpsServer
    stats: QueueStats
    qmgr: RpcChannel
    port: int

    async def report(self) -> None:
        """What smtps's reporter does every second."""
        await StatsReporter(self.qmgr, self.server.ctx.counters).report()

    async def counted(self) -> dict[tuple[str, tuple[str, ...]], int]:
        """Every counter as ``meta1 status`` gets it from qmgr."""
        reply = await self.qmgr.call(QueueStatusRequest(errors=False))
        return {(c.name, c.labels): c.value for c in reply.counters}


@asynccontextmanager
async def mta(tmp_path: Path, **smtps: object) -> AsyncIterator[Mta]:
    service = dataclasses.replace(SmtpsConfig(), **smtps)  # type: ignore[arg-type]
    config = dataclasses.replace(
        Config(), queue_directory=tmp_path, run_directory=tmp_path / "run", smtps=(service,)
    )
    smar = SmarService(config, Router(config, Resolver.from_config(config.smar)))
    store = EnvelopeStore(envelope_store_path(tmp_path))
    try:
        async with (
            open_channel_pair(None, smar.handle) as (to_smar, _a),
            open_channel_pair(None, smtpc_stats()) as (to_smtpc, _c),
        ):
            manager = QueueManager(config, store, to_smar, NoAgent())
            manager.stop_dispatching()
            stats = QueueStats(config, to_smar, to_smtpc, manager.counters)
            stats.manager = manager

            def qmgr_sock(msg: RpcMessage) -> Awaitable[RpcMessage | None]:
                # What qmgr.service serves on qmgr.sock: status calls to stats, the rest to the queue.
                return (stats.handle if type(msg) in stats.handle.kinds else manager.handle)(msg)

            async with open_channel_pair(None, qmgr_sock) as (to_qmgr, _b):
                server = SmtpsServer(config, to_smar, to_qmgr)
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                async with trio.open_nursery() as sessions, trio.open_nursery() as nursery:
                    await nursery.start(server.serve_listener, listeners[0], service, sessions)
                    yield Mta(server, stats, to_qmgr, listeners[0].socket.getsockname()[1])
                    nursery.cancel_scope.cancel()
                    sessions.cancel_scope.cancel()
    finally:
        store.close()


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def reply(self) -> bytes:
        while b"\r\n" not in self.buf or not _last_line_done(self.buf):
            data = await self.stream.receive_some(65536)
            if not data:
                break
            self.buf += data
        reply, self.buf = self.buf, b""
        return reply

    async def command(self, line: bytes) -> bytes:
        await self.stream.send_all(line + b"\r\n")
        return await self.reply()


def _last_line_done(buf: bytes) -> bool:
    lines = buf.split(b"\r\n")[:-1]
    return bool(lines) and lines[-1][3:4] == b" "


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        yield Client(stream)


async def test_connections_refusals_and_messages_reach_qmgr(tmp_path: Path) -> None:
    # 127.0.0.1 may not relay here: RCPT to another domain is refused by smar (554 5.7.1).
    async with mta(tmp_path, relay_clients=(), max_sessions_per_client=1) as m:
        async with connect(m.port) as client:
            assert (await client.reply()).startswith(b"220 ")
            assert (await client.command(b"EHLO client.test")).startswith(b"250")
            assert (await client.command(b"MAIL FROM:<a@client.test>")).startswith(b"250")
            assert (await client.command(b"RCPT TO:<x@elsewhere.test>")).startswith(b"554 5.7.1")
            assert (await client.command(b"RCPT TO:<bob@localhost>")).startswith(b"250")
            assert (await client.command(b"DATA")).startswith(b"354")
            assert (await client.command(b"Subject: hi\r\n\r\nhello\r\n.")).startswith(b"250 2.0.0")
            # A second session from the same client while this one is open: over its limit.
            async with connect(m.port) as second:
                assert (await second.reply()).startswith(b"421 4.7.0")
            await client.command(b"QUIT")
        await m.report()
        counted = await m.counted()
        page = await m.stats.metrics_page()
    assert counted[("meta1_smtps_connections_total", ())] == 2
    assert counted[("meta1_smtps_rejected_total", ("rcpt", "5.7.1"))] == 1
    assert counted[("meta1_smtps_rejected_total", ("connect", "4.7.0"))] == 1
    assert counted[("meta1_messages_received_total", ())] == 1
    assert ("meta1_smtps_tls_sessions_total", ()) not in counted
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }
    assert samples[("meta1_smtps_connections_total", ())] == 2
    assert samples[("meta1_smtps_rejected_total", (("stage", "rcpt"), ("status", "5.7.1")))] == 1
    assert samples[("meta1_queue_messages", (("state", "active"),))] == 1


@dataclass
class Spy:
    """A Notifier that records what it sends on to qmgr."""

    qmgr: RpcChannel
    sent: list[RpcMessage] = dataclasses.field(default_factory=list)

    async def notify(self, msg: RpcMessage, *, timeout: float | None = None) -> None:
        self.sent.append(msg)
        await self.qmgr.notify(msg, timeout=timeout)


async def test_the_reporter_sends_only_when_something_changed(tmp_path: Path) -> None:
    async with mta(tmp_path) as m:
        spy = Spy(m.qmgr)
        reporter = StatsReporter(spy, m.server.ctx.counters)
        await reporter.report()
        await reporter.report()  # nothing new: nothing sent
        assert len(spy.sent) == 1
        async with connect(m.port) as client:
            await client.reply()
            await client.command(b"QUIT")
        await reporter.report()
        assert len(spy.sent) == 2
        with trio.fail_after(5):
            while not any(r.counters for r in m.stats.reports()):
                await trio.sleep(0.01)
    (last,) = m.stats.reports()
    assert last.process == "smtps"
    assert {(c.name, c.value) for c in last.counters} == {("meta1_smtps_connections_total", 1)}
