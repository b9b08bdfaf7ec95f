"""Measure how fast qmgr empties the pickup directory, and what one offline submission costs.

Usage::

    .venv/bin/python bench/pickup.py [--dir DIR] [--files N] [--rounds R]

DIR must be on the filesystem the queue will live on (default: the system temporary directory).

1. ``write``: :func:`meta1py.queue.pickup.write_pickup_file` (what ``meta1 sendmail`` does when
   smtps cannot take a message, as root or the queue's owner): a temporary file, the data, link to
   the final name, fsync of the file and of the directory. Files per second, one writer.
2. ``drain``: N such files (2 KiB messages, two recipients) queued by the real
   :class:`meta1py.qmgr.pickup.Pickup` through the real :class:`QueueManager`'s commit (content
   file, fsyncs, group-committed envelope) on a real queue directory: messages per second, with 1
   and with 16 files at a time (the shipped setting), so the concurrency is justified by numbers.

Medians of R rounds. No peers: nothing is delivered (the manager's loop does not run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import trio

import meta1py.qmgr.pickup as pickup_module
from meta1py.conf import parse_config
from meta1py.qmgr.manager import QueueManager
from meta1py.qmgr.pickup import Pickup
from meta1py.queue.envelopes import EnvelopeStore, envelope_store_path
from meta1py.queue.pickup import PickupEnvelope, PickupRecipient, encode_envelope, write_pickup_file

BODY = b"From: cron@example.org\r\nSubject: nightly\r\n\r\n" + b"x" * 70 + b"\r\n"
CONTENT = BODY * (2048 // len(BODY))
HEADER = encode_envelope(
    PickupEnvelope(
        "cron@example.org",
        (PickupRecipient("ops@example.net"), PickupRecipient("dev@example.net")),
        size=len(CONTENT),
    )
)


def fill(directory: Path, count: int) -> float:
    """Write ``count`` pickup files; return files per second."""
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for _ in range(count):
        write_pickup_file(directory, [HEADER, CONTENT])
    return count / (time.perf_counter() - start)


def drain(base: Path, count: int, concurrency: int) -> float:
    """Queue ``count`` pickup files with ``concurrency`` at a time; return messages per second."""
    # A fresh directory each time: ContentWriter remembers the content directories it made.
    queue_dir = Path(tempfile.mkdtemp(prefix=f"q{concurrency}-", dir=base))
    fill(queue_dir / "pickup", count)
    config = parse_config(f"hostname = bench.example; queue_directory = {queue_dir};")
    store = EnvelopeStore(envelope_store_path(queue_dir))
    pickup_module._CONCURRENCY = concurrency  # the shipped value is restored by the caller
    try:
        manager = QueueManager(config, store, None, None)  # type: ignore[arg-type]
        picker = Pickup(config, manager.handle)

        async def run() -> float:
            start = time.perf_counter()
            queued = await picker.scan()
            elapsed = time.perf_counter() - start
            assert queued == count, (queued, count)
            return count / elapsed

        return trio.run(run)
    finally:
        store.close()
        shutil.rmtree(queue_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="meta1-bench-pickup-", dir=args.dir))
    shipped = pickup_module._CONCURRENCY
    try:
        results: dict[str, float] = {}
        writes = [fill(base / f"w{r}", args.files) for r in range(args.rounds)]
        results["write_files_per_s"] = statistics.median(writes)
        for concurrency in (1, shipped):
            rates = [drain(base, args.files, concurrency) for _ in range(args.rounds)]
            results[f"drain_{concurrency}_at_a_time_msgs_per_s"] = statistics.median(rates)
        print(json.dumps({k: round(v) for k, v in results.items()}, indent=2))
    finally:
        pickup_module._CONCURRENCY = shipped
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
