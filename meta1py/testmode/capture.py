"""The store of captured deliveries: what test mode delivered instead of sending it away.

smtpc writes one record per message it delivered in test mode (to a captured destination, or to
a Maildir); qmgr's control API lists, reads and clears them (``GET /messages`` and friends,
docs/testmode.md). Bounces and delay warnings are messages like any other: qmgr queues them, smtpc
delivers them to the sender's (captured) domain.

Layout: ``<queue_directory>/test/messages/<id>.eml`` (the message as delivered, with the headers
the MTA added) and ``<id>.json`` (its record, below). The ``.json`` file is renamed into place
last: a record without it is not there yet. Ids sort by capture time.

A record (``CaptureRecord.to_json``)::

    {"id": "0001796330000123-2R4H6XQ9ZK3M-a1b2c3", "qid": "2R4H6XQ9ZK3M",
     "time": 1796330000.123,               # the virtual clock's time of the delivery
     "mail_from": "a@example.test", "rcpt_to": ["b@example.net"],
     "destination": "smtp:example.net", "transport": "smtp",
     "kind": "message" | "bounce" | "delay",
     "size": 1234,
     "recipients": [{"address": "b@example.net", "status": "delivered", "reply": "250 2.0.0 OK"}],
     "transcript": [["S", "220 example.net ESMTP"], ["C", "EHLO mx.test"], ...]}
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from meta1py import clock
from meta1py.queue.ids import is_queue_id

Kind = Literal["message", "bounce", "delay"]
MESSAGES_DIRNAME = "messages"
_FILE_MODE = 0o660


@dataclass
class CaptureRecord:
    """One captured delivery (see the module docstring)."""

    qid: str
    mail_from: str
    rcpt_to: list[str]
    destination: str
    transport: str
    kind: Kind = "message"
    size: int = 0
    recipients: list[dict[str, str]] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)
    time: float = 0.0
    id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "qid": self.qid,
            "time": self.time,
            "mail_from": self.mail_from,
            "rcpt_to": list(self.rcpt_to),
            "destination": self.destination,
            "transport": self.transport,
            "kind": self.kind,
            "size": self.size,
            "recipients": list(self.recipients),
            "transcript": [list(t) for t in self.transcript],
        }


def is_capture_id(value: object) -> bool:
    """Whether ``value`` is a capture id (safe as a file name: no ``/``, ``.`` or NUL)."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    parts = value.split("-")
    return (
        len(parts) == 3
        and parts[0].isdigit()
        and is_queue_id(parts[1])
        and all(c in "0123456789abcdef" for c in parts[2])
    )


class CaptureStore:
    """The captured deliveries in ``directory`` (``<queue_directory>/test/messages``)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def add(self, record: CaptureRecord, message: bytes) -> str:
        """Store one delivery; returns its id (also set on ``record``)."""
        now = clock.now()
        record.time = now
        record.size = len(message)
        record.id = f"{int(now * 1000):016d}-{record.qid}-{secrets.token_hex(3)}"
        self.directory.mkdir(parents=True, exist_ok=True)
        _write(self.directory / f"{record.id}.eml", message)
        _write(self.directory / f"{record.id}.json", json.dumps(record.to_json()).encode())
        return record.id

    def ids(self) -> list[str]:
        """Every complete record's id, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and is_capture_id(n[:-5]))

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, oldest first (one removed meanwhile is skipped)."""
        for capture_id in self.ids():
            record = self.record(capture_id)
            if record is not None:
                yield record

    def record(self, capture_id: str) -> dict[str, Any] | None:
        """One record, or None when there is no such id."""
        if not is_capture_id(capture_id):
            return None
        try:
            data = (self.directory / f"{capture_id}.json").read_bytes()
        except FileNotFoundError:
            return None
        try:
            record: dict[str, Any] = json.loads(data)
        except ValueError:
            return None
        return record

    def message(self, capture_id: str) -> bytes | None:
        """The message of one record, or None."""
        if not is_capture_id(capture_id):
            return None
        try:
            return (self.directory / f"{capture_id}.eml").read_bytes()
        except FileNotFoundError:
            return None

    def clear(self) -> int:
        """Remove every record; returns how many there were."""
        count = 0
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        for name in names:
            if name.endswith(".json"):
                count += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / name)
        return count


def _write(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    with open(fd, "wb") as f:
        f.write(data)
    os.replace(temp, path)
