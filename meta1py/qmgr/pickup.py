"""qmgr's pickup: queue the messages ``meta1 sendmail`` left in the pickup directory.

``meta1 sendmail`` writes a message into ``queue_directory/pickup`` when smtps cannot take it
(the MTA is stopped, or answers 4xx; see :mod:`meta1py.queue.pickup` for the file format and
:mod:`meta1py.cli.postdrop` for who may write there). qmgr owns the queue, so qmgr picks the files
up: at start and every ``qmgr { pickup_interval }``. For each complete file (temporary names,
which start with a dot, are never taken):

1. it opens the file without following links and checks that it is a regular file with one link
   and no larger than the largest message smtps accepts plus its envelope;
2. it streams it into a new content file, under a ``Received: from userid UID by HOST (meta1py
   pickup)`` header whose uid is the file's owner (the submitter: nobody can forge it), checking
   every envelope field and every content line as it goes (:mod:`meta1py.queue.pickup`:
   the file is hostile input, written by whoever can run ``meta1-postdrop``);
3. it commits the message through qmgr's own commit answer (the one smtps's
   ``QueueEnvelopeCommitRequest`` reaches): the content and its directory are fsync'd and the
   envelope committed durably before anything else happens, and the message is scheduled like
   any other (maillog ``queued ... origin=pickup uid=UID``);
4. only then does it remove the pickup file. A crash between 3 and 4 queues the message twice
   (at least once: a duplicate, never a loss).

A message whose header block already holds ``qmgr { max_hops }`` or more ``Received:`` lines
is in a mail loop (an alias or ``.forward`` command that submits it again): it is committed as
above and every recipient bounced at once with ``554 5.4.6`` before any delivery (as Postfix's
cleanup does with ``hopcount_limit``). The sender gets the bounce; nothing is delivered.

A file that is not a well-formed message is moved to ``queue_directory/corrupt`` with a warning
that names it and says what is wrong; it is never retried and never stops the others. A message
the queue cannot take now (a full disk: the commit answers 4xx) stays and is tried again at the
next scan. Temporary files older than an hour (a writer killed while writing) are removed.

Mail from the pickup directory is local submission: as with Postfix's pickup, smtps's policy
(relay check, access map, DNS lists) does not see it. Who may submit this way is decided by who
may write the directory: root, the queue's owner, and the users who can run ``meta1-postdrop``.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import trio

from meta1py import clock
from meta1py import log as mlog
from meta1py.conf import Config
from meta1py.message.hops import HeaderHead, count_hops
from meta1py.message.received import pickup_received_header
from meta1py.queue.content import ContentWriter
from meta1py.queue.errors import QueueStorageError
from meta1py.queue.pickup import (
    TEMP_PREFIX,
    PickupEnvelope,
    PickupFormatError,
    copy_pickup_content,
    corrupt_directory,
    is_pickup_name,
    max_file_bytes,
    pickup_directory,
    read_pickup_envelope,
)
from meta1py.rpc.messages import (
    QueueEnvelopeCommitReply,
    QueueEnvelopeCommitRequest,
    QueueRecipientValue,
    SmtpReplyValue,
)
from meta1py.rpc.schema import RpcMessage
from meta1py.smtp.replies import too_many_hops

log = logging.getLogger(__name__)

#: A temporary file this old was left by a writer that died: it is removed.
STALE_TEMP_S = 3600.0
#: Files committed at the same time, so that a full directory shares group commits (fsyncs).
_CONCURRENCY = 16

Commit = Callable[[QueueEnvelopeCommitRequest], Awaitable[RpcMessage | None]]
"""qmgr's answer to a commit (``handle`` in :func:`meta1py.qmgr.service.serve`)."""

BounceNew = Callable[[str, SmtpReplyValue], Awaitable[None]]
"""Bounce every recipient of a message just committed, before it is routed
(:meth:`meta1py.qmgr.manager.QueueManager.bounce_new`)."""

