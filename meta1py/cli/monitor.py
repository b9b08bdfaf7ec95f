"""``meta1 monitor``: what the MTA does, second by second (like OpenSMTPD's ``smtpctl monitor``).

Every interval (1 s unless ``-i``) it asks qmgr for the counters (``QueueStatusRequest``, the
same numbers as the metrics endpoint) and prints one line of what changed since the last one::

    TIME        CONN   RECV  DELIV  DEFER BOUNCE REJECT  QUEUE
    07:12:44       3      3      2      0      0      1      4

CONN connections smtps accepted, RECV messages queued, DELIV recipients delivered, DEFER
deferrals, BOUNCE recipients bounced or expired, REJECT refusals by smtps (connections, commands,
messages), QUEUE messages in the queue now. On a terminal the header comes again every screenful;
otherwise (a pipe, a file) it is printed once and each line is flushed as it is written. smtps
reports its counters about once a second, so a connection may show up one line late.

Ctrl-C ends it with status 0; so does the end of ``-c COUNT`` lines. It exits 69 when qmgr cannot
be reached at the start (78 when the configuration cannot be read); later, an interval without an
answer is a line saying so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from meta1py.cli.status import ask_qmgr, load
from meta1py.conf import Config
from meta1py.metrics import (
    QMGR_BOUNCED,
    QMGR_DEFERRED,
    QMGR_DELIVERED,
    QMGR_RECEIVED,
    SMTPS_CONNECTIONS,
    SMTPS_REJECTED,
    Metric,
)
from meta1py.rpc.errors import RpcError
from meta1py.rpc.messages import QueueStatusReply

EX_OK = 0
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CONFIG = 78

#: The counted columns: (heading, metric summed over its labels).
COLUMNS: tuple[tuple[str, Metric], ...] = (
    ("CONN", SMTPS_CONNECTIONS),
    ("RECV", QMGR_RECEIVED),
    ("DELIV", QMGR_DELIVERED),
    ("DEFER", QMGR_DEFERRED),
    ("BOUNCE", QMGR_BOUNCED),
    ("REJECT", SMTPS_REJECTED),
)
_WIDTH = 6


def header() -> str:
    """The column headings."""
    return f"{'TIME':<9}" + "".join(f" {name:>{_WIDTH}}" for name, _m in COLUMNS) + f" {'QUEUE':>{_WIDTH}}"


def sums(reply: QueueStatusReply) -> dict[str, int]:
    """Each counter of ``reply`` summed over its labels, by metric name."""
    found: dict[str, int] = {}
    for c in reply.counters:
        found[c.name] = found.get(c.name, 0) + c.value
    return found


def line(when: float, before: Mapping[str, int], after: Mapping[str, int], queue: int | None) -> str:
    """One line: what each column's counter gained between two samples, and the queue now.

    A counter that went down was reset (qmgr restarted): the line shows its new value.
    """
    cells = []
    for _name, metric in COLUMNS:
        new, old = after.get(metric.name, 0), before.get(metric.name, 0)
        cells.append(new - old if new >= old else new)
    shown_queue = "-" if queue is None else str(queue)
    return (
        time.strftime("%H:%M:%S", time.localtime(when)).ljust(9)
        + "".join(f" {n:>{_WIDTH}}" for n in cells)
        + f" {shown_queue:>{_WIDTH}}"
    )


def queue_size(reply: QueueStatusReply) -> int | None:
    """Messages in the queue, None when qmgr cannot open its store."""
    return reply.messages if reply.queue_open else None


class Printer:
    """Writes lines with the header: every screenful on a terminal, once otherwise."""

    def __init__(self, out: TextIO, rows: Callable[[], int] | None = None) -> None:
        self.out = out
        self.tty = out.isatty()
        self._rows = rows or (lambda: shutil.get_terminal_size().lines)
        self._since_header: int | None = None

    def print(self, text: str) -> None:
        if self._since_header is None or (self.tty and self._since_header >= max(1, self._rows() - 1)):
            self.out.write(header() + "\n")
            self._since_header = 0
        self.out.write(text + "\n")
        self.out.flush()
        self._since_header += 1


async def monitor(cfg: Config, interval_s: float, count: int | None, out: TextIO) -> int:
    """Print ``count`` lines (forever when None), one every ``interval_s``."""
    import trio

    try:
        first = await ask_qmgr(cfg, errors=False, by_state=False)
    except (OSError, RpcError) as exc:
        print(f"meta1 monitor: cannot reach qmgr: {exc}; is meta1 running?", file=sys.stderr)
        return EX_UNAVAILABLE
    before = sums(first)
    printer = Printer(out)
    shown = 0
    next_at = trio.current_time()
    while count is None or shown < count:
        next_at += interval_s
        await trio.sleep_until(next_at)
        try:
            reply = await ask_qmgr(cfg, errors=False, by_state=False, timeout=max(0.5, interval_s))
        except (OSError, RpcError) as exc:
            printer.print(f"{time.strftime('%H:%M:%S'):<9} qmgr not answering: {exc}")
        else:
            after = sums(reply)
            printer.print(line(time.time(), before, after, queue_size(reply)))
            before = after
        shown += 1
    return EX_OK


async def _until_interrupted(cfg: Config, interval_s: float, count: int | None, out: TextIO) -> int:
    """:func:`monitor` until it ends or Ctrl-C: SIGINT is received as a signal here, not raised as
    KeyboardInterrupt wherever the monitor happens to be (an exit by SIGINT, not 0, when it
    escaped in between)."""
    import signal

    import trio

    status = EX_OK
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                nonlocal status
                status = await monitor(cfg, interval_s, count, out)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            async for _ in interrupts:
                nursery.cancel_scope.cancel()
                break
    return status


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def main(argv: list[str]) -> int:
    """``meta1 monitor [-f FILE] [-i SECONDS] [-c COUNT]``."""
    parser = argparse.ArgumentParser(
        prog="meta1 monitor",
        description="Print what meta1 does, one line per interval: connections, messages received, "
        "recipients delivered, deferred and bounced, refusals, and the queue's size. Ctrl-C ends it.",
    )
    parser.add_argument("-f", dest="config", metavar="FILE", help="configuration file")
    parser.add_argument(
        "-i", dest="interval", metavar="SECONDS", type=_positive, default=1.0, help="seconds per line (1)"
    )
    parser.add_argument("-c", dest="count", metavar="COUNT", type=_count, help="stop after COUNT lines")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_USAGE if exc.code else EX_OK
    cfg = load(args.config, "meta1 monitor")
    if cfg is None:
        return EX_CONFIG
    import trio

    try:
        return trio.run(_until_interrupted, cfg, args.interval, args.count, sys.stdout)
    except BaseException as exc:
        # Ctrl-C: trio raises it, wrapped in a group when it came while a nursery was open.
        interrupted = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, BaseExceptionGroup) and exc.split(KeyboardInterrupt)[1] is None
        )
        if interrupted:
            return EX_OK
        if isinstance(exc, BrokenPipeError):
            # The reader went away (| head): not an error. Keep the interpreter's last flush quiet.
            sys.stdout = open(os.devnull, "w")
            return EX_OK
        raise
