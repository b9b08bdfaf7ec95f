"""qmgr's counters and metrics endpoint in the process tier.

The counters are checked as Prometheus reads them: :meth:`QueueStats.metrics_page` is parsed with
``prometheus_client``'s parser. The first tests drive a real :class:`QueueManager` through the
harness of test_qmgr_life (real queue in ``tmp_path``, scripted smar and smtpc over real RPC);
smar and smtpc answer ``WorkerStatsRequest`` from small in-process peers, and smtps's reports
arrive as ``QueueStatsReport`` notifications over a channel pair, as they do in production. The
HTTP tests talk to :func:`serve_metrics` over a real loopback socket with raw bytes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from test_qmgr_life import SmtpcDeliveryReply, SmtpcDeliveryRequest, results, running_qmgr, until

from meta1py.conf import parse_config
from meta1py.conf.model import MetricsConfig
from meta1py.contract import mcp_status_path
from meta1py.metrics import SMTPC_SESSIONS, SMTPC_TLS_SESSIONS, SMTPS_CONNECTIONS, SMTPS_REJECTED, Counters
from meta1py.qmgr.exporter import serve_metrics
from meta1py.qmgr.stats import QueueStats
from meta1py.rpc import RpcChannel, open_channel_pair
from meta1py.rpc.handlers import Handlers
from meta1py.rpc.messages import (
    ErrorRecordValue,
    QueueStatsReport,
    QueueStatusRequest,
    WorkerStatsReply,
    WorkerStatsRequest,
    WorkerStatsValue,
)
from meta1py.status import McpStatus, WorkerStatus, counter_values, write_mcp_status

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> Samples:
    """``{sample name: {sorted labels: value}}``, as Prometheus reads the page."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


@dataclass
class Peer:
    """smar or smtpc answering ``WorkerStatsRequest`` with what the test sets."""

    stats: WorkerStatsValue

    def handlers(self) -> Handlers:
        handlers = Handlers()

        async def answer(_req: WorkerStatsRequest) -> WorkerStatsReply:
            return WorkerStatsReply(stats=self.stats)

        handlers.on(WorkerStatsRequest).answer(answer)
        return handlers


def stats_of(
    process: str, pid: int, counters: Counters | None = None, errors: tuple[ErrorRecordValue, ...] = ()
) -> WorkerStatsValue:
    return WorkerStatsValue(
        process=process, pid=pid, started=1000.0 + pid, counters=counter_values(counters), errors=errors
    )


@asynccontextmanager
async def peers(smar: Peer, smtpc: Peer) -> AsyncIterator[tuple[RpcChannel, RpcChannel]]:
    async with (
        open_channel_pair(None, smar.handlers()) as (to_smar, _a),
        open_channel_pair(None, smtpc.handlers()) as (to_smtpc, _b),
    ):
        yield to_smar, to_smtpc


