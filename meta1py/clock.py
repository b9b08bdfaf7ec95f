"""The wall clock of the mail system: ``time.time()``, moved forward by test mode's virtual clock.

qmgr's schedule (retries, delay warnings, expiry, bounces) and smar's greylisting read the time
here, so that test mode's ``POST /clock/advance`` (docs/testmode.md) can make an hour pass at
once. Outside test mode the offset is always 0 and :func:`now` is ``time.time()``.
"""

from __future__ import annotations

import time

_offset = 0.0


def now() -> float:
    """Seconds since the Unix epoch, as the mail system sees them."""
    return time.time() + _offset


def offset() -> float:
    """How far the virtual clock is ahead of the real one (seconds; 0 outside test mode)."""
    return _offset


def set_offset(seconds: float) -> None:
    """Move the virtual clock to ``seconds`` ahead of the real one (test mode only).

    Raises:
        ValueError: ``seconds`` is negative or not finite (the clock never runs backwards
            behind the real one).
    """
    global _offset
    if not 0.0 <= seconds < float("inf"):
        raise ValueError(f"the clock offset must be a finite number of seconds >= 0, not {seconds!r}")
    _offset = float(seconds)
