"""The kill -9 soak (issue 16) in its CI size: ``bench/soak.py --duration 60`` as a subprocess.

For 60 s a random worker is SIGKILLed every 0.2-2 s under load, then the whole tree six times (see
the script's docstring). The test asserts the script's exit status and its ``SOAK-SUMMARY`` line:
every message answered 250 was delivered, mcp never gave up, no orphan content file survived the
start-up sweep, every duplicate was logged and they stayed under 3 % (1 % is the promise of the
10-minute run). No timing is asserted; the figures are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
#: A deadline for the whole run (60 s of kills, six restarts, the drain, the orphan grace), so that
#: a hang fails the test instead of the CI job.
DEADLINE_S = 900


def test_kill_9_soak_loses_nothing_and_mcp_never_gives_up() -> None:
    # Issue 16's 1 % holds for the 10-minute soak (docs/performance.md). In 60 s the six
    # whole-tree kills (each resends what was in flight: a fixed count) weigh on few messages:
    # measured 0.09-1.34 % from run to run, so CI guards against regressions at 3 % and requires
    # every duplicate to be logged.
    command = [sys.executable, str(SOAK), "--duration", "60", "--duplicate-limit", "0.03"]
    command.append("--require-dup-log")
    if seed := os.environ.get("META1_SOAK_SEED"):
        command += ["--seed", seed]
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    print(done.stdout[-6000:])
    print(done.stderr[-3000:], file=sys.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SOAK-SUMMARY ")]
    assert lines, f"no summary (exit status {done.returncode})\n{done.stderr[-3000:]}"
    summary = json.loads(lines[-1].removeprefix("SOAK-SUMMARY "))
    replay = f"replay with META1_SOAK_SEED={summary['seed']}"
    assert summary["acked"] > 0, replay
    assert summary["tree_kills"] == 6, replay
    assert sum(summary["kills"].values()) > 0, replay
    lost = f"{summary['lost']} acknowledged messages lost, e.g. {summary['lost_examples']}; {replay}"
    assert summary["lost"] == 0, lost
    assert not summary["mcp_gave_up"], summary["mcp_gave_up_reasons"]
    assert summary["orphans_stale"] == 0, replay
    assert summary["broken"] == [], replay
    assert done.returncode == 0, replay
