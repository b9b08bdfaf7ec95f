"""Fixtures shared by qmgr's process-tier tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from meta1py.log import MAILLOG_LOGGER


@pytest.fixture
def maillog(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[str], list[str]]]:
    """``maillog("deferred")``: the maillog lines of one event (``queued``, ``requeued``, ...) so far."""
    caplog.set_level(logging.INFO, logger=MAILLOG_LOGGER)

    def lines(event: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == MAILLOG_LOGGER and r.getMessage().startswith(event + " ")
        ]

    yield lines
