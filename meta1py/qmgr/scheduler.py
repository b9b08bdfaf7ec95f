"""What to try next: per-destination queues, concurrency limits, backoff and dead destinations.

Pure bookkeeping with explicit ``now`` arguments (no trio, no clock of its own), so that every rule
is a unit test.  qmgr's trio loop feeds it delivery jobs and results and asks it which jobs to start.

Rules (Postfix's qmgr is the model):

* A *destination* is the routing key smar returns (``smtp:example.com``, ``lmtp:unix:/run/x``,
  ``maildir``).  At most ``per_destination_limit`` jobs run for one destination and at most
  ``total_limit`` overall.  Destinations with waiting jobs are served round-robin so that one
  busy destination cannot starve the others.
* A job whose whole session failed (no host answered, or every host answered 4xx before any
  recipient) counts against its destination.  After ``dead_after`` such failures in a row the
  destination is *down* until a backoff delay has passed: its queued jobs are handed back to be
  deferred together instead of each hammering the dead host.  When the delay has passed, one job
  probes the destination; only its success lets the rest through.
* Any success to a destination clears its failure count, and the messages that were deferred
  because of it are released at once ("releases the others early").
* Retry delays grow from ``retry_min`` doubling per attempt up to ``retry_max``, with ±20 % jitter so
  that a queue of 100,000 deferred messages does not come back in lockstep.  The jitter stays
  inside ``[retry_min, retry_max]``: ``retry_max`` is the longest wait there is.
* A job whose delivery agent went away before it answered (smtpc crashed or was restarted) is
  given back (:meth:`Scheduler.requeue`): that says nothing about the destination, so it neither
  counts against it nor revives it, and the job goes back to the front of its destination's line.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Job:
    """One delivery attempt: some recipients of one message, all to one destination."""

    qid: str
    destination: str
    recipients: tuple[int, ...]
    route: Any = None  # the route smar gave (opaque here)
    probe: bool = False
    agent_losses: int = 0  # times its delivery agent went away while delivering it


@dataclass(slots=True)
class _Destination:
    key: str
    waiting: deque[Job] = field(default_factory=deque)
    active: int = 0
    failures: int = 0
    down_until: float = 0.0
    probing: bool = False


def retry_delay(attempts: int, retry_min: float, retry_max: float, rng: random.Random) -> float:
    """Seconds to wait before the next attempt after ``attempts`` failed ones (>= 1).

    Doubles from ``retry_min`` up to ``retry_max``, then jitters by ±20 %, clipped to
    ``[retry_min, retry_max]``: at the cap the jitter only shortens the wait, so ``retry_max``
    really is the longest one (``retry_max = 1h`` never means 72 minutes).  The range is clipped
    rather than the drawn value, so that the delays at either end stay spread out instead of
    piling up on exactly ``retry_min`` or ``retry_max``.
    """
    exponent = max(0, min(attempts - 1, 62))
    base = min(retry_max, retry_min * (2.0**exponent))
    low = max(retry_min, base * 0.8)
    high = max(low, min(retry_max, base * 1.2))
    return rng.uniform(low, high)


class Scheduler:
    """Per-destination job queues under concurrency limits, with dead-destination handling."""

    def __init__(
        self,
        *,
        per_destination_limit: int,
        total_limit: int,
        retry_min: float,
        retry_max: float,
        dead_after: int = 1,
        rng: random.Random | None = None,
    ) -> None:
        self.per_destination_limit = max(1, per_destination_limit)
        self.total_limit = max(1, total_limit)
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.dead_after = max(1, dead_after)
        self.rng = rng or random.Random()
        self._dests: dict[str, _Destination] = {}
        # destinations that may have startable jobs, in round-robin order, each at most once
        self._ready: dict[str, None] = {}
        self.active = 0

    # -- queries -------------------------------------------------------------------------------

    def is_down(self, destination: str, now: float) -> bool:
        """True while ``destination`` is marked dead and its backoff has not passed."""
        d = self._dests.get(destination)
        return d is not None and d.down_until > now

    def down_until(self, destination: str) -> float:
        """When a dead destination may be probed again (0 when it is not dead)."""
        d = self._dests.get(destination)
        return d.down_until if d else 0.0

    def waiting(self) -> int:
        """Jobs queued and not yet started."""
        return sum(len(d.waiting) for d in self._dests.values())

    def destinations(self) -> dict[str, tuple[int, int, float]]:
        """``{destination: (waiting, active, down_until)}`` for the queue tools."""
        return {k: (len(d.waiting), d.active, d.down_until) for k, d in self._dests.items()}

    def retry_delay(self, attempts: int) -> float:
        """The jittered backoff for a message after ``attempts`` failures."""
        return retry_delay(attempts, self.retry_min, self.retry_max, self.rng)

    # -- changes -------------------------------------------------------------------------------

    def _dest(self, key: str) -> _Destination:
        d = self._dests.get(key)
        if d is None:
            d = self._dests[key] = _Destination(key)
        return d

    def add(self, job: Job) -> None:
        """Queue a job for its destination (the caller checks :meth:`is_down` first)."""
        d = self._dest(job.destination)
        d.waiting.append(job)
        self._ready.setdefault(d.key)

    def take_ready(self, now: float) -> tuple[list[Job], list[Job]]:
        """Jobs to start now, and jobs handed back because their destination is down.

        Returns:
            ``(start, deferred)``: ``start`` are counted as active until :meth:`finish`;
            ``deferred`` should be deferred until :meth:`down_until` of their destination.
        """
        start: list[Job] = []
        deferred: list[Job] = []
        rounds = len(self._ready)
        while self._ready and self.active < self.total_limit and rounds > 0:
            rounds -= 1
            key = next(iter(self._ready))
            del self._ready[key]
            d = self._dests.get(key)
            if d is None or not d.waiting:
                continue
            if d.down_until > now:
                deferred.extend(d.waiting)
                d.waiting.clear()
                continue
            limit = self.per_destination_limit
            if d.failures >= self.dead_after:
                # Back from the dead: one probe at a time until something succeeds.
                limit = 1
            if d.active >= limit or (d.probing and d.failures >= self.dead_after):
                continue
            job = d.waiting.popleft()
            job.probe = d.failures >= self.dead_after
            d.probing = d.probing or job.probe
            d.active += 1
            self.active += 1
            start.append(job)
            if d.waiting:
                self._ready[key] = None  # round-robin: back of the line
                rounds += 1
        # destinations skipped because of the global limit stay ready
        return start, deferred

    def finish(self, job: Job, *, delivered_any: bool, session_failed: bool, now: float) -> bool:
        """Record a finished job.

        Args:
            job: a job returned by :meth:`take_ready`.
            delivered_any: at least one recipient was accepted by the destination.
            session_failed: no recipient was even tried (connection or greeting failed everywhere).
            now: the current time.

        Returns:
            True when this success revived the destination: the caller should release the
            messages it deferred because of it.
        """
        d = self._dest(job.destination)
        d.active -= 1
        self.active -= 1
        if job.probe:
            d.probing = False
        revived = False
        if delivered_any or not session_failed:
            revived = d.failures >= self.dead_after or d.down_until > 0
            d.failures = 0
            d.down_until = 0.0
        elif d.down_until <= now:  # failures of jobs started before it died count once
            d.failures += 1
            if d.failures >= self.dead_after:
                d.down_until = now + self.retry_delay(d.failures - self.dead_after + 1)
        if d.waiting:
            self._ready.setdefault(d.key)
        elif d.active == 0 and d.failures == 0:
            del self._dests[d.key]
        return revived

    def requeue(self, job: Job) -> None:
        """Give back a started job whose delivery agent went away before it answered.

        Nothing was learnt about the destination: its failure count and down time are left as
        they were (a probe that was running may be started again), and the job goes to the
        front of its destination's line, to start as soon as :meth:`take_ready` is called again.
        """
        d = self._release_slot(job)
        d.waiting.appendleft(job)
        self._ready.setdefault(d.key)

    def abandon(self, job: Job) -> None:
        """Forget a started job that ended without news of its destination.

        Its message was deleted meanwhile, or its delivery agent kept dying under it: unlike
        :meth:`finish`, this neither counts a failure against the destination nor revives it.
        """
        d = self._release_slot(job)
        if d.waiting:
            self._ready.setdefault(d.key)
        elif d.active == 0 and d.failures == 0 and d.down_until == 0:
            del self._dests[d.key]

    def _release_slot(self, job: Job) -> _Destination:
        d = self._dest(job.destination)
        d.active -= 1
        self.active -= 1
        if job.probe:
            d.probing = False
            job.probe = False
        return d

    def revive(self, destinations: Iterable[str] | None = None) -> None:
        """Forget that destinations are down (``meta1 queue flush``); None means all."""
        keys = list(self._dests) if destinations is None else list(destinations)
        for key in keys:
            d = self._dests.get(key)
            if d is not None:
                d.failures = 0
                d.down_until = 0.0
                if d.waiting:
                    self._ready.setdefault(key)
