"""Transactions per second through the sans-IO SMTP server core.

A typical pipelined transaction, one session each: greeting, EHLO, MAIL,
3 x RCPT, DATA, a 4 KiB body, end of data, RSET, NOOP, QUIT (10 commands).
Input arrives in two reads (the command group, then body + the rest), as a
PIPELINING client sends it. Prints transactions/second; the goal is well
over 20,000/s on one core.

The server core caches parsed command lines (see meta1py/smtp/server.py), so
in the repeated run every line after the first transaction is a cache hit.
The unique run gives every transaction its own sender and recipients (10,000
different ones, more than the cache keeps), as real traffic has: MAIL and
RCPT are parsed every time (by the server's MAIL/RCPT fast path). By default
both figures are printed, the unique one second.

Usage: python bench/smtp_core.py [seconds per figure] [--unique]
"""

from __future__ import annotations

import sys
import time

from meta1py.smtp import replies
from meta1py.smtp.events import (
    NEED_DATA,
    ConnectionClosed,
    DataChunk,
    DataStart,
    Ehlo,
    EndOfData,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Rset,
)
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.server import ServerConnection

LINE = b"The quick brown fox jumps over the lazy dog, again and again, ok.\r\n"  # 68 octets
BODY = b"Subject: benchmark\r\n\r\n" + (LINE * 61)[: 4096 - 22 - 2] + b"\r\n"
HEAD = (
    b"EHLO client.example\r\nMAIL FROM:<alice@client.example> SIZE=4096\r\n"
    b"RCPT TO:<bob@mx.example>\r\nRCPT TO:<carol@mx.example>\r\nRCPT TO:<dave@mx.example>\r\n"
    b"DATA\r\n"
)
TAIL = BODY + b".\r\nRSET\r\nNOOP\r\nQUIT\r\n"
EXT = Extensions.all()
GREETING = replies.greeting("mx.example")
OK = replies.ok()
SENDER_OK = replies.sender_ok()
RCPT_OK = replies.recipient_ok()
DATA_START = replies.data_start()
QUEUED = replies.queued("0123456789AB")
CLOSING = replies.closing()


def unique_heads(n: int) -> list[bytes]:
    """HEAD with n different senders and recipient sets."""
    return [
        HEAD.replace(b"alice@", b"alice%d@" % i)
        .replace(b"<bob@", b"<bob%d@" % i)
        .replace(b"<carol@", b"<carol%d@" % i)
        .replace(b"<dave@", b"<dave%d@" % i)
        for i in range(n)
    ]


def one_transaction(head: bytes = HEAD) -> int:
    conn = ServerConnection("mx.example", extensions=EXT)
    out = conn.send(GREETING)
    size = 0
    reads = [head, TAIL]
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            conn.receive_data(reads.pop(0) if reads else b"")
            continue
        t = type(ev)
        if t is DataChunk:
            size += len(ev.data)  # type: ignore[union-attr]
        elif t is RcptTo:
            out += conn.send(RCPT_OK)
        elif t is MailFrom:
            out += conn.send(SENDER_OK)
        elif t is Ehlo:
            out += conn.send(conn.ehlo_reply())
        elif t is DataStart:
            out += conn.send(DATA_START)
        elif t is EndOfData:
            out += conn.send(QUEUED)
        elif t is Rset or t is Noop:
            out += conn.send(OK)
        elif t is Quit:
            out += conn.send(CLOSING)
        elif t is ConnectionClosed:
            return size
        else:
            raise AssertionError(ev)


def measure(heads: list[bytes], seconds: float) -> tuple[int, float]:
    """Run transactions cycling through ``heads`` for ``seconds``; return (count, elapsed s)."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for i in range(n, n + 200):
            one_transaction(heads[i % len(heads)])
        n += 200
    return n, time.perf_counter() - start


def report(title: str, n: int, elapsed: float) -> None:
    print(f"{title}: {n} transactions in {elapsed:.2f} s: {n / elapsed:,.0f} transactions/s")
    print(f"  {elapsed / n * 1e6:.1f} us per transaction")


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--unique"]
    seconds = float(args[0]) if args else 3.0
    only_unique = "--unique" in sys.argv[1:]
    assert one_transaction() == len(BODY)
    print(f"body {len(BODY)} octets, 10 commands per transaction")
    if not only_unique:
        report("repeated (same addresses, parse cache hits)", *measure([HEAD], seconds))
    report("unique (different addresses each)", *measure(unique_heads(10_000), seconds))


if __name__ == "__main__":
    main()
