"""Maildir delivery (the qmail maildir(5) format).

A message is written to ``tmp/`` under a unique name, fsync'd, then linked into ``new/`` (falling
back to rename where hard links are not supported) and the ``new/`` directory is fsync'd. Only then
is the delivery reported as done: a crash at any point leaves either nothing in ``new/`` or the whole
message. Readers never see partial files because they only look in ``new/`` and ``cur/``.

Unique names follow the modern qmail/Dovecot convention ``<sec>.M<usec>P<pid>Q<n>.<host>``: seconds
and microseconds of the delivery time, the process id and a per-process counter (so two deliveries
in the same microsecond by the same process differ), and the host name with ``/`` and ``:`` escaped
as ``\\057`` and ``\\072`` because those characters are reserved in Maildir file names.

Line endings: the queue stores messages exactly as received, with CRLF. Maildir files use the local
newline convention (LF on Unix) -- that is what MUAs, Dovecot and procmail expect -- so CRLF is
converted to LF while copying. A lone CR is left alone.

The code is synchronous (plain file I/O and fsync); smtpc calls it through ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

from meta1py.envelope import DeliveryStatus
from meta1py.message.delivered_to import delivered_to_header, has_delivered_to
from meta1py.message.return_path import read_head_without_return_path, return_path_header
from meta1py.smtp.status import PERM_ROUTING_LOOP, SUCCESS, TEMP_MAIL_SYSTEM_ERROR, TEMP_MAILBOX_FULL

__all__ = ["DeliveryOutcome", "deliver_maildir", "maildir_unique_name", "write_maildir_message"]

#: Bytes copied per read; messages are streamed, never held whole in memory.
_CHUNK_BYTES = 64 * 1024

_counter = itertools.count(1)
_counter_lock = threading.Lock()


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """The result of delivering to one recipient.

    Attributes:
        status: ``"ok"`` (delivered), ``"temp"`` (try again later) or ``"perm"`` (give up).
        code: The SMTP reply code that describes it (250, 4xx, 5xx).
        enhanced: The RFC 3463 enhanced status code, e.g. ``"2.0.0"``.
        text: Human-readable detail (never contains secrets; may name the file).
    """

    status: DeliveryStatus
    code: int
    enhanced: str
    text: str


def maildir_unique_name(hostname: str, now: float | None = None) -> str:
    """Return a new unique Maildir file name (without the ``:2,`` info suffix).

    Args:
        hostname: This host's name; ``/`` and ``:`` are escaped as the Maildir spec requires.
        now: The time to use (seconds since the epoch); defaults to the current time.

    Returns:
        A name like ``1700000000.M123456P4242Q1.mx.example.org``.
    """
    if now is None:
        now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    with _counter_lock:
        n = next(_counter)
    host = hostname.replace("/", "\\057").replace(":", "\\072") or "localhost"
    return f"{sec}.M{usec}P{os.getpid()}Q{n}.{host}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_maildir(maildir: Path) -> None:
    """Create ``maildir`` and its tmp/new/cur, fsyncing the parent of every directory created."""
    created: list[Path] = []
    missing: list[Path] = []
    p = maildir
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
            created.append(d)
        except FileExistsError:
            pass  # a concurrent delivery made it
    for sub in ("tmp", "new", "cur"):
        d = maildir / sub
        try:
            d.mkdir(mode=0o700)
            created.append(d)
        except FileExistsError:
            pass
    # A new directory entry is durable only once its parent directory is synced.
    for parent in dict.fromkeys(d.parent for d in created):
        _fsync_dir(parent)


def _copy_lf(content: BinaryIO, out: BinaryIO) -> None:
    """Copy ``content`` to ``out`` converting CRLF to LF, across chunk boundaries."""
    pending_cr = False
    while chunk := content.read(_CHUNK_BYTES):
        if pending_cr:
            chunk = b"\r" + chunk
            pending_cr = False
        if chunk.endswith(b"\r"):
            # The LF may be in the next chunk: hold the CR back.
            chunk = chunk[:-1]
            pending_cr = True
        out.write(chunk.replace(b"\r\n", b"\n"))
    if pending_cr:
        out.write(b"\r")


def write_maildir_message(content: BinaryIO, out: BinaryIO, recipient: str, sender: str | None) -> None:
    """Write what a Maildir file holds: ``Return-Path:`` (when ``sender`` is not None),
    ``Delivered-To: <recipient>``, then the stored message with LF line ends.

    Raises:
        ValueError: ``sender`` cannot be written as a header.
    """
    if sender is not None:
        out.write(return_path_header(sender, newline=b"\n"))
    out.write(delivered_to_header(recipient, newline=b"\n"))
    # A Return-Path: that came with the message goes: this one is the envelope's.
    out.write(read_head_without_return_path(content).replace(b"\r\n", b"\n"))
    _copy_lf(content, out)


def _temp_failure(exc: OSError, what: str) -> DeliveryOutcome:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DeliveryOutcome("temp", 452, TEMP_MAILBOX_FULL, f"mailbox full: {what}: {exc.strerror}")
    return DeliveryOutcome(
        "temp", 451, TEMP_MAIL_SYSTEM_ERROR, f"maildir delivery failed: {what}: {exc.strerror}"
    )


def deliver_maildir(
    maildir: Path,
    content: BinaryIO,
    recipient: str,
    hostname: str,
    *,
    create: bool = True,
    sender: str | None = None,
) -> DeliveryOutcome:
    """Deliver one message into a Maildir.

    Adds ``Return-Path: <sender>`` (RFC 5321 §4.4: the final delivery records the envelope
    sender; :mod:`meta1py.message.return_path`) and ``Delivered-To: <recipient>``
    (:mod:`meta1py.message.delivered_to`) at the top of the message, in that order, as Postfix's
    local(8) and virtual(8) do. If the header already holds that same ``Delivered-To`` the message
    has looped back to us (an alias or forward pointing at itself), so it is refused permanently
    instead of delivered again.

    Args:
        maildir: The Maildir (the directory holding ``tmp``, ``new`` and ``cur``).
        content: The stored message as received (CRLF line endings), positioned at its start.
        recipient: The address being delivered to (goes into ``Delivered-To``).
        hostname: This host's name, used in the unique file name.
        create: Create the Maildir (and missing parents) if it does not exist; otherwise a
            missing Maildir is a temporary failure.
        sender: The envelope sender ("" for the null sender of a bounce); None: no Return-Path.

    Returns:
        ``ok`` 250 2.0.0 when the file is durably in ``new/``; ``perm`` 554 5.4.6 on a loop;
        ``temp`` 452 4.2.2 when the disk or quota is full, 451 4.3.0 on other file system errors
        (never a partial file in ``new/``).
    """
    start = content.tell()
    if has_delivered_to(content, recipient):
        return DeliveryOutcome("perm", 554, PERM_ROUTING_LOOP, f"mail loop: already delivered to {recipient}")
    content.seek(start)

    try:
        if create:
            _ensure_maildir(maildir)
        elif not (maildir / "tmp").is_dir() or not (maildir / "new").is_dir():
            return DeliveryOutcome("temp", 451, TEMP_MAIL_SYSTEM_ERROR, f"no such maildir: {maildir}")
    except OSError as exc:
        return _temp_failure(exc, "creating maildir")

    name = maildir_unique_name(hostname)
    tmp_path = maildir / "tmp" / name
    new_path = maildir / "new" / name
    try:
        # O_EXCL: the unique name must really be unique; a clash is a bug or a clock jump.
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return _temp_failure(exc, "creating file")
    linked = False  # whether new_path is ours to remove on failure
    try:
        with os.fdopen(fd, "wb") as out:
            write_maildir_message(content, out, recipient, sender)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp_path, new_path)
            linked = True
            os.unlink(tmp_path)
        except OSError as exc:
            if linked:
                raise
            # Some file systems (and some container setups) do not do hard links; a rename is
            # just as atomic, only it cannot detect a name collision in new/.
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise
            os.rename(tmp_path, new_path)
            linked = True
        _fsync_dir(maildir / "new")
    except OSError as exc:
        # Nothing partial may stay behind. If the file reached new/ it is whole (fsync'd before
        # the link) but not durably announced, so it is taken back too and the delivery retried:
        # a retry that duplicates is better than a 250 for a message a crash could lose.
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if linked:
            with contextlib.suppress(OSError):
                new_path.unlink()
        return _temp_failure(exc, "writing message")
    return DeliveryOutcome("ok", 250, SUCCESS, f"delivered to maildir as {name}")
