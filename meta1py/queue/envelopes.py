"""The envelope store (qmgr only): SQLite in WAL mode with group commit.

DECISION
    SQLite (``journal_mode=WAL``, ``synchronous=FULL``) rather than an append-only log with
    checkpoints. ``bench/queue_commit.py`` on this machine (2 cores, virtio disk, shared with other
    jobs, so the figures swing by 2x between runs; two runs shown as run1 / run2)::

        store               batch    transactions/s    envelopes/s
        sqlite WAL FULL         1       2680 / 2930      2680 / 2930
        append log + fsync      1       3204 / 1505      3204 / 1505
        sqlite WAL FULL        10       1110 /  625     11097 / 6253
        append log + fsync     10       1467 / 1539     14673 / 15395
        sqlite WAL FULL        50        334 /  287     16712 / 14351
        append log + fsync     50        601 /  536     30035 / 26802

        GroupCommitter, N concurrent one-envelope committers: 1 -> 833-1361/s,
        10 -> 2223-4367/s (5.5 per transaction), 50 -> 3681-8677/s (25.5 per transaction)
        content file 4 KiB + fsync + directory fsync: 250-650/s alone, ~1,100/s with 50 writers

    The log commits up to twice as many envelopes per second in big batches (it pays less CPU per
    record), but SQLite with group commit already commits several times more envelopes per second
    than smtps can fsync content files, so the envelope store is not the bottleneck either way.
    SQLite gives us for free what a log would have to build: atomic multi-message transactions,
    recovery of half-written records, indexed queries, and concurrent readers, so that ``meta1 queue
    list`` can read the store directly (``EnvelopeStore(path, readonly=True)``) even while qmgr runs.

DURABILITY
    With WAL and ``synchronous=FULL`` every COMMIT fsyncs the WAL. :class:`GroupCommitter` puts every
    operation that arrives while a commit runs into the next transaction, so one fsync covers a whole
    batch; each caller returns only after the commit that covers its operation. A failed batch
    (``SQLITE_FULL``, ``SQLITE_IOERR``...) is rolled back as a whole and every caller in it gets a
    :class:`QueueStorageError`; operations that fail on their own (a duplicate id, an unknown id) run
    in a SAVEPOINT each and fail alone.

    What a client waits on is always durable: the commit of a new message (smtps answers 250 after
    it) and operator actions. Delivery bookkeeping (recipient results, the deletion of a finished
    message and its bounce, in one atomic transaction) is committed with ``durable=False``, without
    an fsync of its own: it survives a crash of qmgr, and the next durable commit or
    :meth:`EnvelopeStore.sync` makes it survive a crash of the system too (the WAL is append-only,
    so one fsync covers every earlier commit). Until then a system crash can only undo it, which
    means a message is tried again (a duplicate, never a loss). qmgr removes a finished message's
    content file only after :meth:`EnvelopeStore.sync`, so an undone deletion never finds its
    content gone. This takes an fsync per delivered message off the path that commits new mail;
    Postfix likewise does not fsync the removal of a delivered queue file.

DATA MODEL
    Two tables: ``messages`` (one row per :class:`Envelope`) and ``recipients`` (one row per
    :class:`Recipient`, keyed by ``(qid, idx)``). ``PRAGMA user_version`` holds the schema version.
    A message leaves the store when qmgr deletes it, once every recipient is final.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import trio

from meta1py.envelope import BODY_TYPES, DSN_RETS, NOTIFY_KEYWORDS, BodyType, DsnRet
from meta1py.offload import OffloadThread
from meta1py.queue.errors import QueueStorageError
from meta1py.queue.ids import is_queue_id

__all__ = [
    "ENVELOPE_STORE_NAME",
    "FINAL_STATUSES",
    "AfterDurable",
    "Atomic",
    "DeleteMessage",
    "DuplicateMessageError",
    "Envelope",
    "EnvelopeStore",
    "GroupCommitter",
    "InsertEnvelope",
    "Recipient",
    "RecipientUpdate",
    "SetHold",
    "StoreOp",
    "UnknownMessageError",
    "UpdateRecipients",
    "envelope_store_path",
]

ENVELOPE_STORE_NAME = "envelopes.sqlite"
SCHEMA_VERSION = 1

RecipientStatus = Literal["queued", "deferred", "delivered", "bounced", "expired"]
MessageKind = Literal["normal", "bounce", "double_bounce", "delay_warning"]
MessageState = Literal["active", "deferred", "hold"]

RECIPIENT_STATUSES: frozenset[str] = frozenset({"queued", "deferred", "delivered", "bounced", "expired"})
FINAL_STATUSES: frozenset[str] = frozenset({"delivered", "bounced", "expired"})
MESSAGE_KINDS: frozenset[str] = frozenset({"normal", "bounce", "double_bounce", "delay_warning"})

T = TypeVar("T")


def envelope_store_path(queue_dir: str | os.PathLike[str]) -> Path:
    """Return the path of the envelope store in ``queue_dir``."""
    return Path(queue_dir) / ENVELOPE_STORE_NAME


class UnknownMessageError(LookupError):
    """The operation names a queue id (or recipient index) that is not in the store."""


class DuplicateMessageError(ValueError):
    """An envelope with this queue id is already in the store."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    """One recipient of a queued message and its delivery state.

    Attributes:
        idx: position in the envelope (0-based, unique within the message).
        address: the RCPT TO address without angle brackets.
        orcpt: the DSN ORCPT parameter as received (``"rfc822;user@example.org"``), or None.
        notify: the DSN NOTIFY keywords, ``frozenset({"NEVER"})``, or None for the default.
        status: ``queued`` (not yet tried), ``deferred`` (temporary failure), or final:
            ``delivered``, ``bounced``, ``expired``.
        attempts: delivery attempts so far.
        next_attempt: when to try next (epoch seconds).
        last_attempt: when it was last tried, or None.
        last_reply: the last remote or local reply (already length-capped by the caller), or None.
        destination: the routing key it last went to, or None.
        dsn_sent: a delay warning has been sent for it.
    """

    idx: int
    address: str
    orcpt: str | None = None
    notify: frozenset[str] | None = None
    status: RecipientStatus = "queued"
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    last_reply: str | None = None
    destination: str | None = None
    dsn_sent: bool = False

    def __post_init__(self) -> None:
        if self.idx < 0:
            raise ValueError(f"recipient index must be >= 0, not {self.idx}")
        if self.status not in RECIPIENT_STATUSES:
            raise ValueError(f"unknown recipient status {self.status!r}")
        if self.notify is not None:
            if not self.notify or not self.notify <= NOTIFY_KEYWORDS:
                raise ValueError(f"bad NOTIFY keywords {sorted(self.notify)!r}")
            if "NEVER" in self.notify and len(self.notify) > 1:
                raise ValueError("NOTIFY=NEVER cannot be combined with other keywords")

    @property
    def is_final(self) -> bool:
        """True when the recipient needs no more delivery attempts."""
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A queued message's envelope: everything but the content.

    Attributes:
        qid: the queue id (also the content file's name).
        sender: MAIL FROM address without angle brackets; ``""`` is the null sender.
        arrival_time: when the message was accepted (epoch seconds).
        size: content size in bytes.
        envid: the DSN ENVID parameter, or None.
        ret: the DSN RET parameter (``FULL`` or ``HDRS``), or None.
        body: the BODY parameter (``7BIT``, ``8BITMIME``, ``BINARYMIME``).
        smtputf8: the SMTPUTF8 parameter was given.
        client_address: the SMTP client's IP address ("" for local submission).
        client_helo: the name the client gave in HELO/EHLO.
        kind: ``normal``, ``bounce``, ``double_bounce`` or ``delay_warning``.
        hold: the operator put the message on hold.
        recipients: the recipients, in ``idx`` order (at least one).
    """

    qid: str
    sender: str
    arrival_time: float
    size: int
    envid: str | None = None
    ret: DsnRet | None = None
    body: BodyType = "7BIT"
    smtputf8: bool = False
    client_address: str = ""
    client_helo: str = ""
    kind: MessageKind = "normal"
    hold: bool = False
    recipients: tuple[Recipient, ...] = field(default=())

    def __post_init__(self) -> None:
        if not is_queue_id(self.qid):
            raise ValueError(f"not a queue id: {self.qid!r}")
        if self.size < 0:
            raise ValueError(f"size must be >= 0, not {self.size}")
        if self.ret is not None and self.ret not in DSN_RETS:
            raise ValueError(f"bad RET {self.ret!r}")
        if self.body not in BODY_TYPES:
            raise ValueError(f"bad BODY {self.body!r}")
        if self.kind not in MESSAGE_KINDS:
            raise ValueError(f"unknown message kind {self.kind!r}")
        if not self.recipients:
            raise ValueError(f"envelope {self.qid} has no recipients")
        indexes = [r.idx for r in self.recipients]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"envelope {self.qid} has duplicate recipient indexes")

    @property
    def is_final(self) -> bool:
        """True when every recipient is final (the message can leave the queue)."""
        return all(r.is_final for r in self.recipients)


