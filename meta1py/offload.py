"""One dedicated thread for a trio program's blocking calls (fsync, SQLite), in submission order.

``trio.to_thread.run_sync`` is general: a thread cache, a capacity limiter, a context copy, an OS
thread name set per call, an outcome object and a checkpoint on each side. On the mail path it
runs for every content batch in smtps and every group commit in qmgr, and a profile showed it as
the largest single cost of both (about 90 us of CPU per call). ``OffloadThread`` keeps one thread
per purpose, started on first use and fed through a ``queue.SimpleQueue``; a call costs about
40 us. Calls run one at a time in the order they were made, which is what a store connection or a
batch of fsyncs needs anyway.

Like ``trio.to_thread.run_sync`` with its defaults, a call cannot be cancelled once it started:
the caller waits for the result (the work is either durable or it is not; abandoning it would
leave the caller not knowing which).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

_Job = tuple[Callable[[], Any], trio.lowlevel.TrioToken, trio.lowlevel.Task] | None


class OffloadThread:
    """A named daemon thread that runs blocking functions for trio tasks.

    Args:
        name: the thread's name (shown by py-spy and in tracebacks).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the thread and return its result (or raise its exception)."""
        if self._thread is None:
            self._start()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        self._jobs.put(((lambda: fn(*args)) if args else fn, token, task))

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # uncancellable once submitted (see module doc)

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def close(self) -> None:
        """Let the thread exit once the calls already submitted are done."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                thread.start()
                self._thread = thread

    def _work(self) -> None:
        jobs = self._jobs
        reschedule = trio.lowlevel.reschedule
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, token, task = job
            result = outcome.capture(fn)
            del fn, job
            try:
                token.run_sync_soon(reschedule, task, result)
            except trio.RunFinishedError:  # nobody is waiting any more
                pass
