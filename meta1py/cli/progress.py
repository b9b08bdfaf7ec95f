"""Progress bars for long operator commands: ``meta1 queue delete`` of 100,000 messages,
``meta1 makemap`` or ``meta1 newaliases`` of a big map.

A bar is drawn on standard error only when it is a terminal, ``TERM`` is not ``dumb`` and the
command was not given ``-q``: scripts, pipes, cron mail and tests that parse the output see
exactly what they saw before bars existed. It is redrawn in place (``\\r``) at most ten times a
second and shows the work done, the total, the percentage, the rate and the time left::

    delete [##############..........................]  35%  35,000/100,000 messages  2,113/s  ETA 0:31

When the work ends the last state (100% and the time taken) stays on its line, so that the
command's own output (``delete: 100000 messages``) follows on the next one; when it is cut short
the line is ended where it stopped, so that the error that follows starts a line of its own.

The text is made apart from the I/O: :func:`render` (one line from the numbers and the terminal
width) and :class:`RateLimiter` (whether a redraw is due, given a clock) are pure and are
tested without a terminal; :class:`ProgressBar` only writes what they give.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TextIO

__all__ = [
    "REDRAW_INTERVAL_S",
    "ProgressBar",
    "RateLimiter",
    "format_duration",
    "progress_bar",
    "render",
    "wants_progress",
]

#: At most ten redraws a second: enough to look alive, too few to cost anything.
REDRAW_INTERVAL_S = 0.1
#: The bar itself: no narrower than this (else it is left out), no wider than that.
_MIN_BAR, _MAX_BAR = 10, 40
#: Terminal width when the terminal does not say (a fresh pseudo-terminal reports 0 columns).
_DEFAULT_COLUMNS = 80
#: "Erase to end of line" (ECMA-48 EL): a shorter line must not leave the end of a longer one.
_ERASE_LINE_END = "\x1b[K"


def format_duration(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` from one on (``0:07``, ``12:34``, ``1:02:03``)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def render(
    label: str,
    done: int,
    total: int,
    elapsed_s: float,
    *,
    unit: str,
    columns: int,
    finished: bool = False,
) -> str:
    """One line of the bar: label, bar, percentage, ``done/total unit``, rate, time left.

    Args:
        label: what runs (``delete``, ``access``).
        done: units done so far.
        total: units in all (> 0).
        elapsed_s: seconds since the work started.
        unit: what is counted (``messages``, ``lines``).
        columns: the terminal's width; the line is at most ``columns - 1`` characters, because a
            character in the last column makes some terminals wrap, and ``\\r`` would then
            redraw the wrong line.
        finished: the work ended: the time taken instead of the time left.

    Returns:
        The line, without ``\\r`` or a newline.
    """
    done = max(0, min(done, total))
    fraction = done / total if total > 0 else 1.0
    rate = done / elapsed_s if done and elapsed_s > 0 else None
    if finished:
        tail = f"done in {format_duration(elapsed_s)}"
    elif rate is not None:
        tail = f"ETA {format_duration((total - done) / rate)}"
    else:
        tail = "ETA -:--"
    rate_text = f"{rate:,.0f}/s" if rate is not None else "-/s"
    right = f"{fraction:4.0%}  {done:,}/{total:,} {unit}  {rate_text}  {tail}"
    width = columns - 1
    bar_width = min(_MAX_BAR, width - len(label) - len(right) - 4)  # "label [bar] right"
    if bar_width >= _MIN_BAR:
        filled = int(bar_width * fraction)
        line = f"{label} [{'#' * filled}{'.' * (bar_width - filled)}] {right}"
    else:
        line = f"{label} {right}"
    return line[: max(0, width)]


class RateLimiter:
    """Says when a redraw is due: the first time, then at most once per ``interval_s``.

    Args:
        interval_s: the least time between two redraws.
        clock: a monotonic clock in seconds (``time.monotonic``; tests pass their own).
    """

    def __init__(
        self, interval_s: float = REDRAW_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        """True (and the interval starts again) when a redraw is due now."""
        now = self._clock()
        # A microsecond's slack: a clock summed from float steps lands a hair short of the mark.
        if self._last is not None and now - self._last < self.interval_s - 1e-6:
            return False
        self._last = now
        return True


def wants_progress(
    stream: TextIO | None, *, quiet: bool = False, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether a bar may be drawn on ``stream``: a terminal, ``TERM`` not ``dumb``, no ``-q``.

    ``TERM=dumb`` (Emacs shells, some CI runners that fake a terminal) cannot redraw a line.
    """
    if stream is None or quiet:
        return False
    env = os.environ if environ is None else environ
    if env.get("TERM", "") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or the stream is closed
        return False


class ProgressBar:
    """A bar redrawn in place on a terminal; with ``stream=None`` it does nothing at all.

    Use it as a context manager: entering draws 0%, :meth:`update` redraws (rate-limited),
    leaving draws the last state and ends the line (with the time taken when all was done).

    Args:
        label: what runs, first on the line.
        total: units in all.
        unit: what is counted, after the numbers.
        stream: the terminal (standard error), or None for no bar (see :func:`progress_bar`).
        clock: a monotonic clock in seconds.
        interval_s: the least time between two redraws.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "messages",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = REDRAW_INTERVAL_S,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream if total > 0 else None
        self._clock = clock
        self._limiter = RateLimiter(interval_s, clock)
        self._started = clock()
        self._open = False

    @property
    def shown(self) -> bool:
        """True when this bar draws (a terminal was given)."""
        return self._stream is not None

    def __enter__(self) -> ProgressBar:
        self._started = self._clock()
        self._draw(finished=False)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def update(self, done: int) -> None:
        """``done`` units are done; redraw when the last redraw is old enough."""
        self.done = done
        if self._stream is not None and self._limiter.ready():
            self._draw(finished=False)

    def advance(self, count: int = 1) -> None:
        """``count`` more units are done."""
        self.update(self.done + count)

    def close(self) -> None:
        """Draw the last state and end the line (once; later calls do nothing)."""
        if self._stream is None or not self._open:
            return
        self._draw(finished=self.done >= self.total)
        self._stream.write("\n")
        self._stream.flush()
        self._open = False

    def _draw(self, *, finished: bool) -> None:
        stream = self._stream
        if stream is None:
            return
        line = render(
            self.label,
            self.done,
            self.total,
            self._clock() - self._started,
            unit=self.unit,
            columns=_columns(stream),
            finished=finished,
        )
        stream.write("\r" + line + _ERASE_LINE_END)
        stream.flush()
        self._open = True


def _columns(stream: TextIO) -> int:
    """The terminal's width, asked at each redraw (the window may be resized meanwhile)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):  # no descriptor (a test's stream), not a tty
        return _DEFAULT_COLUMNS
    return columns or _DEFAULT_COLUMNS


def progress_bar(
    label: str,
    total: int,
    *,
    unit: str = "messages",
    quiet: bool = False,
    stream: TextIO | None,
    minimum: int = 0,
) -> ProgressBar:
    """A bar on ``stream`` when :func:`wants_progress` allows it and ``total`` exceeds
    ``minimum``; otherwise a bar that draws nothing (the caller's code stays the same)."""
    shown = total > minimum and wants_progress(stream, quiet=quiet)
    return ProgressBar(label, total, unit=unit, stream=stream if shown else None)
