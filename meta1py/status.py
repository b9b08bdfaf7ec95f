"""What ``meta1 status`` shows, where it comes from: mcp's status file and each process's recent errors.

**mcp's status file** (``<run_directory>/mcp.status``, `meta1py.contract.mcp_status_path`): mcp
(root) rewrites it, atomically, whenever a worker starts, becomes ready, dies or is restarted, and
after a reload. It is JSON (:func:`format_mcp_status`, :func:`parse_mcp_status`): mcp's pid, start
time and configuration file, and per worker its pid, start time, whether it is ready, how many
times mcp started it and how many times it restarted it after a death; and mcp's own recent
errors. mcp never reads anything back: it only writes (it does not parse input from anyone).
qmgr reads it for the ``meta1_worker_*`` metrics, ``meta1 status`` for its process table.

**Recent errors**: every process keeps its last :data:`RECENT_ERRORS` log records of level
ERROR or above in a ring (:class:`RecentErrors`, installed by :func:`install_recent_errors` on the
``meta1py`` logger). smar and smtpc send theirs with ``WorkerStatsReply``, smtps with
``QueueStatsReport``, qmgr adds its own, and ``meta1 status`` merges them with mcp's. A worker's
ring dies with it; its death is in mcp's ring (mcp logs it as an error).

Pure apart from the status file's own reading and writing; no sockets, no trio.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from meta1py.metrics import Counters
from meta1py.rpc.messages import CounterValue, ErrorRecordValue, WorkerStatsValue

#: How many error records each process keeps.
RECENT_ERRORS: Final = 20
#: The longest message kept per record (a traceback is cut; the log has it whole).
_MAX_MESSAGE_CHARS: Final = 1000
_FORMAT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker as mcp sees it.

    Attributes:
        name: qmgr, smar, smtpc or smtps.
        pid: the running process, None while none runs (in restart backoff).
        started: when that process started (Unix time), None while none runs.
        ready: it reported ready and has not exited.
        starts: how many processes mcp started for it (reloads included).
        restarts: how many times mcp restarted it after it died (reloads not included).
    """

    name: str
    pid: int | None
    started: float | None
    ready: bool
    starts: int
    restarts: int


@dataclass(frozen=True, slots=True)
class McpStatus:
    """The content of mcp's status file."""

    pid: int
    started: float
    config: str
    updated: float
    workers: tuple[WorkerStatus, ...]
    errors: tuple[ErrorRecordValue, ...]


def format_mcp_status(status: McpStatus) -> str:
    """The status file's text (JSON, one object)."""
    return json.dumps(
        {
            "version": _FORMAT_VERSION,
            "pid": status.pid,
            "started": status.started,
            "config": status.config,
            "updated": status.updated,
            "workers": [
                {
                    "name": w.name,
                    "pid": w.pid,
                    "started": w.started,
                    "ready": w.ready,
                    "starts": w.starts,
                    "restarts": w.restarts,
                }
                for w in status.workers
            ],
            "errors": [_error_json(e) for e in status.errors],
        },
        sort_keys=True,
    )


def _error_json(e: ErrorRecordValue) -> dict[str, Any]:
    return {"time": e.time, "process": e.process, "pid": e.pid, "level": e.level, "message": e.message}


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{what}: not an integer")
    return value


def _num(value: Any, what: str) -> float:
    if type(value) not in (int, float):
        raise ValueError(f"{what}: not a number")
    return float(value)


