"""Content files: one file per message body, written by smtps, read by smtpc, removed by qmgr.

Layout: ``queue_directory/content/<id[-2:]>/<id>``. The last two characters of an id pick one of
961 subdirectories. A process puts its next :data:`FILES_PER_SUBDIR` new files in the same
subdirectory and then moves on to another one chosen at random: messages that arrive together share
a directory, so the fsync of a batch (:func:`sync_content_files`) costs one directory fsync, not one
per message, and over time the subdirectories still fill evenly, so none grows huge.

Durability (design.md §4): before smtps may answer 250, the file's data must be fsync'd *and* its
directory entry must be durable. smtps closes the file (:meth:`ContentWriter.close_unsynced`) and
qmgr does both with :func:`sync_content_files`, for a whole batch of new messages in the same thread
trip as their envelopes' commit. qmgr's own bounces use :meth:`ContentWriter.finish` and
:class:`DirectorySyncer` (one directory fsync shared by every message that finished in that
directory since the last one started). The first time a process uses a subdirectory it fsyncs
``content/`` once, whether it created the subdirectory or found it, because another process may have
created it and not yet made it durable.

mcp makes the 31 *seed* subdirectories (:func:`~meta1py.queue.ids.is_seed_subdir`) before any worker
starts and the other 930 while the workers start. A writer that draws a subdirectory that does not
exist yet never creates it (in production it could not: ``content/`` is not writable by workers);
it takes a seed subdirectory instead, creating that one if it is missing (a queue made by tests,
without mcp).

A file that is being written has its final name from the start (no rename): a half-written file is
harmless because nothing refers to it until qmgr has committed the envelope, and qmgr's start-up
recovery removes content files without an envelope (:func:`scan_content_ids`).
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import trio

from meta1py.libc import start_writeback
from meta1py.queue.errors import QueueStorageError
from meta1py.queue.ids import (
    SEED_SUFFIXES,
    SUFFIXES,
    is_queue_id,
    is_seed_subdir,
    new_queue_id,
    queue_id_time,
)

__all__ = [
    "ContentWriter",
    "DirectorySyncer",
    "content_file",
    "content_in_use",
    "content_path",
    "open_content",
    "remove_content",
    "scan_content_ids",
    "sync_content_files",
]

CONTENT_DIRNAME = "content"
_FILE_MODE = 0o640
# Normally mcp creates every subdirectory at start (meta1py.ownership: setgid, sticky, owner rwx,
# group wx); a process that finds one missing creates it the same way.
_DIR_MODE = 0o3730
_WRITE_BUFFER_BYTES = 64 * 1024
# A fresh id collides with an existing file only when two messages arrive in the same second, in
# the same subdirectory, and draw the same random bits; a handful of draws is plenty.
_MAX_ID_DRAWS = 16
#: How many new files a process writes into one content subdirectory before it moves on. A group
#: commit batch (up to the number of concurrent sessions) then spans one or two directories. Within a
#: subdirectory an id keeps about 17 random bits per second, so 64 files rarely collide (~1.5% of
#: subdirectory turns cost one more draw).
FILES_PER_SUBDIR = 64


class _SubdirTurn:
    """This process's current content subdirectory and how many files it may still take."""

    # Chosen on first use, not at import: workers forked from one parent must not start alike.
    suffix = 0
    left = 0

    @classmethod
    def next_suffix(cls) -> int:
        # Threads may race here; the worst outcome is a subdirectory taking a few more files.
        if cls.left <= 0:
            # Any subdirectory but the current one, so that turns are always told apart.
            cls.suffix = (cls.suffix + 1 + secrets.randbelow(SUFFIXES - 1)) % SUFFIXES
            cls.left = FILES_PER_SUBDIR
        cls.left -= 1
        return cls.suffix

    @classmethod
    def use_seed(cls) -> None:
        """The current subdirectory does not exist yet: take a seed one for this turn."""
        cls.suffix = secrets.randbelow(SEED_SUFFIXES)
        cls.left = FILES_PER_SUBDIR


class _IssuedIds:
    """The ids this process drew in the current second.

    O_EXCL alone does not keep an id unique: a message delivered within the second it arrived has
    its content file removed, and the next message of that second may draw the same id. A queue
    id must name one message only (logs, ``meta1 queue``, smtpc's memory of what it delivered),
    so an id already issued in this second is drawn again. Ids carry their second, so the set
    is emptied when the second changes. (Two processes, smtps and qmgr's bounces, can still meet
    the same id, once in many millions.)
    """

    second = -1.0
    ids: set[str] = set()  # one per process, on purpose
    lock = threading.Lock()

    @classmethod
    def claim(cls, qid: str) -> bool:
        second = queue_id_time(qid)
        with cls.lock:
            if second != cls.second:
                cls.second = second
                cls.ids = set()
            if qid in cls.ids:
                return False
            cls.ids.add(qid)
            return True


