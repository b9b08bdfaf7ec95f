"""Test mode's virtual clock: ``POST /clock/advance`` steps qmgr through its timers, in order.

Moving the clock forward by N seconds at once would make every retry, delay warning and expiry
due in that time happen together, at the end, with the wrong times in them. Instead the clock
stops at each timer due before ``now + N``: it is set so that ``now`` is that timer's time, smar
is told (greylisting reads the same clock), qmgr's loop is woken, and the next step waits until
qmgr is quiet (:meth:`meta1py.qmgr.manager.QueueManager.quiet`: nothing due, routing, delivering,
deferring or finishing). A retry that defers again schedules a later timer, which the same
advance runs too if it falls inside the window. Finally ``now`` is ``start + N``.

The clock only goes forward here; ``POST /reset`` puts it back (offset 0).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from meta1py import clock

log = logging.getLogger(__name__)

#: The longest advance accepted (``s``): ten years.
MAX_ADVANCE_S = 10 * 366 * 86400.0
#: How long one step may take to become quiet before the advance gives up (503).
SETTLE_TIMEOUT_S = 60.0
#: At most this many steps in one advance (a timer storm cannot keep the request forever).
MAX_STEPS = 10_000


class Steppable(Protocol):
    """What the stepper needs of qmgr (QueueManager is one; the unit tests have a fake)."""

    events_run: int

    def next_timer(self) -> float | None: ...

    def wake(self) -> None: ...

    async def settle(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Advanced:
    """The answer to ``POST /clock/advance``: the virtual time, the offset, the timers run."""

    now: float
    offset: float
    ran: int


class ClockNotSettledError(Exception):
    """qmgr did not become quiet within :data:`SETTLE_TIMEOUT_S` (smtpc down, a hanging
    destination): the clock stays where it got to."""


def check_advance(value: str | None) -> float:
    """The seconds of ``?s=``: a finite number, > 0, at most :data:`MAX_ADVANCE_S`.

    Raises:
        ValueError: with the message for the 400 answer.
    """
    if value is None or value == "":
        raise ValueError("s (seconds to advance) is required, e.g. /clock/advance?s=3600")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"s must be a number of seconds, not {value[:40]!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("s must be a number of seconds > 0 (the clock only goes forward)")
    if seconds > MAX_ADVANCE_S:
        raise ValueError("s must be at most 10 years (316224000 seconds)")
    return seconds


async def advance(
    manager: Steppable,
    seconds: float,
    tell_smar: Callable[[float], Awaitable[None]],
    *,
    settle_timeout_s: float = SETTLE_TIMEOUT_S,
) -> Advanced:
    """Move the virtual clock ``seconds`` forward, running every timer due meanwhile in order.

    Raises:
        ClockNotSettledError: a step did not become quiet in time.
    """
    target = clock.now() + seconds
    ran_before = manager.events_run
    await _settle(manager, settle_timeout_s)
    for _ in range(MAX_STEPS):
        due = manager.next_timer()
        if due is None or due > target or due <= clock.now():
            # None due in the window (or only those that cannot run now: the store is failing).
            break
        await _move_to(due, tell_smar)
        manager.wake()
        await _settle(manager, settle_timeout_s)
    await _move_to(target, tell_smar)
    manager.wake()
    await _settle(manager, settle_timeout_s)
    return Advanced(now=clock.now(), offset=clock.offset(), ran=manager.events_run - ran_before)


async def _move_to(when: float, tell_smar: Callable[[float], Awaitable[None]]) -> None:
    """Set the offset so that ``clock.now() == when`` (never backwards) and tell smar."""
    offset = max(clock.offset(), when - time.time())
    clock.set_offset(offset)
    await tell_smar(offset)


async def _settle(manager: Steppable, timeout_s: float) -> None:
    with trio.move_on_after(timeout_s) as scope:
        await manager.settle()
    if scope.cancelled_caught:
        raise ClockNotSettledError(f"qmgr did not become quiet within {timeout_s:g}s")
