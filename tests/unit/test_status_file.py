"""meta1py.status: mcp's status file and the rings of recent errors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from meta1py.metrics import QMGR_RECEIVED, SMTPS_REJECTED, Counters
from meta1py.rpc.messages import ErrorRecordValue
from meta1py.status import (
    McpStatus,
    RecentErrors,
    WorkerStatus,
    counter_values,
    merge_errors,
    parse_mcp_status,
    read_mcp_status,
    write_mcp_status,
)

STATUS = McpStatus(
    pid=100,
    started=1_700_000_000.5,
    config="/etc/meta1/meta1.conf",
    updated=1_700_000_060.0,
    workers=(
        WorkerStatus("qmgr", 101, 1_700_000_001.0, True, 1, 0),
        WorkerStatus("smtpc", None, None, False, 3, 2),
    ),
    errors=(
        ErrorRecordValue(time=1_700_000_050.0, process="mcp", pid=100, level="error", message="smtpc died"),
    ),
)


def test_the_status_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "mcp.status"
    write_mcp_status(path, STATUS)
    assert read_mcp_status(path) == STATUS
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["mcp.status"]  # no temporary file left


def test_no_status_file_is_none(tmp_path: Path) -> None:
    assert read_mcp_status(tmp_path / "mcp.status") is None


def test_writing_never_follows_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep me")
    path = tmp_path / "mcp.status"
    # The temporary name is predictable (pid): a link there is removed, never written through.
    (tmp_path / f".mcp.status.{os.getpid()}").symlink_to(target)
    write_mcp_status(path, STATUS)
    assert target.read_text() == "keep me"
    assert read_mcp_status(path) == STATUS


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"version": 2}),
        json.dumps({"version": 1, "pid": "100", "started": 1, "config": "", "updated": 1}),
        json.dumps(
            {"version": 1, "pid": 1, "started": 1, "config": "", "updated": 1, "workers": [{"name": 1}]}
        ),
    ],
)
def test_a_damaged_status_file_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mcp_status(text)


def test_the_ring_keeps_the_last_errors_only() -> None:
    ring = RecentErrors("smtpc", size=3)
    logger = logging.getLogger("meta1py.test_status_file")
    logger.addHandler(ring)
    try:
        logger.warning("not an error")
        for i in range(5):
            logger.error("failure %d", i)
        try:
            raise OSError("disk on fire")
        except OSError:
            logger.critical("cannot write", exc_info=True)
    finally:
        logger.removeHandler(ring)
    assert ring.seq == 6
    assert [(r.level, r.message) for r in ring.records] == [
        ("error", "failure 3"),
        ("error", "failure 4"),
        ("critical", "cannot write: OSError: disk on fire"),
    ]
    assert {r.process for r in ring.records} == {"smtpc"}
    assert {r.pid for r in ring.records} == {os.getpid()}


def test_errors_of_several_processes_merge_by_time() -> None:
    def e(t: float, process: str) -> ErrorRecordValue:
        return ErrorRecordValue(time=t, process=process, pid=1, level="error", message=f"{process} {t}")

    merged = merge_errors([e(3, "qmgr"), e(1, "qmgr")], [e(2, "smtpc"), e(3, "qmgr")], limit=2)
    assert [(r.time, r.process) for r in merged] == [(2, "smtpc"), (3, "qmgr")]


def test_counters_become_rpc_values() -> None:
    counters = Counters()
    counters.inc(QMGR_RECEIVED)
    counters.inc(SMTPS_REJECTED, "rcpt", "5.7.1")
    values = {(v.name, v.labels): v.value for v in counter_values(counters)}
    assert values == {
        ("meta1_messages_received_total", ()): 1,
        ("meta1_smtps_rejected_total", ("rcpt", "5.7.1")): 1,
    }
    assert counter_values(None) == ()