def content_path(queue_dir: str | os.PathLike[str], qid: str) -> Path:
    """Return the path of message ``qid``'s content file.

    Raises:
        ValueError: ``qid`` is not a queue id (so no path traversal can come through here).
    """
    return Path(content_file(queue_dir, qid))


def content_file(queue_dir: str | os.PathLike[str], qid: str) -> str:
    """:func:`content_path` as a string: built without pathlib, for the per-message hot paths.

    Raises:
        ValueError: ``qid`` is not a queue id (so no path traversal can come through here).
    """
    if not is_queue_id(qid):
        raise ValueError(f"not a queue id: {qid!r}")
    return f"{os.fspath(queue_dir)}/{CONTENT_DIRNAME}/{qid[-2:]}/{qid}"


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(what: str, exc: OSError) -> QueueStorageError:
    err = QueueStorageError(f"{what}: {exc.strerror or exc}", exc.errno)
    err.__cause__ = exc
    return err


# Subdirectories whose entry in their parent this process has made durable (see the module
# docstring), keyed by (parent, name).
_durable_dirs: dict[tuple[str, str], str] = {}
_durable_dirs_lock = threading.Lock()


def _ensure_dir(parent: str, name: str, create: bool = True) -> str:
    """Create ``parent/name`` if needed and make sure its entry in ``parent`` is on disk.

    Plain strings, not pathlib: this runs twice per message.

    Raises:
        FileNotFoundError: ``create`` is false and the directory does not exist (yet).
    """
    key = (parent, name)
    known = _durable_dirs.get(key)  # dict reads are atomic under the GIL
    if known is not None:
        return known
    path = os.path.join(parent, name)
    if not create:
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "not made yet", path)
    else:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        else:
            os.chmod(path, _DIR_MODE)  # mkdir's mode passes through the umask and may drop setgid
    _fsync_dir(parent)
    with _durable_dirs_lock:
        _durable_dirs[key] = path
    return path


