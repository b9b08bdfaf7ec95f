"""Child process for test_crash.py: accept messages forever, acknowledging each on stdout.

Usage: python crash_child.py QUEUE_DIR

Each message follows smtps + qmgr's commit path (content file fsync, shared directory fsync,
group-committed envelope) and only then writes ``<qid>\\n`` to stdout: the stand-in for the 250
reply. Everything about a message is derived from its id so that the test can check it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import trio

from meta1py.queue.content import ContentWriter, DirectorySyncer
from meta1py.queue.envelopes import Envelope, EnvelopeStore, GroupCommitter, Recipient, envelope_store_path
from meta1py.queue.ids import queue_id_time

CONCURRENCY = 16


def expected_body(qid: str) -> bytes:
    """The content of message ``qid``."""
    return hashlib.sha256(qid.encode()).hexdigest().encode() * (1 + ord(qid[-1]) % 50)


def expected_envelope(qid: str) -> Envelope:
    """The envelope of message ``qid``."""
    n = ord(qid[-1]) % 4 + 1
    return Envelope(
        qid=qid,
        sender=f"sender-{qid.lower()}@example.org",
        arrival_time=queue_id_time(qid),
        size=len(expected_body(qid)),
        envid=qid,
        client_address="127.0.0.1",
        client_helo=f"helo-{qid}",
        recipients=tuple(Recipient(idx=i, address=f"r{i}-{qid.lower()}@example.net") for i in range(n)),
    )


async def main(queue_dir: Path) -> None:
    store = EnvelopeStore(envelope_store_path(queue_dir))
    committer = GroupCommitter(store)
    syncer = DirectorySyncer()

    async def accept_forever() -> None:
        while True:
            writer = ContentWriter(queue_dir)
            # The envelope's arrival time comes from the id; a real smtps would record time.time().
            writer.write(expected_body(writer.qid))
            await trio.to_thread.run_sync(writer.finish)
            await syncer.sync(writer.path.parent)
            await committer.commit_new(expected_envelope(writer.qid))
            # One write() of a short line: atomic on a pipe, so the test never sees half an id.
            os.write(1, f"{writer.qid}\n".encode())

    async with trio.open_nursery() as nursery:
        for _ in range(CONCURRENCY):
            nursery.start_soon(accept_forever)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
