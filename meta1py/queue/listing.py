"""The queue as mailq shows it: Postfix's ``postqueue -p`` layout, the stable JSON form, and the
files still waiting in the pickup directory.

Pure formatting, plus one directory listing (:func:`pickup_files`). Used by ``meta1 queue list``
(``mailq``, ``sendmail -bp``), which reads the envelope store itself when it may, and by qmgr's
showq service (:mod:`meta1py.qmgr.showq`), which answers the users who may not.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from meta1py.queue.envelopes import Envelope, EnvelopeStore, MessageState, envelope_store_path
from meta1py.queue.pickup import is_pickup_name, pickup_directory

__all__ = [
    "PickupFile",
    "envelope_json",
    "format_list",
    "json_lines",
    "message_state",
    "pickup_files",
    "queue_listing",
]


def message_state(env: Envelope) -> str:
    """``hold``, ``deferred`` (some recipient deferred) or ``active``."""
    if env.hold:
        return "hold"
    if any(r.status == "deferred" for r in env.recipients):
        return "deferred"
    return "active"


def envelope_json(env: Envelope) -> dict[str, Any]:
    """The stable JSON form of one queued message (see docs/queue.md)."""
    return {
        "queue_id": env.qid,
        "queue_name": message_state(env),
        "arrival_time": int(env.arrival_time),
        "message_size": env.size,
        "sender": env.sender,
        "kind": env.kind,
        "recipients": [
            {
                "address": r.address,
                "status": r.status,
                "attempts": r.attempts,
                "next_attempt": int(r.next_attempt) if r.status == "deferred" else None,
                "delay_reason": r.last_reply if r.status == "deferred" else None,
                "last_reply": r.last_reply,
            }
            for r in env.recipients
        ],
    }


def _arrival(when: float) -> str:
    """Postfix's arrival time: the first 20 characters of asctime() ("Thu Mar  2 07:10:58 ")."""
    return time.asctime(time.localtime(when))[:20]


def format_list(envs: list[Envelope], now: float, pickup: list[PickupFile] | None = None) -> str:
    """mailq text in Postfix's layout (postqueue -p), which tools that parse mailq expect.

    One block per message: queue id with its mark (``*`` active, ``!`` hold, none deferred), size,
    arrival time, sender (``MAILER-DAEMON`` for ``<>``); then each pending recipient, after its
    last error in parentheses when it was deferred. Files still waiting in the pickup directory
    come last, as Postfix shows its maildrop queue. ``now`` is unused (the arrival time is
    absolute, as in Postfix); kept for the callers' sake.
    """
    pickup = pickup or []
    if not envs and not pickup:
        return "Mail queue is empty\n"
    out = ["-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    total = 0
    for env in envs:
        if len(out) > 1:
            out.append("")
        mark = {"hold": "!", "active": "*", "deferred": " "}[message_state(env)]
        sender = env.sender or "MAILER-DAEMON"
        out.append(f"{env.qid:<10}{mark}{env.size:>8} {_arrival(env.arrival_time):20.20} {sender}")
        reason = None
        for r in env.recipients:
            if r.is_final:
                continue
            if r.status == "deferred" and r.last_reply and r.last_reply != reason:
                reason = r.last_reply
                out.append(f"({reason[:300]})".rjust(78))
            out.append(f"{'':41}{r.address}")
        total += env.size
    for entry in pickup:
        if len(out) > 1:
            out.append("")
        out.append(
            f"{entry.name:<10} {entry.size:>8} {_arrival(entry.mtime):20.20} "
            f"(maildrop queue, sender UID {entry.uid})"
        )
        total += entry.size
    count = len(envs) + len(pickup)
    out.append("")
    out.append(f"-- {total // 1024} Kbytes in {count} Request{'s' if count != 1 else ''}.")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class PickupFile:
    """A file waiting in the pickup directory (mail ``meta1 sendmail`` wrote while smtps could not
    take it; qmgr queues it at start and every ``pickup_interval``)."""

    name: str
    size: int
    mtime: float
    uid: int


def pickup_files(queue_directory: str | os.PathLike[str]) -> list[PickupFile]:
    """The complete files in the pickup directory, oldest first; [] when it cannot be read."""
    directory = pickup_directory(queue_directory)
    found: list[PickupFile] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        if not is_pickup_name(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        found.append(PickupFile(entry.name, st.st_size, st.st_mtime, st.st_uid))
    return sorted(found, key=lambda f: (f.mtime, f.name))


def json_lines(envs: list[Envelope]) -> str:
    """One :func:`envelope_json` object per message per line (``postqueue -j``)."""
    return "".join(json.dumps(envelope_json(env), sort_keys=True) + "\n" for env in envs)


def queue_listing(
    queue_directory: str | os.PathLike[str],
    form: Literal["text", "json"],
    *,
    state: MessageState | None = None,
    domain: str | None = None,
    sender: str | None = None,
) -> str:
    """The queue as ``mailq`` (``text``) or ``--json`` shows it, read from the envelope store
    (read-only; empty when there is none yet), filtered as
    :meth:`~meta1py.queue.envelopes.EnvelopeStore.list_envelopes` filters. The text of an
    unfiltered listing ends with the files waiting in the pickup directory. Blocking.

    Raises:
        QueueStorageError: the store cannot be read.
    """
    path = envelope_store_path(queue_directory)
    envs: list[Envelope] = []
    if path.exists():
        with EnvelopeStore(path, readonly=True) as store:
            envs = store.list_envelopes(state=state, domain=domain, sender=sender)
    if form == "json":
        return json_lines(envs)
    filtered = state is not None or domain is not None or sender is not None
    return format_list(envs, time.time(), [] if filtered else pickup_files(queue_directory))
