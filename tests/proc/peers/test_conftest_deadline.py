"""The generic machinery of tests/conftest.py: trio deadlines, free_port."""

from collections.abc import Callable

import pytest
import trio


@pytest.mark.deadline(1)
@pytest.mark.xfail(strict=True, reason="the deadline must stop a test that waits too long")
async def test_deadline_stops_a_hanging_test() -> None:
    await trio.sleep(60)


async def test_autojump_tests_get_no_real_deadline(autojump_clock: trio.testing.MockClock) -> None:
    await trio.sleep(100_000)


def test_free_port_is_bindable(free_port: Callable[..., int]) -> None:
    import socket

    port = free_port("127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