_LOOP = too_many_hops()
#: The answer for a message in a loop: smtps's reply at the end of DATA.
LOOP_REPLY = SmtpReplyValue(code=_LOOP.code, enhanced=_LOOP.enhanced or "", text=" ".join(_LOOP.lines))


class _Corrupt(Exception):
    """The file is not a message: it goes to the corrupt directory."""


@dataclass(frozen=True)
class _Taken:
    writer: ContentWriter
    envelope: PickupEnvelope
    uid: int
    hops: int


class Pickup:
    """Scans the pickup directory and commits what it finds (see the module docstring).

    Args:
        config: the configuration (queue directory, hostname, limits, interval).
        commit: qmgr's commit answer.
        bounce_new: bounces a committed message in a loop (None: the queue is not open, and
            every commit is refused anyway).
    """

    def __init__(self, config: Config, commit: Commit, bounce_new: Callable[[], BounceNew | None]) -> None:
        self.queue_dir = Path(config.queue_directory)
        self.directory = pickup_directory(self.queue_dir)
        self.corrupt_dir = corrupt_directory(self.queue_dir)
        self.hostname = config.hostname
        self.interval_s = config.qmgr.pickup_interval
        self.max_content_bytes = max(s.max_message_size for s in config.smtps)
        self.max_recipients = max(s.max_recipients for s in config.smtps)
        self.max_file_bytes = max_file_bytes(self.max_content_bytes, self.max_recipients)
        self._commit = commit
        self._bounce_new = bounce_new
        self.max_hops = config.qmgr.max_hops
        self._unmovable: set[str] = set()
        self.queued = 0
        """Messages queued from the pickup directory (for tests and diagnostics)."""
        self.moved_aside = 0
        """Files moved to the corrupt directory."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Scan now, then every ``pickup_interval``, until cancelled."""
        task_status.started()
        while True:
            await self.scan()
            await trio.sleep(self.interval_s)

    async def scan(self) -> int:
        """Take every complete file now; returns how many were queued."""
        names = await trio.to_thread.run_sync(self._list)
        before = self.queued
        limiter = trio.CapacityLimiter(_CONCURRENCY)

        async def one(name: str) -> None:
            async with limiter:
                await self._take(name)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        return self.queued - before

    def _list(self) -> list[str]:
        """The complete files in arrival order; stale temporary files are removed on the way."""
        found: list[tuple[float, str]] = []
        # File ages are measured on the real clock (mtimes are real), not test mode's virtual one.
        now = time.time()
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("pickup: cannot list %s: %s", self.directory, exc.strerror or exc)
            return []
        for entry in entries:
            name = entry.name
            if name in self._unmovable:
                continue
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("pickup: cannot look at %s: %s", name, exc.strerror or exc)
                continue
            if name.startswith(TEMP_PREFIX) and is_pickup_name(name[len(TEMP_PREFIX) :]):
                if now - mtime > STALE_TEMP_S:
                    try:
                        os.unlink(entry.path)
                        log.info(
                            "pickup: removed %s, left by a writer that stopped %.0f s ago", name, now - mtime
                        )
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        log.warning("pickup: cannot remove %s: %s", name, exc.strerror or exc)
                continue
            found.append((mtime, name))
        found.sort()
        return [name for _mtime, name in found]

    async def _take(self, name: str) -> None:
        try:
            taken = await trio.to_thread.run_sync(self._read, name)
        except _Corrupt as exc:
            await trio.to_thread.run_sync(self._move_aside, name, str(exc))
            return
        except QueueStorageError as exc:
            log.warning("pickup: %s not queued now (%s); tried again in %g s", name, exc, self.interval_s)
            return
        if taken is None:
            return
        writer, env = taken.writer, taken.envelope
        request = QueueEnvelopeCommitRequest(
            qid=writer.qid,
            sender=env.sender,
            recipients=tuple(QueueRecipientValue(r.address, r.orcpt, r.notify) for r in env.recipients),
            size=writer.size,
            envid=env.envid,
            ret=env.ret,
            body=env.body,
            smtputf8=env.smtputf8,
            client_address="local",
            client_helo=f"userid {taken.uid}",
            arrival_time=clock.now(),
        )
        # Shielded: once committed, the file must go, or the next scan queues the message again.
        with trio.CancelScope(shield=True):
            await self._commit_and_remove(name, taken, request)

    async def _commit_and_remove(self, name: str, taken: _Taken, request: QueueEnvelopeCommitRequest) -> None:
        writer, env = taken.writer, taken.envelope
        answer = await self._commit(request)
        if not isinstance(answer, QueueEnvelopeCommitReply):
            raise AssertionError(f"qmgr's commit answered {answer!r}")
        if not answer.ok:
            await trio.to_thread.run_sync(writer.abort)
            r = answer.reply
            log.warning(
                "pickup: %s not queued now (%d %s %s); tried again in %g s",
                name,
                r.code,
                r.enhanced or "",
                r.text,
                self.interval_s,
            )
            return
        # No checkpoint between the commit's answer and the bounce: the message must not be
        # routed first.
        bounce = self._bounce_new() if taken.hops >= self.max_hops else None
        self.queued += 1
        mlog.maillog(
            "queued",
            writer.qid,
            origin="pickup",
            uid=taken.uid,
            sender=env.sender,
            nrcpt=len(env.recipients),
            size=writer.size,
        )
        if bounce is not None:
            log.warning(
                "%s: %d Received: headers, max_hops is %d: mail forwarding loop; bounced",
                writer.qid,
                taken.hops,
                self.max_hops,
            )
            await bounce(writer.qid, LOOP_REPLY)
        try:
            await trio.to_thread.run_sync(os.unlink, self.directory / name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # It would be queued again at the next scan: never go on quietly.
            log.error("pickup: %s is queued as %s but cannot be removed: %s", name, writer.qid, exc)
            self._unmovable.add(name)

    def _read(self, name: str) -> _Taken | None:
        """Open, check and copy one file into a new content file (blocking: in a thread).

        Raises:
            _Corrupt: the file is not a message.
            QueueStorageError: the content file could not be written.
        """
        if not is_pickup_name(name):
            raise _Corrupt("not the name of a pickup file")
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _Corrupt(f"cannot open it: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as file:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Corrupt("not a regular file")
            if st.st_nlink != 1:
                raise _Corrupt(f"{st.st_nlink} links to the file")
            if st.st_size > self.max_file_bytes:
                raise _Corrupt(f"{st.st_size} octets, more than the limit of {self.max_file_bytes}")
            try:
                envelope = read_pickup_envelope(
                    file, max_content_bytes=self.max_content_bytes, max_recipients=self.max_recipients
                )
            except PickupFormatError as exc:
                raise _Corrupt(str(exc)) from None
            writer = ContentWriter(self.queue_dir)
            try:
                writer.write(
                    pickup_received_header(
                        hostname=self.hostname,
                        qid=writer.qid,
                        uid=st.st_uid,
                        recipients=[r.address for r in envelope.recipients],
                        now=clock.now(),
                    )
                )
                head = HeaderHead()

                def sink(chunk: bytes) -> None:
                    head.feed(chunk)
                    writer.write(chunk)

                envelope = copy_pickup_content(file, envelope, sink)
                writer.close_unsynced()
            except PickupFormatError as exc:
                writer.abort()
                raise _Corrupt(str(exc)) from None
            except BaseException:
                writer.abort()
                raise
        return _Taken(writer, envelope, st.st_uid, count_hops(head.head))

    def _move_aside(self, name: str, reason: str) -> None:
        try:
            self.corrupt_dir.mkdir(mode=0o700, exist_ok=True)
            os.rename(self.directory / name, self.corrupt_dir / name)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error(
                "pickup: %s is not a message (%s) and cannot be moved to %s: %s; left alone",
                name,
                reason,
                self.corrupt_dir,
                exc.strerror or exc,
            )
            self._unmovable.add(name)
            return
        self.moved_aside += 1
        log.warning("pickup: %s is not a message: %s; moved to %s", name, reason, self.corrupt_dir)
