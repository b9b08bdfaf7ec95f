"""Crash points: make a named process die at a named point, so tests can cover each window.

``META1_TEST_CRASH=qmgr:after-commit`` makes qmgr kill itself with SIGKILL (as ``kill -9`` would:
no cleanup, no flush) the first time it reaches :func:`crash_point` ``("after-commit")``. Several
entries are separated by commas; ``qmgr:after-commit:3`` dies at the third time instead of the
first. The variable is read once per process, at the first call. It is a test hook, like
``META1_TEST_EXIT`` (meta1py.worker): nothing sets it in production, and an unknown point name
is simply never reached. The points, and what a crash there must leave (design.md §4):

==================  ======  =====================================================================
point               where   the promise
==================  ======  =====================================================================
after-content       smtps   content written and closed, no envelope: no 250, nothing delivered
before-commit       qmgr    the commit batch is about to be written: no 250, nothing delivered
after-commit        qmgr    envelope and content durable, smtps not told: delivered (the client
                            got no 250, so it may send again: a duplicate, never a loss)
before-250          smtps   qmgr committed, the 250 not yet sent: as after-commit
after-delivery      smtpc   the remote server said 250, qmgr not told: delivered again after
                            the restart (a duplicate, logged as possible)
==================  ======  =====================================================================
"""

from __future__ import annotations

import os
import signal

_ENV = "META1_TEST_CRASH"
# name -> how many more passes before the crash; None until read.
_armed: dict[str, int] | None = None
_process = ""


def set_process_name(name: str) -> None:
    """Record which worker this process is (the skeleton calls it before ``serve``)."""
    global _process, _armed
    _process = name
    _armed = None


def _parse(text: str, process: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3) or parts[0] != process or not parts[1]:
            continue
        count = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) > 0 else 1
        armed[parts[1]] = count
    return armed


def crash_point(name: str) -> None:
    """Die here with SIGKILL if ``META1_TEST_CRASH`` names this process and point (see above)."""
    global _armed
    if _armed is None:
        _armed = _parse(os.environ.get(_ENV, ""), _process)
    left = _armed.get(name)
    if left is None:
        return
    if left > 1:
        _armed[name] = left - 1
        return
    os.write(2, f"meta1py/{_process}[{os.getpid()}]: critical: crash point {name} ({_ENV})\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