class ContentWriter:
    """Writes one message's content file (synchronous; smtps calls :meth:`finish` in a thread).

    Creating a writer claims a queue id: the file is created with ``O_CREAT|O_EXCL`` (mode 0640),
    and when ``qid`` is not given a fresh id is drawn until one is free. Typical use::

        writer = ContentWriter(queue_dir)          # claims writer.qid
        try:
            for chunk in body:
                writer.write(chunk)                # buffered, 64 KiB
            await trio.to_thread.run_sync(writer.finish)   # flush + fsync + close
            await syncer.sync(writer.path.parent)          # directory entry durable
        except BaseException:
            writer.abort()                          # unlink the partial file
            raise

    Used as a context manager, it aborts when the block is left before :meth:`finish` succeeded.

    Every OS failure is raised as :class:`QueueStorageError` (``disk_full`` tells 452 from 451).

    Attributes:
        qid: the message's queue id.
        path: the content file.
        size: bytes written so far.
    """

    qid: str
    size: int
    #: The content file and its directory, as strings.
    file_name: str
    dir_name: str

    @property
    def path(self) -> Path:
        """The content file."""
        return Path(self.file_name)

    def __init__(self, queue_dir: str | os.PathLike[str], qid: str | None = None) -> None:
        """Create the content file.

        Args:
            queue_dir: the queue directory (``content/`` is created in it if missing).
            qid: the id to use; ``None`` draws fresh ids until one is free.

        Raises:
            ValueError: ``qid`` is not a queue id.
            FileExistsError: ``qid`` was given and its content file already exists.
            QueueStorageError: the directory or file could not be created.
        """
        if qid is not None and not is_queue_id(qid):
            raise ValueError(f"not a queue id: {qid!r}")
        root = os.fspath(queue_dir)
        self.size = 0
        self._finished = False
        self._file: BinaryIO | None = None
        # Plain strings on this path: it runs once per message, and pathlib costs more than the
        # system calls here.
        try:
            content_dir = _ensure_dir(root, CONTENT_DIRNAME)
            for _ in range(_MAX_ID_DRAWS):
                candidate = new_queue_id(suffix=_SubdirTurn.next_suffix()) if qid is None else qid
                if qid is None and not _IssuedIds.claim(candidate):
                    continue
                name = candidate[-2:]
                try:
                    subdir = _ensure_dir(content_dir, name, create=qid is not None or is_seed_subdir(name))
                except FileNotFoundError:
                    _SubdirTurn.use_seed()  # mcp has not made this one yet (it does at start)
                    continue
                path = f"{subdir}/{candidate}"
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
                except FileExistsError:
                    if qid is not None:
                        raise
                    continue
                # Held while the file is open for writing (the kernel drops it when the writer
                # closes it or dies): qmgr's orphan sweep never removes a file that is locked.
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    os.unlink(path)
                    raise
                break
            else:
                raise QueueStorageError(f"no free queue id after {_MAX_ID_DRAWS} draws")
        except OSError as exc:
            if isinstance(exc, FileExistsError):
                raise
            raise _storage_error(f"cannot create content file in {root}", exc) from exc
        self.qid = candidate
        self.dir_name = subdir
        self.file_name = path
        self._file = open(fd, "wb", buffering=_WRITE_BUFFER_BYTES)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (buffered; may block briefly when the buffer is written out).

        Raises:
            QueueStorageError: the write failed (the file is left for :meth:`abort`).
        """
        if self._file is None:
            raise ValueError(f"content file {self.qid} is closed")
        try:
            self._file.write(data)
        except OSError as exc:
            raise _storage_error(f"cannot write content file {self.qid}", exc) from exc
        self.size += len(data)

    def close_unsynced(self) -> None:
        """Flush and close the file without an fsync, and start its writeback.

        For a file whose fsync someone else does before anything depends on it: smtps closes the
        content this way, and qmgr fsyncs it (:func:`sync_content_files`) in the same trip as the
        envelope commit, before smtps may answer 250.

        Raises:
            QueueStorageError: the flush failed (the file is closed; call :meth:`abort`).
        """
        self._close(sync=False)

    def finish(self) -> None:
        """Flush, fsync and close the file. Blocking: call it through ``trio.to_thread``.

        The directory entry is not synced here; use :class:`DirectorySyncer` for that so that
        concurrent messages share one directory fsync.

        Raises:
            QueueStorageError: flush or fsync failed (the file is closed; call :meth:`abort`).
        """
        self._close(sync=True)

    def _close(self, sync: bool) -> None:
        if self._file is None:
            raise ValueError(f"content file {self.qid} is closed")
        file, self._file = self._file, None
        try:
            try:
                file.flush()
                if sync:
                    os.fsync(file.fileno())
                else:
                    start_writeback(file.fileno())
            finally:
                file.close()
        except OSError as exc:
            what = "sync" if sync else "write"
            raise _storage_error(f"cannot {what} content file {self.qid}", exc) from exc
        self._finished = True

    def abort(self) -> None:
        """Close and unlink the file (the message was refused or the write failed). Idempotent.

        Unlinking needs no fsync: if the removal is lost in a crash, start-up recovery removes the
        file as an orphan.
        """
        if self._file is not None:
            file, self._file = self._file, None
            # Writing out the buffer could fail again (disk full); drop it unwritten.
            try:
                file.close()
            except OSError:
                pass
        self._finished = False
        try:
            os.unlink(self.file_name)
        except FileNotFoundError:
            pass

    def __enter__(self) -> ContentWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Leaving the block before finish() discards the file. After finish() the caller decides:
        # if the envelope commit was cancelled its outcome is unknown, and deleting the content of
        # a message qmgr may have committed would lose it (an orphan is harmless; recovery removes
        # it).
        if not self._finished:
            self.abort()


class _DirSync:
    """One directory fsync: who waits for it and how it ended."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: OSError | QueueStorageError | None = None


class _DirState:
    __slots__ = ("pending", "running")

    def __init__(self) -> None:
        self.running: _DirSync | None = None
        self.pending: _DirSync | None = None


