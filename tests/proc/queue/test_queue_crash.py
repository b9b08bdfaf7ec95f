"""Kill -9 during commits: every acknowledged message survives, intact."""

from __future__ import annotations

import importlib.util
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from meta1py.queue.content import open_content, scan_content_ids
from meta1py.queue.envelopes import EnvelopeStore, envelope_store_path

CHILD = Path(__file__).with_name("crash_child.py")
ROUNDS = 4
DEADLINE_S = 120.0


def load_child() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_child", CHILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_and_kill(queue_dir: Path, kill_after: int) -> list[str]:
    """Start the child, kill -9 it after ``kill_after`` acks; return every ack it wrote."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(queue_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + DEADLINE_S
    try:
        while data.count(b"\n") < kill_after:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the child acknowledged too few messages in time"
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise AssertionError(f"the child exited early: {err}")
                data += chunk
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        # Acks written before the kill are still in the pipe: they count.
        while True:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            assert ready, "the child's pipe did not close"
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        proc.wait(timeout=DEADLINE_S)
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # A line without its newline was not fully acknowledged (cannot happen with one write()).
    return data.decode().split("\n")[:-1]


def test_acknowledged_messages_survive_kill_9(tmp_path: Path) -> None:
    child = load_child()
    rng = random.Random()
    acknowledged: list[str] = []
    for _ in range(ROUNDS):
        acknowledged += run_and_kill(tmp_path, rng.randint(1, 400))
        # Reopen as qmgr would after a crash, then check everything acknowledged so far.
        with EnvelopeStore(envelope_store_path(tmp_path)) as store:
            stored = store.all_ids()
            for qid in acknowledged:
                assert qid in stored, f"acknowledged message {qid} lost"
                assert store.get(qid) == child.expected_envelope(qid)
                with open_content(tmp_path, qid) as f:
                    assert f.read() == child.expected_body(qid)
            assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Stored but unacknowledged messages are fine (the client saw no 250 and may resend);
        # content without an envelope is an orphan for recovery, never the other way round.
        assert stored <= set(scan_content_ids(tmp_path))
    assert len(set(acknowledged)) == len(acknowledged)
    with EnvelopeStore(envelope_store_path(tmp_path), readonly=True) as reader:
        assert set(acknowledged) <= reader.all_ids()