def _str(value: Any, what: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{what}: not a string")
    return value


def parse_mcp_status(text: str) -> McpStatus:
    """Read the status file's text.

    Raises:
        ValueError: not JSON, another version, or a field of the wrong type.
    """
    obj = json.loads(text)
    if not isinstance(obj, dict) or obj.get("version") != _FORMAT_VERSION:
        raise ValueError("not an mcp status file of version 1")
    workers = []
    for w in obj.get("workers") or []:
        if not isinstance(w, dict):
            raise ValueError("workers: not an object")
        workers.append(
            WorkerStatus(
                name=_str(w.get("name"), "name"),
                pid=None if w.get("pid") is None else _int(w.get("pid"), "pid"),
                started=None if w.get("started") is None else _num(w.get("started"), "started"),
                ready=bool(w.get("ready")),
                starts=_int(w.get("starts"), "starts"),
                restarts=_int(w.get("restarts"), "restarts"),
            )
        )
    errors = []
    for e in obj.get("errors") or []:
        if not isinstance(e, dict):
            raise ValueError("errors: not an object")
        errors.append(
            ErrorRecordValue(
                time=_num(e.get("time"), "time"),
                process=_str(e.get("process"), "process"),
                pid=_int(e.get("pid"), "pid"),
                level=_str(e.get("level"), "level"),
                message=_str(e.get("message"), "message"),
            )
        )
    return McpStatus(
        pid=_int(obj.get("pid"), "pid"),
        started=_num(obj.get("started"), "started"),
        config=_str(obj.get("config"), "config"),
        updated=_num(obj.get("updated"), "updated"),
        workers=tuple(workers),
        errors=tuple(errors),
    )


def write_mcp_status(path: Path, status: McpStatus) -> None:
    """Replace the status file atomically (a new file, mode 0644, renamed over the old one).

    The temporary file is created with ``O_EXCL | O_NOFOLLOW``: mcp is root and the run directory
    may lie inside the queue directory, which qmgr owns; a link planted there must not make root
    write anywhere else.

    Raises:
        OSError: the file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o644)
            out.write(format_mcp_status(status))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_mcp_status(path: Path) -> McpStatus | None:
    """The status file, or None when it does not exist.

    Raises:
        OSError: it exists but cannot be read (permissions).
        ValueError: it is not a status file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return parse_mcp_status(text)


# -- recent errors -------------------------------------------------------------------------------


class RecentErrors(logging.Handler):
    """Keeps the last ``size`` records of level ERROR and above, as RPC values.

    ``seq`` counts every record kept, so that a process can tell whether it has new ones.
    """

    def __init__(self, process: str, size: int = RECENT_ERRORS) -> None:
        super().__init__(logging.ERROR)
        self.process = process
        self.records: deque[ErrorRecordValue] = deque(maxlen=size)
        self.seq = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is (logging's own policy)
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.records.append(
            ErrorRecordValue(
                time=record.created,
                process=self.process,
                pid=os.getpid(),
                level=record.levelname.lower(),
                message=message[:_MAX_MESSAGE_CHARS],
            )
        )
        self.seq += 1


_recent: RecentErrors | None = None
#: When this process started (Unix time): set by :func:`install_recent_errors`.
_started = time.time()


def install_recent_errors(process: str) -> RecentErrors:
    """Keep this process's recent errors (once per process; again after a fork replaces it).

    The handler hangs on the ``meta1py`` logger, not the root one: ``setup_logging`` replaces the
    root's handlers when a reload changes the log level, and this ring must survive that.
    """
    global _recent, _started
    logger = logging.getLogger("meta1py")
    if _recent is not None:
        logger.removeHandler(_recent)
    _recent = RecentErrors(process)
    _started = time.time()
    logger.addHandler(_recent)
    return _recent


def recent_errors() -> tuple[ErrorRecordValue, ...]:
    """This process's recent errors, oldest first (none unless installed)."""
    return tuple(_recent.records) if _recent is not None else ()


def recent_errors_seq() -> int:
    """How many errors this process has kept so far."""
    return _recent.seq if _recent is not None else 0


def counter_values(counters: Counters | None) -> tuple[CounterValue, ...]:
    """``counters`` as RPC values (histograms stay in their process)."""
    if counters is None:
        return ()
    return tuple(
        CounterValue(name=name, labels=labels, value=value) for (name, labels), value in counters.items()
    )


def worker_stats(process: str, counters: Counters | None) -> WorkerStatsValue:
    """What this process reports about itself: pid, start time, counters, recent errors."""
    return WorkerStatsValue(
        process=process,
        pid=os.getpid(),
        started=_started,
        counters=counter_values(counters),
        errors=recent_errors(),
    )


def merge_errors(*groups: Iterable[ErrorRecordValue], limit: int = RECENT_ERRORS) -> list[ErrorRecordValue]:
    """The ``limit`` most recent of several processes' errors, oldest first, without duplicates."""
    seen: set[tuple[float, str, int, str]] = set()
    merged = []
    for group in groups:
        for e in group:
            key = (e.time, e.process, e.pid, e.message)
            if key not in seen:
                seen.add(key)
                merged.append(e)
    merged.sort(key=lambda e: e.time)
    return merged[-limit:]
