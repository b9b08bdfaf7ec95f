"""Counters, the catalogue of every metric, and the Prometheus text format, without I/O.

The counters live where things happen: smtps counts connections, TLS sessions and refusals in its
sessions, qmgr counts messages received (its commits), recipients delivered, deferred and bounced,
delivery delays and failures per destination, smtpc counts outbound sessions and their TLS. Each
process keeps one :class:`Counters`; qmgr collects the others' over RPC (``WorkerStatsRequest``,
``QueueStatsReport``: docs/rpc.md) and serves the sum on its metrics endpoint
(docs/internals.md, "Metrics and status").

Every metric is declared once, in :data:`CATALOGUE` (name, type, help, label names); a process
increments it by the :class:`Metric` object, and the exposition takes the help and type from the
same declaration, so the page at ``/metrics`` and docs/qmgr.md cannot disagree about a name.

The text format is Prometheus's exposition format 0.0.4 (``# HELP``, ``# TYPE``, one sample per
line, label values escaped), written here by hand: it is a few dozen lines, and the client
library would be a dependency of every worker for it. Tests read what this writes with
``prometheus_client``'s parser.

Pure: no sockets, no trio; imported by smtps, qmgr and smtpc alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

MetricType = Literal["counter", "gauge", "histogram"]

#: The content type of the text format (Prometheus 0.0.4).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: The label value that stands for every value beyond a metric's limit (:meth:`Counters.bounded`).
OTHER: Final = "other"


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: its name (``_total`` for counters), type, help text and label names."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    #: Upper bounds of a histogram's buckets, ascending (``+Inf`` is added by the exposition).
    buckets: tuple[float, ...] = ()


# -- the catalogue -----------------------------------------------------------------------------
# smtps (pushed to qmgr with QueueStatsReport)
SMTPS_CONNECTIONS: Final = Metric(
    "meta1_smtps_connections_total", "counter", "SMTP connections accepted by smtps (refused ones included)"
)
SMTPS_TLS_SESSIONS: Final = Metric(
    "meta1_smtps_tls_sessions_total",
    "counter",
    "inbound SMTP sessions whose TLS handshake succeeded (STARTTLS or implicit TLS)",
)
SMTPS_REJECTED: Final = Metric(
    "meta1_smtps_rejected_total",
    "counter",
    "commands, messages and connections smtps refused with a 4xx or 5xx reply, by SMTP stage "
    "(connect, helo, mail, rcpt, data, eoh, eom) and RFC 3463 status code of the reply",
    ("stage", "status"),
)
# qmgr (its own)
QMGR_RECEIVED: Final = Metric(
    "meta1_messages_received_total", "counter", "messages queued (committed) from smtps; bounces not included"
)
QMGR_DELIVERED: Final = Metric(
    "meta1_recipients_delivered_total", "counter", "recipients delivered (one per maillog delivered line)"
)
QMGR_DEFERRED: Final = Metric(
    "meta1_recipients_deferred_total", "counter", "recipient deferrals (one per maillog deferred line)"
)
QMGR_BOUNCED: Final = Metric(
    "meta1_recipients_bounced_total",
    "counter",
    "recipients that failed for good (one per maillog bounced line), by status: bounced or expired",
    ("status",),
)
QMGR_DELIVERY_FAILURES: Final = Metric(
    "meta1_delivery_failures_total",
    "counter",
    "delivery attempts of a recipient that failed (temporarily or for good), by destination; the "
    "first destinations to fail get their own series (metrics { destinations }), later ones count "
    'as destination="other"',
    ("destination",),
)
QMGR_DELIVERY_DELAY: Final = Metric(
    "meta1_delivery_delay_seconds",
    "histogram",
    "seconds from a message's arrival to the delivery of a recipient (the maillog's delay=)",
    buckets=(0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 432000.0),
)
QMGR_QUEUE_MESSAGES: Final = Metric(
    "meta1_queue_messages",
    "gauge",
    "messages in the queue by state: active, deferred (a recipient waits for a retry), hold",
    ("state",),
)
QMGR_QUEUE_RECIPIENTS: Final = Metric(
    "meta1_queue_recipients", "gauge", "recipients still to deliver, by their message's state", ("state",)
)
# smtpc (pulled by qmgr with WorkerStatsRequest)
SMTPC_SESSIONS: Final = Metric(
    "meta1_smtpc_sessions_total", "counter", "outbound SMTP sessions opened by smtpc (LMTP not included)"
)
SMTPC_TLS_SESSIONS: Final = Metric(
    "meta1_smtpc_tls_sessions_total", "counter", "outbound SMTP sessions that went on in TLS (STARTTLS)"
)
# mcp (its status file, read by qmgr)
WORKER_UP: Final = Metric(
    "meta1_worker_up", "gauge", "1 while mcp reports the worker running and ready, else 0", ("worker",)
)
WORKER_RESTARTS: Final = Metric(
    "meta1_worker_restarts_total",
    "counter",
    "times mcp restarted a worker that died (planned restarts on reload not included)",
    ("worker",),
)
WORKER_START_TIME: Final = Metric(
    "meta1_worker_start_time_seconds",
    "gauge",
    "when the running worker process started (Unix time)",
    ("worker",),
)
MCP_START_TIME: Final = Metric("meta1_mcp_start_time_seconds", "gauge", "when mcp started (Unix time)")

#: Every metric, by name, in the order of the exposition.
CATALOGUE: Final[dict[str, Metric]] = {
    m.name: m
    for m in (
        SMTPS_CONNECTIONS,
        SMTPS_TLS_SESSIONS,
        SMTPS_REJECTED,
        QMGR_RECEIVED,
        QMGR_DELIVERED,
        QMGR_DEFERRED,
        QMGR_BOUNCED,
        QMGR_DELIVERY_FAILURES,
        QMGR_DELIVERY_DELAY,
        QMGR_QUEUE_MESSAGES,
        QMGR_QUEUE_RECIPIENTS,
        SMTPC_SESSIONS,
        SMTPC_TLS_SESSIONS,
        WORKER_UP,
        WORKER_RESTARTS,
        WORKER_START_TIME,
        MCP_START_TIME,
    )
}

#: Counter keys: (metric name, label values in the metric's label order).
Key = tuple[str, tuple[str, ...]]


class _Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                return


class Counters:
    """One process's counters (and histograms), keyed by metric and label values.

    ``version`` changes whenever a value does, so that a process can tell cheaply whether it has
    anything new to report.
    """

    __slots__ = ("_admitted", "_histograms", "_values", "version")

    def __init__(self) -> None:
        self._values: dict[Key, int] = {}
        self._histograms: dict[str, _Histogram] = {}
        self._admitted: dict[str, set[str]] = {}
        self.version = 0

    def inc(self, metric: Metric, *labels: str, by: int = 1) -> None:
        """Add ``by`` to the counter ``metric`` with these label values (in the metric's order).

        Raises:
            ValueError: the number of label values is not the metric's.
        """
        if len(labels) != len(metric.labels):
            raise ValueError(f"{metric.name} takes labels {metric.labels}, not {labels}")
        key = (metric.name, labels)
        self._values[key] = self._values.get(key, 0) + by
        self.version += 1

    def bounded(self, metric: Metric, value: str, limit: int) -> str:
        """``value`` as a label of ``metric`` if it is one of the first ``limit`` values seen,
        else :data:`OTHER`.

        Label sets must stay small (every value is a time series) and counters must never go
        down. A true "top N" cannot give both: a value that enters the top N would take its
        failures out of ``other``. So the first ``limit`` values keep their own series for the
        life of the process, and the rest are summed under ``other``.
        """
        admitted = self._admitted.setdefault(metric.name, set())
        if value in admitted:
            return value
        if len(admitted) < limit and value != OTHER:
            admitted.add(value)
            return value
        return OTHER

    def observe(self, metric: Metric, value: float) -> None:
        """Record ``value`` in the histogram ``metric``."""
        hist = self._histograms.get(metric.name)
        if hist is None:
            hist = self._histograms[metric.name] = _Histogram(metric.buckets)
        hist.observe(value)
        self.version += 1

    def get(self, metric: Metric, *labels: str) -> int:
        """The value of one counter (0 if it never moved)."""
        return self._values.get((metric.name, labels), 0)

    def items(self) -> list[tuple[Key, int]]:
        """Every counter that moved, as ``((name, labels), value)``."""
        return list(self._values.items())

    def histogram(self, metric: Metric) -> tuple[list[int], int, float]:
        """``(per-bucket counts, count, sum)`` of the histogram ``metric`` (zeros if unused)."""
        hist = self._histograms.get(metric.name)
        if hist is None:
            return [0] * len(metric.buckets), 0, 0.0
        return list(hist.counts), hist.count, hist.sum


def total(values: Iterable[tuple[Key, int]], metric: Metric) -> int:
    """The sum of ``metric``'s counters over every label value."""
    return sum(value for (name, _labels), value in values if name == metric.name)


# -- the text format ---------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_number(value: float) -> str:
    """A sample value as the text format writes it (``+Inf``, ``NaN``, integers without ``.0``)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{name}="{_escape_label(value)}"' for name, value in zip(names, values, strict=True))
    return "{" + pairs + "}"


class Exposition:
    """Builds one page of the text format, family by family."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def _header(self, metric: Metric) -> None:
        self._lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
        self._lines.append(f"# TYPE {metric.name} {metric.type}")

    def family(self, metric: Metric, samples: Iterable[tuple[tuple[str, ...], float]]) -> None:
        """A counter or gauge with its samples ``(label values, value)``, sorted by labels.

        A family without labels and without samples is written as 0, so that a counter exists
        from the start (``rate()`` needs its first value); a labelled one without samples is
        written with its help and type only.
        """
        self._header(metric)
        rows = sorted(samples)
        if not rows and not metric.labels:
            rows = [((), 0)]
        for labels, value in rows:
            self._lines.append(f"{metric.name}{_labels(metric.labels, labels)} {format_number(value)}")

    def histogram(self, metric: Metric, counts: list[int], count: int, sum_: float) -> None:
        """A histogram without labels: cumulative ``_bucket`` lines, ``_sum`` and ``_count``."""
        self._header(metric)
        cumulative = 0
        for bound, n in zip(metric.buckets, counts, strict=True):
            cumulative += n
            self._lines.append(f'{metric.name}_bucket{{le="{format_number(float(bound))}"}} {cumulative}')
        self._lines.append(f'{metric.name}_bucket{{le="+Inf"}} {count}')
        self._lines.append(f"{metric.name}_sum {format_number(sum_)}")
        self._lines.append(f"{metric.name}_count {count}")

    def text(self) -> str:
        """The page (every line ends with a newline, as the format requires)."""
        return "".join(f"{line}\n" for line in self._lines)


def counter_samples(
    values: Iterable[tuple[Key, int]], metric: Metric
) -> Iterator[tuple[tuple[str, ...], int]]:
    """The ``(label values, value)`` samples of ``metric`` among ``values``."""
    for (name, labels), value in values:
        if name == metric.name:
            yield labels, value