class DirectorySyncer:
    """Group commit for directory entries: concurrent callers share one fsync per directory.

    ``await syncer.sync(dirpath)`` returns once an fsync of ``dirpath`` that *started after the
    call* has completed; that fsync covers every entry created before the call. While one fsync of
    a directory runs, every caller that arrives joins the next one, which starts as soon as the
    running one ends; so under load there are at most two fsyncs per directory in flight and each
    covers all the callers that came in meanwhile. The fsync runs in a worker thread and is shielded
    from cancellation (a cancelled caller just stops waiting; the others still get their sync).

    One syncer per process (it is not thread-safe; use it from one trio run).

    Attributes:
        fsyncs: number of directory fsyncs performed (for tests and statistics).
    """

    def __init__(self) -> None:
        self._dirs: dict[str, _DirState] = {}
        self.fsyncs = 0

    async def sync(self, dirpath: str | os.PathLike[str]) -> None:
        """Make every entry created in ``dirpath`` before this call durable.

        Raises:
            QueueStorageError: the fsync that covers this call failed.
        """
        key = os.fspath(dirpath)
        state = self._dirs.get(key)
        if state is None:
            state = self._dirs[key] = _DirState()
        if state.running is None:
            op = _DirSync()
            await self._perform(key, state, op)
        else:
            # An fsync is running, but it may have started before our entry was created: wait
            # for the next one, and start it ourselves if we are the first to see it due.
            if state.pending is None:
                state.pending = _DirSync()
            op = state.pending
            while not op.done.is_set():
                if state.running is None:
                    # The previous fsync ended and nobody has taken ours yet.
                    assert state.pending is op
                    state.pending = None
                    await self._perform(key, state, op)
                    break
                await state.running.done.wait()
        if state.running is None and state.pending is None:
            # Keep the table small: the state is re-created on the next call.
            self._dirs.pop(key, None)
        if isinstance(op.error, OSError):
            raise _storage_error(f"cannot sync directory {key}", op.error) from op.error

    async def _perform(self, key: str, state: _DirState, op: _DirSync) -> None:
        state.running = op
        try:
            # Shielded: the waiters of this op must get a real outcome even if we are cancelled.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_fsync_dir, key)
        except OSError as exc:
            op.error = exc
        finally:
            self.fsyncs += 1
            state.running = None
            op.done.set()


def sync_content_files(paths: list[str]) -> list[QueueStorageError | None]:
    """Make content files written by someone else durable: fsync each file, then each distinct
    directory; one outcome per path (None: durable). Blocking.

    qmgr calls it for the new messages of a group commit, in the store's thread, before the
    envelopes' transaction: one thread trip for both durable steps of a message. Writeback of
    every file is started first, so that ext4 commits their blocks together.
    """
    results: list[QueueStorageError | None] = [None] * len(paths)
    fds: list[tuple[int, int]] = []
    dirs: dict[str, list[int]] = {}
    try:
        for i, path in enumerate(paths):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                results[i] = _storage_error(f"cannot open content file {path}", exc)
                continue
            fds.append((i, fd))
            if len(paths) > 1:
                start_writeback(fd)
        for i, fd in fds:
            try:
                os.fsync(fd)
            except OSError as exc:
                results[i] = _storage_error(f"cannot sync content file {paths[i]}", exc)
                continue
            dirs.setdefault(os.path.dirname(paths[i]), []).append(i)
    finally:
        for _i, fd in fds:
            os.close(fd)
    for path, members in dirs.items():
        try:
            _fsync_dir(path)
        except OSError as exc:
            for i in members:
                results[i] = _storage_error(f"cannot sync directory {path}", exc)
    return results


def open_content(queue_dir: str | os.PathLike[str], qid: str) -> io.BufferedReader:
    """Open message ``qid``'s content for reading (binary).

    Raises:
        ValueError: ``qid`` is not a queue id.
        FileNotFoundError: there is no such content file.
    """
    return open(content_file(queue_dir, qid), "rb")


def content_in_use(path: str | os.PathLike[str]) -> bool:
    """True if a :class:`ContentWriter` still holds ``path`` open (its lock), or if we cannot tell.

    qmgr's orphan sweep asks this before it removes a content file with no envelope: smtps may be
    writing it (a long DATA) however old its modification time looks.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def remove_content(queue_dir: str | os.PathLike[str], qid: str) -> bool:
    """Remove message ``qid``'s content file; return False if it was already gone.

    No fsync: qmgr removes content only after the envelope's deletion is committed, and a removal
    lost in a crash leaves an orphan that start-up recovery deletes again.

    Raises:
        ValueError: ``qid`` is not a queue id.
    """
    try:
        os.unlink(content_file(queue_dir, qid))
    except FileNotFoundError:
        return False
    return True


def scan_content_ids(queue_dir: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the queue id of every content file (for orphan recovery), in no particular order.

    Names that are not queue ids, or that sit in the wrong subdirectory, are skipped: recovery must
    never delete a file it does not understand.
    """
    root = Path(queue_dir) / CONTENT_DIRNAME
    try:
        subdirs = list(os.scandir(root))
    except FileNotFoundError:
        return
    for subdir in subdirs:
        if len(subdir.name) != 2 or not subdir.is_dir(follow_symlinks=False):
            continue
        try:
            entries = list(os.scandir(subdir.path))
        except FileNotFoundError:
            continue
        for entry in entries:
            if (
                is_queue_id(entry.name)
                and entry.name[-2:] == subdir.name
                and entry.is_file(follow_symlinks=False)
            ):
                yield entry.name
