"""Fixtures for end-to-end tests: a worker account when running as root, and a daemon factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meta1py.testing.daemon import Meta1Daemon, temporary_worker_account


@pytest.fixture(scope="session")
def worker_account() -> Iterator[str | None]:
    """As root: a fresh system user and group for the workers, removed afterwards. Else None."""
    with temporary_worker_account("m1t") as name:
        yield name


@pytest.fixture
def make_daemon(worker_account: str | None) -> Iterator[Callable[..., Meta1Daemon]]:
    """Build ``Meta1Daemon``s (not started) whose workers use the test account when root."""
    daemons: list[Meta1Daemon] = []

    def factory(*args: Any, **kwargs: Any) -> Meta1Daemon:
        kwargs.setdefault("user", worker_account)
        daemon = Meta1Daemon(*args, **kwargs)
        daemons.append(daemon)
        return daemon

    yield factory
    for daemon in daemons:
        daemon.close()
