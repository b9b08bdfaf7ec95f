"""Smoke test of the relay benchmark: ``bench/relay.py --quick`` runs and prints its table.

It checks that the harness works (both MTAs when Postfix is installed), not how fast anything is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "relay.py"


@pytest.mark.skipif(not os.path.exists("/usr/sbin/smtp-source"), reason="needs Postfix's smtp-source")
def test_quick_benchmark_prints_the_table() -> None:
    mta = "both" if os.path.exists("/usr/sbin/postfix") else "meta1py"
    # The harness stops everything it starts itself; the timeout only guards a hung run.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--mta", mta],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "| workload | MTA | e2e msg/s |" in done.stdout, output
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    expected_mtas = ["meta1py", "postfix"] if mta == "both" else ["meta1py"]
    for name in expected_mtas:
        # Three message workloads in two connection shapes, and the idle one: a row each per MTA.
        mine = [row for row in rows if f"| {name} |" in row]
        assert len(mine) == 7, output
        assert sum("new conn/msg" in row for row in mine) == 3, output
        assert sum("reused conns" in row for row in mine) == 3, output
    if mta == "both":
        assert sum("| ratio m/p |" in row for row in rows) == 7, output
    assert "FAILED" not in done.stdout, output
