"""Small helpers shared by the benchmark scripts under ``bench/`` (not a benchmark itself)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meta1py_testing.daemon import PRODUCTION_ACCOUNTS, temporary_worker_account


@contextlib.contextmanager
def worker_accounts(prefix: str = "m1b") -> Iterator[tuple[dict[str, Any], str]]:
    """``Meta1Daemon`` keyword arguments for the workers' accounts, and a description of them.

    As root with the production users of ``meta1 setup`` present (:data:`PRODUCTION_ACCOUNTS`:
    meta1q, meta1r, meta1c, meta1s), production mode with those four users. As root without them, one
    throw-away system user for every worker, removed afterwards. Not as root: the invoking user.
    """
    if os.geteuid() != 0:
        yield {}, f"invoking user ({pwd.getpwuid(os.geteuid()).pw_name})"
        return
    try:
        for user, group in PRODUCTION_ACCOUNTS.values():
            pwd.getpwnam(user)
            grp.getgrnam(group)
        present = True
    except KeyError:
        present = False
    if present:
        names = ", ".join(user for user, _group in PRODUCTION_ACCOUNTS.values())
        yield {"users": dict(PRODUCTION_ACCOUNTS)}, f"root, production mode (workers: {names})"
        return
    with temporary_worker_account(prefix) as name:
        yield {"user": name}, f"root, one throw-away worker user ({name})"


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (capped by the hard limit); return the new soft.

    Children started afterwards (mcp and its workers, Postfix) inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted if hard == resource.RLIM_INFINITY else min(hard, wanted))
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def nofile_limit(pid: int) -> int | None:
    """The soft "Max open files" of a running process (from /proc/<pid>/limits), None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    except (OSError, ValueError, IndexError):
        pass
    return None
