"""qmgr's view of the whole MTA: every process's counters and recent errors, the queue by state.

qmgr is where the numbers meet: it counts what happens to messages itself, smtps sends its
counters about once a second (``QueueStatsReport``; smtps serves no socket to be asked on), and
smar and smtpc are asked when the numbers are wanted (``WorkerStatsRequest``): when the metrics
endpoint is scraped (:meth:`QueueStats.metrics_page`) or the CLI asks for status
(``QueueStatusRequest``, ``meta1 status`` and ``meta1 monitor``). mcp's status file gives the
workers' pids, start times and restarts (meta1py.status).

Every process reports its counters since it started. qmgr keeps the last report of each process
(keyed by name, pid and start time) and adds them up: a worker that died and was restarted keeps
what it had reported (its last report stays in the sum), so a restart of smtps or smtpc does not
make a sum go down; what it counted after its last report is lost. A restart of qmgr starts every
sum again (Prometheus sees a counter reset), except what the running smtps reports again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Literal

import trio

from meta1py.conf import Config
from meta1py.contract import mcp_status_path
from meta1py.metrics import (
    CATALOGUE,
    MCP_START_TIME,
    QMGR_DELIVERY_DELAY,
    QMGR_QUEUE_MESSAGES,
    QMGR_QUEUE_RECIPIENTS,
    WORKER_RESTARTS,
    WORKER_START_TIME,
    WORKER_UP,
    Counters,
    Exposition,
    Key,
    counter_samples,
)
from meta1py.qmgr.manager import QueueManager
from meta1py.queue.envelopes import FINAL_STATUSES
from meta1py.rpc.caller import Caller
from meta1py.rpc.errors import RpcError
from meta1py.rpc.handlers import Handlers
from meta1py.rpc.messages import (
    CounterValue,
    QueueStateValue,
    QueueStatsReport,
    QueueStatusReply,
    QueueStatusRequest,
    WorkerStatsRequest,
    WorkerStatsValue,
)
from meta1py.status import McpStatus, read_mcp_status, worker_stats

log = logging.getLogger(__name__)

#: How long qmgr waits for smar's and smtpc's counters before it answers without them.
PULL_TIMEOUT_S = 2.0
#: Process reports kept; beyond it the least recently updated is folded into the sums.
MAX_REPORTS = 64
QueueState = Literal["active", "deferred", "hold"]
QUEUE_STATES: tuple[QueueState, ...] = ("active", "deferred", "hold")

_Instance = tuple[str, int, float]  # (process, pid, started)


class QueueStats:
    """Collects the counters of every process; answers status calls and renders /metrics.

    Args:
        cfg: the configuration (the run directory, for mcp's status file).
        smar, smtpc: the peers asked for their counters.
        counters: qmgr's own counters (the ones `QueueManager` increments).
    """

    def __init__(self, cfg: Config, smar: Caller, smtpc: Caller, counters: Counters) -> None:
        self.cfg = cfg
        self.smar = smar
        self.smtpc = smtpc
        self.counters = counters
        #: The queue, once its store is open (qmgr.service sets it).
        self.manager: QueueManager | None = None
        self._reports: dict[_Instance, tuple[float, WorkerStatsValue]] = {}
        self._folded: dict[Key, int] = {}
        self.handle = Handlers()
        """The answers to ``QueueStatsReport`` and ``QueueStatusRequest`` on qmgr.sock."""
        self.handle.on_notification(QueueStatsReport, self._report)
        self.handle.on(QueueStatusRequest).answer(self._status)

    # -- collecting ---------------------------------------------------------------------------

    def record(self, stats: WorkerStatsValue) -> None:
        """Keep ``stats`` as the latest report of its process."""
        key = (stats.process, stats.pid, stats.started)
        self._reports.pop(key, None)  # re-inserted last: the dict is ordered by last update
        self._reports[key] = (time.monotonic(), stats)
        while len(self._reports) > MAX_REPORTS:
            oldest = next(iter(self._reports))
            _when, folded = self._reports.pop(oldest)
            for c in folded.counters:
                k = (c.name, c.labels)
                self._folded[k] = self._folded.get(k, 0) + c.value

    def reports(self) -> list[WorkerStatsValue]:
        """The last report of each process qmgr remembers, least recently updated first."""
        return [stats for _when, stats in self._reports.values()]

    async def _report(self, msg: QueueStatsReport) -> None:
        self.record(msg.stats)

    async def refresh(self) -> None:
        """Ask smar and smtpc for their counters (at once, each within ``PULL_TIMEOUT_S``)."""

        async def pull(name: str, peer: Caller) -> None:
            try:
                reply = await peer.call(WorkerStatsRequest(), timeout=PULL_TIMEOUT_S)
            except RpcError as exc:
                log.debug("no counters from %s: %s", name, exc)
                return
            self.record(reply.stats)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pull, "smar", self.smar)
            nursery.start_soon(pull, "smtpc", self.smtpc)

    def totals(self) -> dict[Key, int]:
        """Every counter summed over qmgr's own, the processes' last reports and folded ones."""
        sums = dict(self._folded)
        for _when, stats in self._reports.values():
            for c in stats.counters:
                k = (c.name, c.labels)
                sums[k] = sums.get(k, 0) + c.value
        for k, value in self.counters.items():
            sums[k] = sums.get(k, 0) + value
        return sums

    def queue_summary(self) -> tuple[QueueStateValue, ...] | None:
        """Messages and pending recipients per state; None while the store is not open.

        A message is ``hold`` when held, ``deferred`` when one of its pending recipients waits
        for a retry, else ``active`` (as ``meta1 queue list`` shows it).
        """
        manager = self.manager
        if manager is None:
            return None
        messages: dict[QueueState, int] = dict.fromkeys(QUEUE_STATES, 0)
        recipients: dict[QueueState, int] = dict.fromkeys(QUEUE_STATES, 0)
        # One pass over every recipient in memory: a status lookup each, nothing allocated
        # (docs/qmgr.md has the cost: this runs once per scrape and per `meta1 monitor` line).
        for msg in manager.messages.values():
            if msg.deleted:
                continue
            pending = 0
            deferred = False
            for r in msg.rcpts.values():
                status = r.status
                if status not in FINAL_STATUSES:
                    pending += 1
                    if status == "deferred":
                        deferred = True
            state: QueueState = "hold" if msg.env.hold else "deferred" if deferred else "active"
            messages[state] += 1
            recipients[state] += pending
        return tuple(
            QueueStateValue(state=state, messages=messages[state], recipients=recipients[state])
            for state in QUEUE_STATES
        )

    def mcp_status(self) -> McpStatus | None:
        """mcp's status file, None when it is missing or unreadable (said at debug level)."""
        try:
            return read_mcp_status(mcp_status_path(self.cfg.run_directory))
        except (OSError, ValueError) as exc:
            log.debug("cannot read mcp's status file: %s", exc)
            return None

    # -- answering ----------------------------------------------------------------------------

    async def _status(self, req: QueueStatusRequest) -> QueueStatusReply:
        await self.refresh()
        processes: list[WorkerStatsValue] = []
        if req.errors:
            reports = [worker_stats("qmgr", None), *self.reports()]
            processes = [
                WorkerStatsValue(
                    process=p.process, pid=p.pid, started=p.started, counters=(), errors=p.errors
                )
                for p in reports
            ]
        manager = self.manager
        summary = self.queue_summary() if req.by_state else None
        return QueueStatusReply(
            queue_open=manager is not None,
            messages=len(manager.messages) if manager is not None else 0,
            queue=summary or (),
            counters=tuple(
                CounterValue(name=name, labels=labels, value=value)
                for (name, labels), value in sorted(self.totals().items())
            ),
            processes=tuple(processes),
        )

    async def metrics_page(self) -> str:
        """The page at ``/metrics``: every metric of meta1py.metrics.CATALOGUE, in its order."""
        await self.refresh()
        totals = list(self.totals().items())
        summary = self.queue_summary()
        mcp = self.mcp_status()
        page = Exposition()
        for metric in CATALOGUE.values():
            if metric is QMGR_DELIVERY_DELAY:
                counts, count, sum_ = self.counters.histogram(metric)
                page.histogram(metric, counts, count, sum_)
            elif metric is QMGR_QUEUE_MESSAGES or metric is QMGR_QUEUE_RECIPIENTS:
                if summary is None:
                    continue  # the store is not open: no numbers rather than wrong ones
                page.family(
                    metric,
                    (
                        ((s.state,), s.messages if metric is QMGR_QUEUE_MESSAGES else s.recipients)
                        for s in summary
                    ),
                )
            elif metric in (WORKER_UP, WORKER_RESTARTS, WORKER_START_TIME, MCP_START_TIME):
                if mcp is not None:
                    page.family(metric, _mcp_samples(mcp, metric))
            else:
                page.family(metric, counter_samples(totals, metric))
        return page.text()


def _mcp_samples(mcp: McpStatus, metric: object) -> Iterable[tuple[tuple[str, ...], float]]:
    if metric is MCP_START_TIME:
        return [((), mcp.started)]
    samples: list[tuple[tuple[str, ...], float]] = []
    for w in mcp.workers:
        if metric is WORKER_UP:
            samples.append(((w.name,), 1 if w.ready and w.pid is not None else 0))
        elif metric is WORKER_RESTARTS:
            samples.append(((w.name,), w.restarts))
        elif metric is WORKER_START_TIME and w.started is not None:
            samples.append(((w.name,), w.started))
    return samples
