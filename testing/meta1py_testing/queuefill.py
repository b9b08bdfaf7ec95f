"""Fill a stopped daemon's queue with many deferred messages, cheaply.

Submitting 100,000 messages over SMTP and waiting for each first attempt to fail takes many
minutes; the operator commands under test (``meta1 queue delete --all-deferred``) only need them
queued. :func:`fill_deferred` writes what smtps and qmgr would have left: a content file per
message (written as smtps writes it, without its fsyncs: nothing here needs to survive a
crash) and one envelope each whose
recipient was deferred an hour ago and is due again in an hour, all envelopes in one
transaction. Run it while mcp is stopped (qmgr owns the store while it runs); mcp gives the
envelope store back to qmgr's user at its next start.
"""

from __future__ import annotations

import os
import time

from meta1py.queue.content import ContentWriter
from meta1py.queue.envelopes import Envelope, EnvelopeStore, Recipient, envelope_store_path

__all__ = ["DEFERRED_REPLY", "fill_deferred"]

#: The last reply of every recipient :func:`fill_deferred` queues.
DEFERRED_REPLY = "451 4.3.0 temporary failure (queued by the test)"

_BODY = b"From: a@localhost\r\nTo: someone@example.net\r\nSubject: filler\r\n\r\nqueued directly\r\n"


def fill_deferred(
    queue_directory: str | os.PathLike[str],
    count: int,
    *,
    domain: str = "example.net",
    sender: str = "a@localhost",
    retry_in_s: float = 3600.0,
) -> list[str]:
    """Queue ``count`` messages with one deferred recipient each (``u<i>@domain``).

    Args:
        queue_directory: the daemon's queue directory (the daemon started once, so that it
            exists with its content subdirectories, and is stopped now).
        count: how many messages.
        domain: the recipients' domain.
        sender: the envelope sender.
        retry_in_s: seconds until the recipients are due again (qmgr leaves them alone until
            then).

    Returns:
        The queue ids, in the order they were queued.
    """
    now = time.time()
    envelopes: list[Envelope] = []
    for i in range(count):
        writer = ContentWriter(queue_directory)
        writer.write(_BODY)
        writer.close_unsynced()
        envelopes.append(
            Envelope(
                qid=writer.qid,
                sender=sender,
                arrival_time=now - 3600,
                size=len(_BODY),
                client_address="127.0.0.1",
                client_helo="localhost",
                recipients=(
                    Recipient(
                        idx=0,
                        address=f"u{i}@{domain}",
                        status="deferred",
                        attempts=1,
                        next_attempt=now + retry_in_s,
                        last_attempt=now - 3600,
                        last_reply=DEFERRED_REPLY,
                    ),
                ),
            )
        )
    with EnvelopeStore(envelope_store_path(queue_directory)) as store:
        store.insert_envelopes(envelopes)
    return [env.qid for env in envelopes]
