"""Fixtures for end-to-end tests: the worker accounts when running as root, and a daemon factory.

As root the daemon runs the way a mail gateway runs it (issue 13): mcp as root, each worker as its
own user from etc/meta1.conf (``meta1q``, ``meta1r``, ``meta1c``, ``meta1s``; group ``meta1``,
smar's group ``meta1r``),
created by the same code as ``meta1 setup``. ``META1_TEST_ACCOUNTS=one`` runs every worker as one
throw-away user instead (the second configuration, which ``scripts/test.sh`` also runs). Not as
root, every process runs as the invoking user.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meta1py_testing.daemon import Meta1Daemon, production_accounts, temporary_worker_account

#: ``four`` (default) or ``one``: how many worker users the e2e daemons use as root.
ACCOUNTS_MODE = os.environ.get("META1_TEST_ACCOUNTS", "four")


@pytest.fixture(scope="session")
def worker_accounts() -> Iterator[dict[str, Any]]:
    """Keyword arguments for ``Meta1Daemon`` that set the workers' accounts (empty unless root)."""
    if ACCOUNTS_MODE == "one":
        with temporary_worker_account("m1t") as name:
            yield {"user": name} if name else {}
        return
    with production_accounts() as accounts:
        yield {} if accounts is None else {"users": accounts}


@pytest.fixture(scope="session")
def worker_account(worker_accounts: dict[str, Any]) -> str | None:
    """The smtps worker's user (None when not root): for tests that check one worker's identity."""
    users = worker_accounts.get("users")
    return users["smtps"][0] if users else worker_accounts.get("user")


@pytest.fixture
def make_daemon(worker_accounts: dict[str, Any]) -> Iterator[Callable[..., Meta1Daemon]]:
    """Build ``Meta1Daemon``s (not started) whose workers use the test accounts when root."""
    daemons: list[Meta1Daemon] = []

    def factory(*args: Any, **kwargs: Any) -> Meta1Daemon:
        if "user" not in kwargs and "users" not in kwargs and "config_text" not in kwargs:
            kwargs.update(worker_accounts)
        daemon = Meta1Daemon(*args, **kwargs)
        daemons.append(daemon)
        return daemon

    yield factory
    # Issue 13: in production mode no worker may trip over a file it cannot open. A test that
    # provokes one on purpose sets ``daemon.permission_errors_expected = True``.
    complaints = []
    for daemon in daemons:
        log = daemon.log_text()
        daemon.close()
        if getattr(daemon, "permission_errors_expected", False):
            continue
        bad = [line for line in log.splitlines() if _PERMISSION_ERROR.search(line)]
        if bad:
            complaints.append("\n".join(bad[:10]))
    if complaints:
        pytest.fail("permission errors in the daemon's log:\n" + "\n---\n".join(complaints))


_PERMISSION_ERROR = re.compile(r"Permission denied|PermissionError|\bEACCES\b")