class RecipientUpdate(NamedTuple):
    """The new delivery state of one recipient (a plain 6-tuple works too).

    ``last_attempt`` and ``dsn_sent`` are left unchanged when None.
    """

    idx: int
    status: RecipientStatus
    attempts: int
    next_attempt: float
    last_reply: str | None
    destination: str | None
    last_attempt: float | None = None
    dsn_sent: bool | None = None


# The operations a batch is made of; EnvelopeStore.apply() runs a list of them in one transaction.
@dataclass(frozen=True, slots=True)
class InsertEnvelope:
    """Add a new envelope (fails alone with DuplicateMessageError if the id exists)."""

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class UpdateRecipients:
    """Record delivery results (fails alone with UnknownMessageError)."""

    qid: str
    updates: tuple[RecipientUpdate, ...]


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    """Remove a message and its recipients; the result is whether it existed."""

    qid: str


@dataclass(frozen=True, slots=True)
class SetHold:
    """Put a message on hold or release it; the result is whether it exists."""

    qid: str
    hold: bool


@dataclass(frozen=True, slots=True)
class Atomic:
    """Several operations that succeed or fail together (one savepoint); the result is their
    results. qmgr uses it to queue a bounce and delete the bounced message in one step."""

    ops: tuple[InsertEnvelope | UpdateRecipients | DeleteMessage | SetHold, ...]


