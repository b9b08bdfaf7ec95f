"""Crash points (meta1py.crashpoints): which process dies where, parsed from META1_TEST_CRASH."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from meta1py.crashpoints import _parse


def test_entries_for_other_processes_and_malformed_ones_are_ignored() -> None:
    text = "qmgr:after-commit, smtps:before-250:3, qmgr:before-commit:0, smtpc, :x, qmgr:"
    assert _parse(text, "qmgr") == {"after-commit": 1, "before-commit": 1}
    assert _parse(text, "smtps") == {"before-250": 3}
    assert _parse(text, "smar") == {}
    assert _parse("", "qmgr") == {}


def test_the_process_dies_with_sigkill_at_the_named_pass() -> None:
    code = (
        "from meta1py.crashpoints import crash_point, set_process_name\n"
        "set_process_name('qmgr')\n"
        "for i in range(5):\n"
        "    print(i, flush=True)\n"
        "    crash_point('after-commit')\n"
        "    crash_point('never-reached-name')\n"
    )
    env = {**os.environ, "META1_TEST_CRASH": "smtps:after-commit,qmgr:after-commit:3"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["0", "1", "2"]
    assert "crash point after-commit" in result.stderr
    env["META1_TEST_CRASH"] = ""
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["0", "1", "2", "3", "4"]
