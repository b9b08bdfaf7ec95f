"""meta1py.offload: results, exceptions, order, and no cancellation once submitted."""

from __future__ import annotations

import threading

import pytest
import trio

from meta1py.offload import OffloadThread


async def test_returns_the_result_from_its_own_thread() -> None:
    worker = OffloadThread("test-offload")
    main = threading.get_ident()
    ident = await worker.run(threading.get_ident)
    assert ident != main
    assert await worker.run(lambda a, b: a + b, 2, 3) == 5
    # The same thread every time.
    assert await worker.run(threading.get_ident) == ident
    worker.close()


async def test_raises_the_exception_of_the_call() -> None:
    worker = OffloadThread("test-offload")

    def boom() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await worker.run(boom)
    # The thread survives an exception.
    assert await worker.run(lambda: 7) == 7
    worker.close()


async def test_calls_run_in_submission_order() -> None:
    worker = OffloadThread("test-offload")
    seen: list[int] = []

    async def call(i: int) -> None:
        await worker.run(seen.append, i)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(call, i)
            await trio.testing.wait_all_tasks_blocked()
    assert seen == list(range(50))
    worker.close()


async def test_a_call_in_flight_is_not_abandoned_by_cancellation() -> None:
    worker = OffloadThread("test-offload")
    started = threading.Event()
    release = threading.Event()
    results: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(30)
        return "done"

    scope = trio.CancelScope()

    async def caller() -> None:
        with scope:
            results.append(await worker.run(slow))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        await trio.to_thread.run_sync(started.wait, 30)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert results == []  # still waiting, not cancelled
        release.set()
    # The caller got the call's result although its scope was cancelled.
    assert results == ["done"]
    worker.close()