StoreOp = InsertEnvelope | UpdateRecipients | DeleteMessage | SetHold | Atomic

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    qid            TEXT PRIMARY KEY,
    sender         TEXT NOT NULL,
    arrival_time   REAL NOT NULL,
    size           INTEGER NOT NULL,
    envid          TEXT,
    ret            TEXT,
    body           TEXT NOT NULL,
    smtputf8       INTEGER NOT NULL,
    client_address TEXT NOT NULL,
    client_helo    TEXT NOT NULL,
    kind           TEXT NOT NULL,
    hold           INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recipients (
    qid            TEXT NOT NULL,
    idx            INTEGER NOT NULL,
    address        TEXT NOT NULL,
    orcpt          TEXT,
    notify         TEXT,
    status         TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    next_attempt   REAL NOT NULL,
    last_attempt   REAL,
    last_reply     TEXT,
    destination    TEXT,
    dsn_sent       INTEGER NOT NULL,
    PRIMARY KEY (qid, idx)
) WITHOUT ROWID;
"""

_MESSAGE_COLUMNS = (
    "qid, sender, arrival_time, size, envid, ret, body, smtputf8, client_address, client_helo, kind, hold"
)
_RECIPIENT_COLUMNS = (
    "qid, idx, address, orcpt, notify, status, attempts, next_attempt, last_attempt, last_reply,"
    " destination, dsn_sent"
)
_NON_FINAL_SQL = "('queued', 'deferred')"

# Primary result codes (the low byte of an extended code) that mean "out of space" / "I/O error".
_SQLITE_IOERR = 10
_SQLITE_FULL = 13


def _encode_notify(notify: frozenset[str] | None) -> str | None:
    return None if notify is None else ",".join(sorted(notify))


def _decode_notify(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(text.split(","))


def _domain_of(address: str | None) -> str | None:
    if address is None:
        return None
    return address.rpartition("@")[2].lower()


# Below this much free space, an I/O error of SQLite's is taken for a full disk: SQLite reports
# some ENOSPC failures (growing its shared-memory file, creating the WAL) as SQLITE_IOERR.
_NEARLY_FULL_BYTES = 256 * 1024


def _storage_error(what: str, exc: sqlite3.Error, directory: Path | None = None) -> QueueStorageError:
    code = getattr(exc, "sqlite_errorcode", None)
    os_errno = None
    if code is not None:
        if code & 0xFF == _SQLITE_FULL:
            os_errno = errno.ENOSPC
        elif code & 0xFF == _SQLITE_IOERR:
            os_errno = errno.EIO
            if directory is not None and _nearly_full(directory):
                os_errno = errno.ENOSPC
    err = QueueStorageError(f"{what}: {exc}", os_errno)
    err.__cause__ = exc
    return err


def _nearly_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES or (st.f_files > 0 and st.f_favail == 0)


def _recipient_from_row(row: sqlite3.Row) -> Recipient:
    return Recipient(
        idx=row["idx"],
        address=row["address"],
        orcpt=row["orcpt"],
        notify=_decode_notify(row["notify"]),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt=row["next_attempt"],
        last_attempt=row["last_attempt"],
        last_reply=row["last_reply"],
        destination=row["destination"],
        dsn_sent=bool(row["dsn_sent"]),
    )


def _envelope_from_row(row: sqlite3.Row, recipients: tuple[Recipient, ...]) -> Envelope:
    return Envelope(
        qid=row["qid"],
        sender=row["sender"],
        arrival_time=row["arrival_time"],
        size=row["size"],
        envid=row["envid"],
        ret=row["ret"],
        body=row["body"],
        smtputf8=bool(row["smtputf8"]),
        client_address=row["client_address"],
        client_helo=row["client_helo"],
        kind=row["kind"],
        hold=bool(row["hold"]),
        recipients=recipients,
    )


class EnvelopeStore:
    """The synchronous envelope store (one SQLite connection).

    qmgr opens it read-write and drives it through :class:`GroupCommitter`; the queue CLI opens it
    with ``readonly=True``, which works whether or not qmgr is running. A store is used by one thread
    at a time (the committer serializes its worker thread with any reads it runs).

    Raises (every method):
        QueueStorageError: SQLite failed (disk full, I/O error, unreadable or foreign file).
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        """Open (read-write: create if needed) the store at ``path``.

        Args:
            path: the database file, normally :func:`envelope_store_path` of the queue directory.
            readonly: open for reading only (the CLI); the file must exist.

        Raises:
            FileNotFoundError: ``readonly`` and there is no store yet.
            QueueStorageError: the file cannot be opened or is not an envelope store.
        """
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._conn = self._connect()
        #: The connection's synchronous mode: True for FULL (set by _init_schema), False for NORMAL.
        self._durable = True

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            if self.readonly:
                if not self.path.exists():
                    raise FileNotFoundError(errno.ENOENT, "no envelope store", str(self.path))
                uri = self.path.absolute().as_uri() + "?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                created = not self.path.exists()
                if created:
                    # An empty file is an empty database; creating it ourselves sets the mode
                    # (SQLite gives its -wal and -shm files the same one).
                    # qmgr's alone (meta1py.ownership): no other worker may read envelopes.
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    os.close(fd)
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.create_function("m1_domain", 1, _domain_of, deterministic=True)
            # A reader may meet the writer in the middle of a checkpoint; wait rather than fail.
            conn.execute("PRAGMA busy_timeout = 10000")
            if self.readonly:
                self._check_schema(conn)
            else:
                self._init_schema(conn)
                # The database file and its -wal file must be reachable after a crash: make their
                # directory entries durable once (the WAL file then lives as long as we do).
                fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()  # a failed open (a full disk at start) must not leak the file
            if isinstance(exc, sqlite3.Error):
                raise _storage_error(
                    f"cannot open envelope store {self.path}", exc, self.path.parent
                ) from exc
            if isinstance(exc, FileNotFoundError) and self.readonly:
                raise
            raise QueueStorageError(
                f"cannot open envelope store {self.path}: {exc.strerror or exc}", exc.errno
            ) from exc
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise QueueStorageError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            # Not executescript(): it would commit behind our back. One transaction creates the
            # tables and stamps the version, so a crash leaves either nothing or all of it.
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        elif version != SCHEMA_VERSION:
            raise QueueStorageError(
                f"{self.path}: envelope store schema {version}, this version reads {SCHEMA_VERSION}"
            )

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise QueueStorageError(
                f"{self.path}: envelope store schema {version}, this version reads {SCHEMA_VERSION}"
            )

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection (for tests and diagnostics; do not write through it)."""
        return self._conn

    def close(self) -> None:
        """Close the connection (the last writer to close checkpoints the WAL into the file)."""
        self._conn.close()

    def __enter__(self) -> EnvelopeStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def apply(self, ops: Sequence[StoreOp], durable: bool = True) -> list[Any]:
        """Run ``ops`` in one transaction (one fsync) and return one outcome per operation.

        With ``durable=False`` the transaction commits without an fsync of its own
        (``synchronous=NORMAL``): it survives a crash of qmgr at once, and a crash of the system
        once the next durable transaction or :meth:`sync` has fsync'd the WAL that holds it.

        Each outcome is the operation's result (None for inserts and updates, a bool for deletes and
        holds) or the exception it failed with alone (:class:`DuplicateMessageError`,
        :class:`UnknownMessageError`); such an operation is rolled back to its own savepoint and
        the others still commit.

        Raises:
            QueueStorageError: the transaction failed as a whole and was rolled back; nothing in
                ``ops`` was applied.
        """
        if self.readonly:
            raise QueueStorageError(f"{self.path}: the envelope store is open read-only")
        with self._lock:
            conn = self._conn
            outcomes: list[Any] = []
            try:
                if durable != self._durable:
                    conn.execute("PRAGMA synchronous = FULL" if durable else "PRAGMA synchronous = NORMAL")
                    self._durable = durable
                conn.execute("BEGIN IMMEDIATE")
                for op in ops:
                    conn.execute("SAVEPOINT op")
                    try:
                        outcome = self._apply_one(conn, op)
                    except (DuplicateMessageError, UnknownMessageError) as exc:
                        conn.execute("ROLLBACK TO op")
                        outcome = exc
                    conn.execute("RELEASE op")
                    outcomes.append(outcome)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _storage_error("envelope transaction failed", exc, self.path.parent) from exc
            except BaseException:
                self._rollback()
                raise
            return outcomes

    def probe(self) -> None:
        """Commit one small durable write (the schema version, rewritten unchanged).

        qmgr uses it to learn when a store that failed (disk full, I/O error, locked) can be
        written again, when it has nothing else to write: the transaction puts one page in the
        WAL and fsyncs it, as a real commit would.

        Raises:
            QueueStorageError: the store still cannot be written; the transaction was rolled back.
        """
        if self.readonly:
            raise QueueStorageError(f"{self.path}: the envelope store is open read-only")
        with self._lock:
            conn = self._conn
            try:
                if not self._durable:
                    conn.execute("PRAGMA synchronous = FULL")
                    self._durable = True
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _storage_error("envelope store still cannot be written", exc, self.path.parent) from exc

    def sync(self) -> None:
        """Make every transaction committed so far durable: fsync the WAL file.

        The WAL is append-only between checkpoints, and a checkpoint syncs it first, so one fsync
        covers every commit made before it, durable or not. Safe from any thread.
        """
        if self.readonly:
            return
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # no WAL: everything is in the database file, which checkpoints synced
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The connection is unusable; SQLite's journal keeps the file consistent, and a fresh
            # connection starts from the last committed state.
            try:
                self._conn.close()
            finally:
                self._conn = self._connect()
                self._durable = True

    def _apply_one(self, conn: sqlite3.Connection, op: StoreOp) -> Any:
        if isinstance(op, Atomic):
            return [self._apply_one(conn, inner) for inner in op.ops]
        if isinstance(op, InsertEnvelope):
            self._insert(conn, op.envelope)
            return None
        if isinstance(op, UpdateRecipients):
            self._update(conn, op.qid, op.updates)
            return None
        if isinstance(op, DeleteMessage):
            conn.execute("DELETE FROM recipients WHERE qid = ?", (op.qid,))
            return conn.execute("DELETE FROM messages WHERE qid = ?", (op.qid,)).rowcount > 0
        if isinstance(op, SetHold):
            cur = conn.execute("UPDATE messages SET hold = ? WHERE qid = ?", (op.hold, op.qid))
            return cur.rowcount > 0
        raise TypeError(f"not a store operation: {op!r}")

    @staticmethod
    def _insert(conn: sqlite3.Connection, env: Envelope) -> None:
        try:
            conn.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    env.qid,
                    env.sender,
                    env.arrival_time,
                    env.size,
                    env.envid,
                    env.ret,
                    env.body,
                    env.smtputf8,
                    env.client_address,
                    env.client_helo,
                    env.kind,
                    env.hold,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise DuplicateMessageError(f"queue id {env.qid} is already in the store") from exc
        conn.executemany(
            f"INSERT INTO recipients ({_RECIPIENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    env.qid,
                    r.idx,
                    r.address,
                    r.orcpt,
                    _encode_notify(r.notify),
                    r.status,
                    r.attempts,
                    r.next_attempt,
                    r.last_attempt,
                    r.last_reply,
                    r.destination,
                    r.dsn_sent,
                )
                for r in env.recipients
            ],
        )

    @staticmethod
    def _update(conn: sqlite3.Connection, qid: str, updates: Sequence[RecipientUpdate]) -> None:
        for u in updates:
            cur = conn.execute(
                "UPDATE recipients SET status = ?, attempts = ?, next_attempt = ?,"
                " last_reply = ?, destination = ?,"
                " last_attempt = coalesce(?, last_attempt), dsn_sent = coalesce(?, dsn_sent)"
                " WHERE qid = ? AND idx = ?",
                (
                    u.status,
                    u.attempts,
                    u.next_attempt,
                    u.last_reply,
                    u.destination,
                    u.last_attempt,
                    u.dsn_sent,
                    qid,
                    u.idx,
                ),
            )
            if cur.rowcount == 0:
                raise UnknownMessageError(f"no recipient {u.idx} in message {qid}")

    def insert_envelopes(self, envelopes: Iterable[Envelope]) -> None:
        """Insert several envelopes in one transaction (all or nothing).

        Raises:
            DuplicateMessageError: one of the ids is already stored (nothing was inserted).
        """
        envs = list(envelopes)
        self._all_or_nothing([InsertEnvelope(e) for e in envs])

    def update_recipients(self, qid: str, updates: Iterable[RecipientUpdate | tuple[Any, ...]]) -> None:
        """Record new recipient states for one message in one transaction.

        Raises:
            UnknownMessageError: the message or one of the recipients does not exist.
        """
        self._all_or_nothing([UpdateRecipients(qid, _as_updates(updates))])

    def set_hold(self, qid: str, hold: bool) -> bool:
        """Put a message on hold (or release it); return False if it does not exist."""
        result: bool = self.apply([SetHold(qid, hold)])[0]
        return result

    def delete_messages(self, qids: Iterable[str]) -> int:
        """Delete messages in one transaction; return how many existed."""
        return sum(bool(r) for r in self.apply([DeleteMessage(q) for q in qids]))

    def _all_or_nothing(self, ops: list[StoreOp]) -> None:
        # apply() isolates failures per operation (for unrelated callers sharing a batch); a direct
        # call is one caller, so any failure undoes the whole call.
        if self.readonly:
            raise QueueStorageError(f"{self.path}: the envelope store is open read-only")
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for op in ops:
                    self._apply_one(self._conn, op)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _storage_error("envelope transaction failed", exc, self.path.parent) from exc
            except BaseException:
                self._rollback()
                raise

    # -- reading -------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Envelope]:
        """Load the envelopes whose ``messages`` rows ``sql`` selects (by qid), in arrival order."""
        with self._lock:
            try:
                # One read transaction, so messages and recipients come from the same snapshot.
                self._conn.execute("BEGIN")
                try:
                    rows = self._conn.execute(
                        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE qid IN ({sql})"
                        " ORDER BY arrival_time, qid",
                        params,
                    ).fetchall()
                    rcpt_rows = self._conn.execute(
                        f"SELECT {_RECIPIENT_COLUMNS} FROM recipients WHERE qid IN ({sql}) ORDER BY qid, idx",
                        params,
                    ).fetchall()
                finally:
                    self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _storage_error("cannot read envelope store", exc) from exc
        by_qid: dict[str, list[Recipient]] = {}
        for row in rcpt_rows:
            by_qid.setdefault(row["qid"], []).append(_recipient_from_row(row))
        return [_envelope_from_row(row, tuple(by_qid.get(row["qid"], ()))) for row in rows]

    def get(self, qid: str) -> Envelope | None:
        """Return the envelope of ``qid``, or None if it is not queued.

        Raises:
            ValueError: ``qid`` is not a queue id.
        """
        if not is_queue_id(qid):
            raise ValueError(f"not a queue id: {qid!r}")
        found = self._query("SELECT ?", (qid,))
        return found[0] if found else None

    def load_unfinished(self) -> list[Envelope]:
        """Return every envelope with at least one non-final recipient (qmgr's start-up load)."""
        return self._query(f"SELECT DISTINCT qid FROM recipients WHERE status IN {_NON_FINAL_SQL}")

    def finished_ids(self) -> list[str]:
        """Return the ids of stored messages whose recipients are all final.

        These are left over when qmgr crashed between the last result and the delete; recovery
        finishes them (bounces, then deletion).
        """
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT qid FROM messages WHERE NOT EXISTS (SELECT 1 FROM recipients r"
                    f" WHERE r.qid = messages.qid AND r.status IN {_NON_FINAL_SQL})"
                    " ORDER BY qid"
                ).fetchall()
            except sqlite3.Error as exc:
                raise _storage_error("cannot read envelope store", exc) from exc
        return [row[0] for row in rows]

    def all_ids(self) -> set[str]:
        """Return every stored queue id (for orphaned-content recovery)."""
        with self._lock:
            try:
                rows = self._conn.execute("SELECT qid FROM messages").fetchall()
            except sqlite3.Error as exc:
                raise _storage_error("cannot read envelope store", exc) from exc
        return {row[0] for row in rows}

    def list_envelopes(
        self,
        *,
        state: MessageState | None = None,
        domain: str | None = None,
        sender: str | None = None,
    ) -> list[Envelope]:
        """Return envelopes for the queue CLI, oldest first, filtered.

        Args:
            state: ``hold`` (on hold), ``deferred`` (not on hold, some recipient deferred), or
                ``active`` (not on hold, nothing deferred, some recipient still queued).
            domain: only messages with a recipient in this domain (exact, case-insensitive).
            sender: only messages from this sender (case-insensitive; ``""`` or ``"<>"`` is the
                null sender).
        """
        where = ["1"]
        params: list[Any] = []
        if state == "hold":
            where.append("m.hold")
        elif state == "deferred":
            where.append(
                "NOT m.hold AND EXISTS (SELECT 1 FROM recipients r WHERE r.qid = m.qid"
                " AND r.status = 'deferred')"
            )
        elif state == "active":
            where.append(
                "NOT m.hold AND EXISTS (SELECT 1 FROM recipients r WHERE r.qid = m.qid"
                " AND r.status = 'queued') AND NOT EXISTS (SELECT 1 FROM recipients r"
                " WHERE r.qid = m.qid AND r.status = 'deferred')"
            )
        elif state is not None:
            raise ValueError(f"unknown message state {state!r}")
        if domain is not None:
            where.append(
                "EXISTS (SELECT 1 FROM recipients r WHERE r.qid = m.qid AND m1_domain(r.address) = ?)"
            )
            params.append(domain.lower().rstrip("."))
        if sender is not None:
            where.append("lower(m.sender) = ?")
            params.append("" if sender == "<>" else sender.lower())
        return self._query(f"SELECT m.qid FROM messages m WHERE {' AND '.join(where)}", params)

    def __iter__(self) -> Iterator[Envelope]:
        return iter(self._query("SELECT qid FROM messages"))


def _as_updates(updates: Iterable[RecipientUpdate | tuple[Any, ...]]) -> tuple[RecipientUpdate, ...]:
    result = []
    for u in updates:
        update = u if isinstance(u, RecipientUpdate) else RecipientUpdate(*u)
        if update.status not in RECIPIENT_STATUSES:
            raise ValueError(f"unknown recipient status {update.status!r}")
        result.append(update)
    return tuple(result)


class _PendingOp:
    __slots__ = ("durable", "error", "op", "prepare", "result")

    def __init__(self, op: StoreOp, durable: bool = True, prepare: str | None = None) -> None:
        self.op = op
        self.durable = durable
        self.prepare = prepare
        self.result: Any = None
        self.error: BaseException | None = None


class _Batch:
    __slots__ = ("done", "error", "ops")

    def __init__(self) -> None:
        self.ops: list[_PendingOp] = []
        self.done = trio.Event()
        self.error: QueueStorageError | None = None


class AfterDurable(Protocol):
    """Work that may run only once everything committed so far is durable (see
    :class:`GroupCommitter`'s ``after_durable``)."""

    def run(self) -> None:
        """In the store's thread, right after a durable transaction committed; must not raise."""

    def finished(self, ran: bool) -> None:
        """Back in trio after the trip; ``ran`` is False when the transaction failed (or none
        ran) and :meth:`run` was not called."""


class GroupCommitter:
    """Group commit for the envelope store: many operations, one transaction, one fsync.

    Every method returns only after the transaction that covers its operation has committed (and
    so been fsync'd). Operations that arrive while a transaction runs are collected into the next
    one, which starts as soon as the running one ends; under load each transaction carries all the
    operations that came in during the previous one. The SQLite work runs in a worker thread, one
    at a time (one dedicated thread, meta1py.offload), shielded from cancellation so that a cancelled caller
    never leaves a batch half-reported. A caller cancelled while its operation is still waiting is
    taken out of the batch (it will not be applied); once the batch has started, the operation's
    outcome is unknown to that caller.

    Use from one trio run only.

    Attributes:
        commits: transactions run so far (successful or not).
        operations: operations submitted to those transactions.
    """

    def __init__(
        self,
        store: EnvelopeStore,
        prepare: Callable[[list[str]], list[QueueStorageError | None]] | None = None,
        after_durable: Callable[[], AfterDurable | None] | None = None,
    ) -> None:
        self.store = store
        #: Called as a durable transaction starts; what it returns runs in the same thread trip
        #: once that transaction committed, when everything committed before it is durable too
        #: (qmgr: remove the content of messages whose deletion was committed without an fsync).
        #: It rides on an fsync that is paid anyway instead of paying one (and a trip) of its own.
        self._after_durable = after_durable
        #: Runs in the store's thread before each transaction, on the ``prepare`` arguments of the
        #: batch's operations (qmgr: fsync the new messages' content files); an operation whose
        #: preparation failed fails with that error and stays out of the transaction.
        self._prepare = prepare
        # One thread for the store, so transactions and queries run one at a time, in order.
        self._thread = OffloadThread("envelope-store")
        self._running: _Batch | None = None
        self._pending: _Batch | None = None
        self.commits = 0
        self.operations = 0

    @property
    def waiting(self) -> int:
        """Operations queued for the next transaction (not yet started)."""
        return 0 if self._pending is None else len(self._pending.ops)

    async def commit_new(self, envelope: Envelope, prepare: str | None = None) -> None:
        """Make a new envelope durable.

        ``prepare``: an argument for the committer's ``prepare`` function, run in the same thread
        trip just before the transaction (qmgr passes the message's content file).

        Raises:
            QueueStorageError: the batch failed; the envelope is not stored.
            DuplicateMessageError: its queue id is already stored.
        """
        await self._submit(InsertEnvelope(envelope), prepare=prepare)

    async def update_recipients(
        self, qid: str, updates: Iterable[RecipientUpdate | tuple[Any, ...]], durable: bool = True
    ) -> None:
        """Record recipient results: ``(idx, status, attempts, next_attempt, last_reply,
        destination)`` tuples or :class:`RecipientUpdate` values.

        ``durable=False``: see :meth:`apply_atomic`.

        Raises:
            QueueStorageError: the batch failed; nothing was recorded.
            UnknownMessageError: the message or a recipient index does not exist.
        """
        await self._submit(UpdateRecipients(qid, _as_updates(updates)), durable)

    async def delete(self, qid: str) -> bool:
        """Remove a message from the store; return False if it was not there."""
        result: bool = await self._submit(DeleteMessage(qid))
        return result

    async def set_hold(self, qid: str, hold: bool) -> bool:
        """Put a message on hold or release it; return False if it does not exist."""
        result: bool = await self._submit(SetHold(qid, hold))
        return result

    async def apply_atomic(self, ops: Sequence[StoreOp], durable: bool = True) -> list[Any]:
        """Apply ``ops`` all together or not at all, in the next group commit.

        ``durable=False`` is for delivery bookkeeping that no client is waiting on (results,
        deletions of finished messages, their bounces): the operations are committed and visible
        at once and survive a crash of qmgr, but a crash of the system may undo them until the
        next durable transaction or :meth:`sync` (the message is then tried again: a duplicate,
        never a loss). A batch is durable if any operation in it is.

        Raises:
            QueueStorageError: the batch failed; nothing was applied.
            DuplicateMessageError, UnknownMessageError: one of the operations failed; none was
                applied.
        """
        inner = tuple(op for op in ops if not isinstance(op, Atomic))
        if len(inner) != len(ops):
            raise TypeError("Atomic operations do not nest")
        result: list[Any] = await self._submit(Atomic(inner), durable)
        return result

    async def probe(self) -> None:
        """Run :meth:`EnvelopeStore.probe` in the store's thread, between transactions.

        Raises:
            QueueStorageError: the store still cannot be written.
        """
        await self._thread.run(self.store.probe)

    async def read(self, fn: Callable[[EnvelopeStore], T]) -> T:
        """Run ``fn(store)`` in the store's worker thread, between commits (for queries)."""
        return await self._thread.run(fn, self.store)

    async def _submit(self, op: StoreOp, durable: bool = True, prepare: str | None = None) -> Any:
        pending = _PendingOp(op, durable, prepare)
        if self._pending is None:
            self._pending = _Batch()
        batch = self._pending
        batch.ops.append(pending)
        try:
            while not batch.done.is_set():
                if self._running is None:
                    # No transaction is running and nobody has started ours: start it.
                    assert self._pending is batch
                    self._pending = None
                    await self._perform(batch)
                    break
                await self._running.done.wait()
        except trio.Cancelled:
            if self._pending is batch:
                batch.ops.remove(pending)
                if not batch.ops:
                    self._pending = None
            raise
        if batch.error is not None:
            err = QueueStorageError(str(batch.error), batch.error.errno)
            raise err from batch.error.__cause__
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _run_batch(
        self, pending: list[_PendingOp], durable: bool, after: AfterDurable | None = None
    ) -> tuple[list[Any], bool]:
        """In the store's thread: the preparations, then one transaction for what they allow,
        then ``after`` if that transaction was durable. Returns the outcomes and whether ``after``
        ran."""
        ops = [p.op for p in pending]
        if self._prepare is None or all(p.prepare is None for p in pending):
            outcomes = self.store.apply(ops, durable)
            return outcomes, self._run_after(after)
        prepared = [i for i, p in enumerate(pending) if p.prepare is not None]
        errors = dict(zip(prepared, self._prepare([pending[i].prepare or "" for i in prepared]), strict=True))
        failed = {i: e for i, e in errors.items() if e is not None}
        todo = [op for i, op in enumerate(ops) if i not in failed]
        done = iter(self.store.apply(todo, durable) if todo else [])
        outcomes = [failed[i] if i in failed else next(done) for i in range(len(ops))]
        return outcomes, bool(todo) and self._run_after(after)

    @staticmethod
    def _run_after(after: AfterDurable | None) -> bool:
        if after is None:
            return False
        try:
            after.run()
        except Exception:  # its own errors are its business; it is offered again
            return False
        return True

    async def _perform(self, batch: _Batch) -> None:
        self._running = batch
        self.commits += 1
        self.operations += len(batch.ops)
        try:
            with trio.CancelScope(shield=True):
                durable = any(p.durable for p in batch.ops)
                after = self._after_durable() if durable and self._after_durable is not None else None
                ran = False
                try:
                    outcomes, ran = await self._thread.run(self._run_batch, batch.ops, durable, after)
                finally:
                    if after is not None:
                        after.finished(ran)
            for pending, outcome in zip(batch.ops, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    pending.error = outcome
                else:
                    pending.result = outcome
        except QueueStorageError as exc:
            batch.error = exc
        except BaseException as exc:
            # A bug: the caller that ran the batch gets the traceback, the others a clean error.
            batch.error = QueueStorageError(f"envelope batch failed: {exc!r}")
            raise
        finally:
            self._running = None
            batch.done.set()