async def mixed(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
    """smtpc: ok for ok.test, 4xx for slow.test, 5xx for gone.test."""
    domain = request.route.destination.rpartition(":")[2]
    if domain == "slow.test":
        return results(request, "temp", 451, "4.2.1", "mailbox busy, try later")
    if domain == "gone.test":
        return results(request, "perm", 550, "5.1.1", "no such user")
    return results(request, "ok", 250, "2.0.0", "queued as R1")


async def test_the_page_counts_what_happened_to_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtpc_counters = Counters()
    smtpc_counters.inc(SMTPC_SESSIONS, by=3)
    smtpc_counters.inc(SMTPC_TLS_SESSIONS, by=2)
    async with (
        running_qmgr(tmp_path, monkeypatch, mixed) as h,
        peers(Peer(stats_of("smar", 11)), Peer(stats_of("smtpc", 12, smtpc_counters))) as (to_smar, to_smtpc),
    ):
        stats = QueueStats(h.manager.config, to_smar, to_smtpc, h.manager.counters)
        stats.manager = h.manager
        for rcpt in ("a@ok.test", "b@ok.test", "c@slow.test", "d@gone.test"):
            await h.submit((rcpt,))
        await until(lambda: len(h.manager.messages) == 1, "all but the deferred message to be done")
        samples = parse(await stats.metrics_page())
    # Four messages came in; the bounce to d@gone.test's sender is not one of them, but its
    # delivery (to alice@example.org) is a delivery like the two to ok.test.
    assert samples["meta1_messages_received_total"] == {(): 4}
    assert samples["meta1_recipients_delivered_total"] == {(): 3}
    assert samples["meta1_recipients_deferred_total"] == {(): 1}
    assert samples["meta1_recipients_bounced_total"] == {(("status", "bounced"),): 1}
    assert samples["meta1_delivery_failures_total"] == {
        (("destination", "smtp:slow.test"),): 1,
        (("destination", "smtp:gone.test"),): 1,
    }
    assert samples["meta1_delivery_delay_seconds_count"] == {(): 3}
    assert samples["meta1_delivery_delay_seconds_bucket"][(("le", "+Inf"),)] == 3
    assert samples["meta1_queue_messages"] == {
        (("state", "active"),): 0,
        (("state", "deferred"),): 1,
        (("state", "hold"),): 0,
    }
    assert samples["meta1_queue_recipients"][(("state", "deferred"),)] == 1
    # smtpc's own counters, asked for while the page was made.
    assert samples["meta1_smtpc_sessions_total"] == {(): 3}
    assert samples["meta1_smtpc_tls_sessions_total"] == {(): 2}
    # Nothing from smtps yet: its counters exist, at zero.
    assert samples["meta1_smtps_connections_total"] == {(): 0}


async def test_failures_beyond_the_destination_limit_count_as_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
        return results(request, "perm", 550, "5.1.1", "no such user")

    async with (
        running_qmgr(tmp_path, monkeypatch, refuse) as h,
        peers(Peer(stats_of("smar", 11)), Peer(stats_of("smtpc", 12))) as (to_smar, to_smtpc),
    ):
        h.manager.config = dataclasses.replace(h.manager.config, metrics=MetricsConfig(destinations=2))
        stats = QueueStats(h.manager.config, to_smar, to_smtpc, h.manager.counters)
        for n in range(4):
            # From the null sender: no bounce, so only these four deliveries fail.
            await h.submit((f"x@d{n}.test",), sender="")
            await until(lambda: not h.manager.messages, f"the message to d{n}.test to bounce")
        samples = parse(await stats.metrics_page())
    assert samples["meta1_delivery_failures_total"] == {
        (("destination", "smtp:d0.test"),): 1,
        (("destination", "smtp:d1.test"),): 1,
        (("destination", "other"),): 2,
    }


async def test_reports_of_restarted_processes_keep_counting(tmp_path: Path) -> None:
    config = parse_config(f"queue_directory = {tmp_path}; run_directory = {tmp_path};")
    smtpc = Peer(stats_of("smtpc", 12))
    async with (
        peers(Peer(stats_of("smar", 11)), smtpc) as (to_smar, to_smtpc),
    ):
        stats = QueueStats(config, to_smar, to_smtpc, Counters())
        async with open_channel_pair(None, stats.handle) as (to_qmgr, _end):
            smtps = Counters()
            smtps.inc(SMTPS_CONNECTIONS, by=5)
            smtps.inc(SMTPS_REJECTED, "rcpt", "5.7.1")
            await to_qmgr.notify(QueueStatsReport(stats=stats_of("smtps", 21, smtps)))
            smtps.inc(SMTPS_CONNECTIONS, by=2)  # the same process, later: replaces its last report
            await to_qmgr.notify(QueueStatsReport(stats=stats_of("smtps", 21, smtps)))
            # smtps restarted (a new pid, counting from zero), and so did smtpc.
            fresh = Counters()
            fresh.inc(SMTPS_CONNECTIONS)
            await to_qmgr.notify(QueueStatsReport(stats=stats_of("smtps", 22, fresh)))
            sessions = Counters()
            sessions.inc(SMTPC_SESSIONS, by=4)
            smtpc.stats = stats_of("smtpc", 12, sessions)
            assert parse(await stats.metrics_page())["meta1_smtpc_sessions_total"] == {(): 4}
            smtpc.stats = stats_of("smtpc", 13, Counters())
            await until(lambda: len(stats.reports()) == 4, "the reports to arrive", 5)
            status = await to_qmgr.call(QueueStatusRequest(errors=True))
    totals = {(c.name, c.labels): c.value for c in status.counters}
    assert totals[("meta1_smtps_connections_total", ())] == 8
    assert totals[("meta1_smtps_rejected_total", ("rcpt", "5.7.1"))] == 1
    assert totals[("meta1_smtpc_sessions_total", ())] == 4
    assert not status.queue_open and status.queue == ()
    assert {p.process for p in status.processes} == {"qmgr", "smar", "smtpc", "smtps"}
    assert all(p.counters == () for p in status.processes)


async def test_status_carries_every_process_errors(tmp_path: Path) -> None:
    config = parse_config(f"queue_directory = {tmp_path}; run_directory = {tmp_path};")
    broken = ErrorRecordValue(time=5.0, process="smtpc", pid=12, level="error", message="cannot connect")
    async with peers(Peer(stats_of("smar", 11)), Peer(stats_of("smtpc", 12, errors=(broken,)))) as (s, c):
        stats = QueueStats(config, s, c, Counters())
        async with open_channel_pair(None, stats.handle) as (to_qmgr, _end):
            status = await to_qmgr.call(QueueStatusRequest(errors=True))
            quiet = await to_qmgr.call(QueueStatusRequest(errors=False))
    assert [e for p in status.processes for e in p.errors] == [broken]
    assert quiet.processes == ()


async def test_a_peer_that_does_not_answer_leaves_its_counters_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = parse_config(f"queue_directory = {tmp_path}; run_directory = {tmp_path};")

    async def hang(_msg: object) -> None:
        await trio.sleep_forever()

    async with (
        open_channel_pair(None, hang) as (to_smar, _a),
        open_channel_pair(None, Peer(stats_of("smtpc", 12)).handlers()) as (to_smtpc, _b),
    ):
        stats = QueueStats(config, to_smar, to_smtpc, Counters())
        page = parse(await stats.metrics_page())
    assert page["meta1_messages_received_total"] == {(): 0}
    assert {p.process for p in stats.reports()} == {"smtpc"}


async def test_worker_metrics_come_from_mcps_status_file(tmp_path: Path) -> None:
    config = parse_config(f"queue_directory = {tmp_path}; run_directory = {tmp_path};")
    write_mcp_status(
        mcp_status_path(tmp_path),
        McpStatus(
            pid=os.getpid(),
            started=1_700_000_000.0,
            config="",
            updated=1_700_000_100.0,
            workers=(
                WorkerStatus("qmgr", 101, 1_700_000_001.0, True, 1, 0),
                WorkerStatus("smtpc", None, None, False, 4, 3),
            ),
            errors=(),
        ),
    )
    async with peers(Peer(stats_of("smar", 11)), Peer(stats_of("smtpc", 12))) as (s, c):
        page = parse(await QueueStats(config, s, c, Counters()).metrics_page())
    assert page["meta1_worker_up"] == {(("worker", "qmgr"),): 1, (("worker", "smtpc"),): 0}
    assert page["meta1_worker_restarts_total"] == {(("worker", "qmgr"),): 0, (("worker", "smtpc"),): 3}
    assert page["meta1_worker_start_time_seconds"] == {(("worker", "qmgr"),): 1_700_000_001.0}
    assert page["meta1_mcp_start_time_seconds"] == {(): 1_700_000_000.0}


# -- the HTTP endpoint -----------------------------------------------------------------------------

PAGE = "# HELP meta1_x_total x\n# TYPE meta1_x_total counter\nmeta1_x_total 7\n"


async def page() -> str:
    return PAGE


@asynccontextmanager
async def endpoint() -> AsyncIterator[int]:
    """serve_metrics on a loopback port; yields the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_metrics, listeners[0], page)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def exchange(port: int, request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Send ``request``, read until the server closes; return (status line, fields, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if request:
            await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    return status, fields, body


async def test_get_metrics_answers_the_page_and_closes() -> None:
    async with endpoint() as port:
        status, fields, body = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK"
    assert fields[b"content-type"] == b"text/plain; version=0.0.4; charset=utf-8"
    assert fields[b"connection"] == b"close"
    assert int(fields[b"content-length"]) == len(body)
    assert parse(body.decode()) == {"meta1_x_total": {(): 7}}


async def test_head_answers_the_same_head_without_the_page() -> None:
    async with endpoint() as port:
        status, fields, body = await exchange(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK" and body == b""
    assert int(fields[b"content-length"]) == len(PAGE)


@pytest.mark.parametrize(
    ("request_bytes", "status_line"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", b"HTTP/1.1 405 Method Not Allowed"),
        (b"HELLO\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
        (b"GET /metrics HTTP/3.0\r\n\r\n", b"HTTP/1.1 505 HTTP Version Not Supported"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000, b"HTTP/1.1 431 Request Header Fields Too Large"),
    ],
)
async def test_anything_else_gets_an_http_error(request_bytes: bytes, status_line: bytes) -> None:
    async with endpoint() as port:
        status, fields, _body = await exchange(port, request_bytes)
    assert status == status_line
    if status_line.startswith(b"HTTP/1.1 405"):
        assert fields[b"allow"] == b"GET, HEAD"


async def test_a_client_that_says_nothing_gets_408(autojump_clock: trio.testing.MockClock) -> None:
    async with endpoint() as port:
        status, _fields, _body = await exchange(port, b"GET /metrics HTTP/1.1\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"


async def test_a_client_that_leaves_costs_nothing() -> None:
    async with endpoint() as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
        status, _fields, _body = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK"
