"""Measure envelope commit rates: SQLite (WAL, synchronous=FULL) against an append-only log.

Usage::

    .venv/bin/python bench/queue_commit.py [--dir DIR] [--seconds S]

DIR must be on the filesystem the queue will live on (default: the system temporary directory).
For each store and batch size (1, 10, 50 envelopes per transaction) it commits for S seconds and
prints transactions per second and envelopes per second; then it runs :class:`GroupCommitter` with
1, 10 and 50 concurrent committers (the real path: batching is automatic) and a content-file round
(create + 4 KiB + fsync + shared directory fsync). Both stores pay one fsync per transaction; the
log stands in for the best an append-only design can do (one ``write`` + ``fsync``, checkpoints not
counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import trio

from meta1py.queue.content import ContentWriter, DirectorySyncer
from meta1py.queue.envelopes import Envelope, EnvelopeStore, GroupCommitter, Recipient
from meta1py.queue.ids import new_queue_id

BATCH_SIZES = (1, 10, 50)


_used_ids: set[str] = set()


def unique_id() -> str:
    """A queue id not used before in this run (ids are only claimed by content files, see ids.py)."""
    while (qid := new_queue_id()) in _used_ids:
        pass
    _used_ids.add(qid)
    return qid


def make_envelope(n_rcpts: int = 2) -> Envelope:
    """A typical relayed message's envelope."""
    return Envelope(
        qid=unique_id(),
        sender="sender@example.org",
        arrival_time=time.time(),
        size=4096,
        client_address="127.0.0.1",
        client_helo="client.example.org",
        recipients=tuple(
            Recipient(idx=i, address=f"rcpt{i}@example.net", next_attempt=time.time()) for i in range(n_rcpts)
        ),
    )


class AppendLog:
    """The alternative: length+CRC framed JSON records appended to one file, one fsync per batch."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def append(self, envelopes: list[Envelope]) -> None:
        """Write one batch and fsync it."""
        chunks = []
        for env in envelopes:
            record = json.dumps(
                {
                    "qid": env.qid,
                    "sender": env.sender,
                    "arrival_time": env.arrival_time,
                    "size": env.size,
                    "client_address": env.client_address,
                    "client_helo": env.client_helo,
                    "rcpts": [[r.idx, r.address, r.status, r.next_attempt] for r in env.recipients],
                }
            ).encode()
            chunks.append(b"%d %08x\n%s\n" % (len(record), zlib.crc32(record), record))
        os.write(self._fd, b"".join(chunks))
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def measure(commit: Callable[[list[Envelope]], None], batch: int, seconds: float) -> float:
    """Commit batches of ``batch`` envelopes for ``seconds``; return transactions per second."""
    batches = [[make_envelope() for _ in range(batch)] for _ in range(64)]
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        envs = batches[count % len(batches)]
        # Fresh ids each time (the store rejects duplicates); cheap next to the fsync.
        commit([dataclasses.replace(e, qid=unique_id()) for e in envs])
        count += 1
    return count / elapsed


async def measure_group(store: EnvelopeStore, concurrency: int, seconds: float) -> tuple[float, float]:
    """Run ``concurrency`` tasks committing one envelope at a time; return (envelopes/s, envs/txn)."""
    committer = GroupCommitter(store)
    done = 0
    deadline = trio.current_time() + seconds

    async def worker() -> None:
        nonlocal done
        while trio.current_time() < deadline:
            await committer.commit_new(make_envelope())
            done += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - start
    return done / elapsed, committer.operations / max(committer.commits, 1)


async def measure_content(queue_dir: Path, concurrency: int, seconds: float) -> tuple[float, float]:
    """Content files of 4 KiB: create, write, fsync in a thread, shared directory fsync."""
    syncer = DirectorySyncer()
    done = 0
    body = os.urandom(4096)
    deadline = trio.current_time() + seconds

    async def worker() -> None:
        nonlocal done
        while trio.current_time() < deadline:
            writer = ContentWriter(queue_dir)
            writer.write(body)
            await trio.to_thread.run_sync(writer.finish)
            await syncer.sync(writer.path.parent)
            done += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - start
    return done / elapsed, done / max(syncer.fsyncs, 1)


def main() -> None:
    """Run every measurement and print the table and the conclusion."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="queue-bench-", dir=args.dir))
    try:
        print(f"directory: {work}  ({args.seconds:g} s per figure, {os.cpu_count()} CPUs)\n")
        print(f"{'store':<22}{'batch':>6}{'txn/s':>10}{'envelopes/s':>14}")
        results: dict[tuple[str, int], float] = {}
        for batch in BATCH_SIZES:
            store = EnvelopeStore(work / f"sqlite-{batch}.sqlite")
            rate = measure(store.insert_envelopes, batch, args.seconds)
            store.close()
            results["sqlite", batch] = rate
            print(f"{'sqlite WAL FULL':<22}{batch:>6}{rate:>10.0f}{rate * batch:>14.0f}")
            log = AppendLog(work / f"log-{batch}.log")
            rate = measure(log.append, batch, args.seconds)
            log.close()
            results["log", batch] = rate
            print(f"{'append log + fsync':<22}{batch:>6}{rate:>10.0f}{rate * batch:>14.0f}")

        print(f"\n{'GroupCommitter':<22}{'tasks':>6}{'envs/txn':>10}{'envelopes/s':>14}")
        for concurrency in BATCH_SIZES:
            store = EnvelopeStore(work / f"group-{concurrency}.sqlite")
            rate, per_txn = trio.run(measure_group, store, concurrency, args.seconds)
            store.close()
            print(f"{'sqlite WAL FULL':<22}{concurrency:>6}{per_txn:>10.1f}{rate:>14.0f}")

        print(f"\n{'content 4 KiB':<22}{'tasks':>6}{'files/dirsync':>14}{'files/s':>10}")
        (work / "queue").mkdir()
        content_rate = 0.0
        for concurrency in BATCH_SIZES:
            rate, per_sync = trio.run(measure_content, work / "queue", concurrency, args.seconds)
            print(f"{'file+dir fsync':<22}{concurrency:>6}{per_sync:>14.1f}{rate:>10.0f}")
            content_rate = max(content_rate, rate)

        ratio = {b: results["log", b] / results["sqlite", b] for b in BATCH_SIZES}
        print(
            "\nconclusion: the log commits "
            + ", ".join(f"{ratio[b]:.2f}x" for b in BATCH_SIZES)
            + " as many transactions as SQLite at batch "
            + "/".join(str(b) for b in BATCH_SIZES)
            + f".\nSQLite still commits {results['sqlite', 10] * 10:.0f} envelopes/s in batches of"
            f" 10, several times the\n{content_rate:.0f} content files/s measured above, so the"
            " envelope store is not the bottleneck.\nSQLite is chosen for its atomic batches, crash"
            " recovery, indexed queries and concurrent\nread-only access for the queue CLI."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
