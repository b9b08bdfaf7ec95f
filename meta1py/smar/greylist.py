"""Greylisting for smar: the decision (pure) and its SQLite store.

WHAT
    A triplet is (client network, sender, recipient): the client's address cut to
    ``ipv4_netmask``/``ipv6_netmask`` bits (an IPv4-mapped IPv6 address counts as IPv4), and the
    sender and recipient lower-cased, the null sender written ``<>``. The first attempt of a new
    triplet is deferred; a retry before ``delay`` is deferred again; a retry after ``delay`` (and
    within ``retry_window`` of the first attempt) passes, and its client network is then whitelisted
    for ``whitelist_expiry``, renewed by each message (at most once a minute): later mail from that
    network passes whatever its sender and recipient. A deferred triplet that is not retried within
    ``retry_window`` is forgotten. This is postgrey's scheme with its auto-whitelisting of
    clients, done per network because big senders retry from another host of the same pool.

    :class:`GreyPolicy` decides from what the store knows (no I/O, an explicit ``now``);
    :class:`Greylist` keeps that knowledge in SQLite and runs one check in one transaction.

STORE
    One SQLite file (``smar { greylisting { database } }``, by default ``greylist.db`` in smar's
    data directory ``queue_directory/smar``, which mcp creates for smar's user, mode 0700).
    ``journal_mode=WAL``, so that ``meta1 grey list`` reads while smar writes, and
    ``synchronous=NORMAL``: a commit does not wait for an fsync (the WAL is synced at checkpoints),
    so a check costs no disk flush on the RCPT path; a power failure can lose the last commits, which
    costs at worst one more deferral of a triplet or a network seen in the last seconds, and WAL
    with NORMAL never corrupts the file. FULL would buy nothing worth an fsync per recipient.

    The busy timeout is short (``BUSY_TIMEOUT_S``, 0.2 s): a database locked by another process
    (an operator's ``sqlite3`` shell, ``meta1 grey remove``) makes a check fail quickly with
    :class:`GreylistUnavailableError` rather than hold up smar. So does every other SQLite or OS
    error: a corrupt or foreign file, a full disk, a directory smar cannot write. smar answers
    those with a temporary failure; nothing here raises anything else for a bad database.

    Rows carry the time they expire (a deferred triplet: first attempt + ``retry_window``; a passed
    triplet and a whitelisted network: last message + ``whitelist_expiry``), so a row past it counts
    as absent at once, and a sweep at most once a minute (``EXPIRY_INTERVAL_S``, at most
    ``EXPIRY_BATCH`` rows of each table, inside a check's transaction) deletes such rows through an
    index. A changed ``retry_window`` or ``whitelist_expiry`` applies to rows written afterwards.

THREADS
    smar calls :meth:`Greylist.check` from a worker thread (each call is a few statements in one
    transaction). One connection (``check_same_thread=False``) serves whichever thread calls; a lock
    makes calls take turns, and a call that cannot get the lock within ``LOCK_WAIT_S`` fails as
    "locked" instead of queueing behind a stuck database.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from meta1py.netaddr import client_ip

if TYPE_CHECKING:
    from meta1py.conf.model import GreylistingConfig

__all__ = [
    "BUSY_TIMEOUT_S",
    "GreyAction",
    "GreyDecision",
    "GreyEntries",
    "GreyPolicy",
    "GreyReason",
    "GreyStep",
    "Greylist",
    "GreylistUnavailableError",
    "NetworkEntry",
    "Removed",
    "Triplet",
    "TripletEntry",
    "TripletState",
    "UnavailableKind",
    "normalize_address",
    "target_network",
]

T = TypeVar("T")

#: ``pass``: let the recipient through (as far as greylisting goes); ``defer``: 4xx, try later.
GreyAction = Literal["pass", "defer"]
#: Why: ``whitelisted`` (the client network retried before), ``retried`` (this triplet's retry came
#: after the delay: the network is whitelisted now), ``new`` (first attempt), ``early`` (a retry
#: before the delay), ``no_ip`` (the client has no IP address, e.g. a Unix socket peer: not greylisted).
GreyReason = Literal["whitelisted", "retried", "new", "early", "no_ip"]
#: What made the database unusable: ``locked`` (busy: try again soon), ``corrupt`` (not a database,
#: damaged, or a schema this version cannot read), ``io`` (cannot open or create it, I/O error,
#: disk full, read-only).
UnavailableKind = Literal["locked", "corrupt", "io"]

SCHEMA_VERSION = 1
#: How long a statement waits for another connection's lock before it fails ("locked").
BUSY_TIMEOUT_S = 0.2
#: How long a call waits for another thread's call on the same object before it fails ("locked").
LOCK_WAIT_S = 1.0
#: Expired rows are deleted at most this often ...
EXPIRY_INTERVAL_S = 60.0
#: ... at most this many per table and sweep (a backlog is swept on the next calls).
EXPIRY_BATCH = 1000
#: A whitelisted network's expiry is renewed at most this often (a write per recipient of a busy
#: client would grow the WAL for nothing).
RENEW_INTERVAL_S = 60.0


class GreylistUnavailableError(Exception):
    """The greylisting database cannot answer: locked, corrupt, unreadable, unwritable or full.

    ``str()`` is a readable sentence naming the file, for the log. smar turns it into a temporary
    failure; the CLI into an exit status.

    Attributes:
        path: the database file.
        kind: ``locked``, ``corrupt`` or ``io`` (:data:`UnavailableKind`).
        detail: what went wrong, without the path.
    """

    def __init__(self, path: Path, kind: UnavailableKind, detail: str) -> None:
        super().__init__(f"greylist database {path}: {detail}")
        self.path = path
        self.kind: UnavailableKind = kind
        self.detail = detail


def _unavailable(path: Path, exc: sqlite3.Error | OSError) -> GreylistUnavailableError:
    """Classify an SQLite or OS error (the name of SQLite's code tells locks from damage)."""
    if isinstance(exc, OSError):
        return GreylistUnavailableError(path, "io", exc.strerror or str(exc))
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return GreylistUnavailableError(path, "locked", f"locked by another process ({exc})")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return GreylistUnavailableError(
            path, "corrupt", f"damaged or not a database ({exc}); move it away and smar starts a new one"
        )
    if name.startswith("SQLITE_FULL"):
        return GreylistUnavailableError(path, "io", f"disk full ({exc})")
    return GreylistUnavailableError(path, "io", f"{exc} ({name or type(exc).__name__})")


def normalize_address(address: str) -> str:
    """A sender or recipient as a triplet holds it: without ``<>``, lower-cased; the null sender
    (empty or ``<>``) as ``<>``."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text.lower() if text else "<>"


@dataclass(frozen=True, slots=True)
class Triplet:
    """The key of greylisting: ``network`` in CIDR form (``192.0.2.0/24``), the normalized
    addresses (:func:`normalize_address`)."""

    network: str
    sender: str
    recipient: str


@dataclass(frozen=True, slots=True)
class GreyDecision:
    """Greylisting's answer for one recipient.

    Attributes:
        action: ``pass`` or ``defer``.
        reason: why (:data:`GreyReason`).
        network: the client network of the triplet (``""`` for ``no_ip``).
        retry_in_s: for ``defer``: whole seconds until a retry can pass (at least 1); else 0.
    """

    action: GreyAction
    reason: GreyReason
    network: str
    retry_in_s: int = 0


@dataclass(frozen=True, slots=True)
class TripletState:
    """What the store knows about one triplet (times are Unix seconds)."""

    first_seen: float
    last_seen: float
    attempts: int
    passed: bool
    #: When the row counts as absent: first_seen + retry_window while deferred, last_seen +
    #: whitelist_expiry once passed.
    expires: float


@dataclass(frozen=True, slots=True)
class GreyStep:
    """The outcome of :meth:`GreyPolicy.decide`: the decision and what to write.

    Attributes:
        decision: the answer.
        triplet: the triplet's new state (None: leave the row as it is).
        whitelist_until: whitelist the network, or renew it, until then (None: leave it).
    """

    decision: GreyDecision
    triplet: TripletState | None
    whitelist_until: float | None


@dataclass(frozen=True, slots=True)
class GreyPolicy:
    """The settings and the pure decision (no I/O, no clock).

    Attributes:
        delay_s: how long a new triplet is deferred.
        retry_window_s: how long, from its first attempt, a deferred triplet waits for its retry.
        whitelist_expiry_s: how long a network stays whitelisted after its last message.
        ipv4_netmask, ipv6_netmask: the prefix lengths of the client network.
    """

    delay_s: float = 300.0
    retry_window_s: float = 2 * 86400.0
    whitelist_expiry_s: float = 35 * 86400.0
    ipv4_netmask: int = 24
    ipv6_netmask: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.ipv4_netmask <= 32 or not 0 <= self.ipv6_netmask <= 128:
            raise ValueError(f"bad netmask /{self.ipv4_netmask} or /{self.ipv6_netmask}")
        if self.delay_s < 0 or self.retry_window_s <= 0 or self.whitelist_expiry_s <= 0:
            raise ValueError("greylisting times must be positive (delay may be 0)")

    @classmethod
    def from_config(cls, section: GreylistingConfig) -> GreyPolicy:
        """The policy of ``smar { greylisting { } }``."""
        return cls(
            delay_s=section.delay,
            retry_window_s=section.retry_window,
            whitelist_expiry_s=section.whitelist_expiry,
            ipv4_netmask=section.ipv4_netmask,
            ipv6_netmask=section.ipv6_netmask,
        )

    def network_of(self, client: str) -> str | None:
        """The client network (CIDR text) of address ``client``; None when it is not an IP address."""
        ip = client_ip(client)
        if ip is None:
            return None
        bits = self.ipv4_netmask if ip.version == 4 else self.ipv6_netmask
        return str(ipaddress.ip_network((ip, bits), strict=False))

    def triplet(self, client: str, sender: str, recipient: str) -> Triplet | None:
        """The triplet of one recipient; None when the client has no IP address."""
        network = self.network_of(client)
        if network is None:
            return None
        return Triplet(network, normalize_address(sender), normalize_address(recipient))

    def decide(
        self, network: str, now: float, whitelisted_until: float | None, state: TripletState | None
    ) -> GreyStep:
        """Decide for one triplet of ``network``.

        Args:
            network: the triplet's client network.
            now: the current time (Unix seconds).
            whitelisted_until: the network's whitelist expiry, if the store has one.
            state: the triplet's row, if the store has one.

        Returns:
            The decision and what the store must write.
        """
        if whitelisted_until is not None and whitelisted_until > now:
            renew = now + self.whitelist_expiry_s
            # Renewed at most once a RENEW_INTERVAL_S: a busy client would otherwise cost a write
            # per recipient.
            due = renew - whitelisted_until >= RENEW_INTERVAL_S
            return GreyStep(GreyDecision("pass", "whitelisted", network), None, renew if due else None)
        if state is not None and state.expires <= now:
            state = None  # forgotten: a deferred triplet not retried in time, or a stale pass
        if state is None:
            new = TripletState(now, now, 1, False, now + self.retry_window_s)
            return GreyStep(GreyDecision("defer", "new", network, _seconds(self.delay_s)), new, None)
        if state.passed or now - state.first_seen >= self.delay_s:
            until = now + self.whitelist_expiry_s
            passed = TripletState(state.first_seen, now, state.attempts + 1, True, until)
            return GreyStep(GreyDecision("pass", "retried", network), passed, until)
        left = state.first_seen + self.delay_s - now
        early = replace(state, last_seen=now, attempts=state.attempts + 1)
        return GreyStep(GreyDecision("defer", "early", network, _seconds(left)), early, None)


def _seconds(value: float) -> int:
    """Whole seconds to wait, rounded up, at least 1 (a "try again in 0 seconds" helps nobody)."""
    return max(1, math.ceil(value))


@dataclass(frozen=True, slots=True)
class TripletEntry:
    """One triplet as ``meta1 grey list`` shows it."""

    network: str
    sender: str
    recipient: str
    first_seen: float
    last_seen: float
    attempts: int
    state: Literal["deferred", "passed"]
    expires: float


@dataclass(frozen=True, slots=True)
class NetworkEntry:
    """One whitelisted client network."""

    network: str
    first_seen: float
    last_seen: float
    expires: float


@dataclass(frozen=True, slots=True)
class GreyEntries:
    """Everything alive in the store, networks in address order."""

    triplets: tuple[TripletEntry, ...]
    networks: tuple[NetworkEntry, ...]


@dataclass(frozen=True, slots=True)
class Removed:
    """What :meth:`Greylist.remove` deleted."""

    triplets: int
    networks: int


_SCHEMA = (
    "CREATE TABLE greylist_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE triplets ("
    " network TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,"
    " first_seen REAL NOT NULL, last_seen REAL NOT NULL, attempts INTEGER NOT NULL,"
    " passed INTEGER NOT NULL, expires REAL NOT NULL,"
    " PRIMARY KEY (network, sender, recipient)) WITHOUT ROWID",
    "CREATE INDEX triplets_expires ON triplets (expires)",
    "CREATE TABLE networks ("
    " network TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL NOT NULL,"
    " expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX networks_expires ON networks (expires)",
)


def _sort_key(network: str) -> tuple[int, int, int]:
    net = ipaddress.ip_network(network, strict=False)
    return (net.version, int(net.network_address), net.prefixlen)


class Greylist:
    """The greylisting store: :meth:`check` for smar, :meth:`entries` and :meth:`remove` for
    ``meta1 grey``.

    Nothing is opened before the first call, and a failed call closes the connection (unless the
    database was only locked), so that a database an operator moved away or repaired is opened
    afresh by the next call. Every method raises :class:`GreylistUnavailableError` for any SQLite or
    OS error, and nothing else for a bad database.

    Args:
        path: the database file; created (mode 0600) on first use unless ``readonly``.
        policy: the settings (:meth:`GreyPolicy.from_config`).
        clock: the current time in Unix seconds (tests inject their own); wall-clock time, because
            the rows outlive the process.
        busy_timeout_s: how long a statement waits for another connection's lock.
        readonly: open for reading only (``meta1 grey list``); a missing file reads as empty.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        policy: GreyPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.policy = policy if policy is not None else GreyPolicy()
        self.readonly = readonly
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._opened_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._next_sweep = 0.0

    @classmethod
    def from_config(cls, section: GreylistingConfig, *, clock: Callable[[], float] = time.time) -> Greylist:
        """The store of ``smar { greylisting { } }``: its ``database`` (already absolute after
        parsing: a relative one is relative to smar's data directory) and its policy."""
        return cls(section.database, GreyPolicy.from_config(section), clock=clock)

    # -- connection ---------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection | None:
        """A new connection with the schema in place; None: ``readonly`` and nothing stored yet."""
        if self.readonly:
            if not self.path.exists():
                return None
            uri = self.path.absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(
                uri, uri=True, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        else:
            if not self.path.exists():
                # Created by us, so that its mode is 0600 (SQLite gives -wal and -shm the same one);
                # O_NOFOLLOW: never create a file through a dangling symbolic link.
                flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                os.close(os.open(self.path, flags, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        try:
            if not self._prepare(conn):
                conn.close()
                return None
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> bool:
        """WAL mode and the schema (created on first use); False: read-only and still empty."""
        if not self.readonly:
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if mode.lower() != "wal":
                raise GreylistUnavailableError(self.path, "io", f"cannot switch to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = NORMAL")  # why: the module docstring, STORE
        conn.execute("BEGIN" if self.readonly else "BEGIN IMMEDIATE")
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "greylist_meta" not in tables:
                if tables:
                    raise GreylistUnavailableError(
                        self.path, "corrupt", f"not a greylist database (it has tables {sorted(tables)})"
                    )
                if self.readonly:
                    return False
                # One transaction: a crash leaves either no schema or all of it with its version.
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO greylist_meta (name, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            else:
                row = conn.execute("SELECT value FROM greylist_meta WHERE name = 'schema_version'").fetchone()
                if row is None or row[0] != str(SCHEMA_VERSION):
                    found = "none" if row is None else row[0]
                    raise GreylistUnavailableError(
                        self.path, "corrupt", f"schema version {found}, this version reads {SCHEMA_VERSION}"
                    )
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        return True

    def _call(self, work: Callable[[sqlite3.Connection | None], T]) -> T:
        """Run ``work`` on the connection (opened if needed), one caller at a time, with every
        SQLite and OS error turned into :class:`GreylistUnavailableError`."""
        if not self._lock.acquire(timeout=LOCK_WAIT_S):
            raise GreylistUnavailableError(
                self.path, "locked", f"busy: an earlier check has not finished within {LOCK_WAIT_S:g} s"
            )
        try:
            if self._conn is not None and self._file_id() != self._opened_id:
                # The file was replaced or moved away (an operator repairing it): open it afresh
                # rather than keep writing to a file nobody will read again.
                self._conn.close()
                self._conn = None
            if self._conn is None:
                self._opened_id = self._file_id()
                self._conn = self._open()
                if self._opened_id is None:
                    self._opened_id = self._file_id()
            return work(self._conn)
        except (sqlite3.Error, OSError) as exc:
            error = _unavailable(self.path, exc)
            self._after_error(error.kind)
            raise error from exc
        except GreylistUnavailableError as exc:
            self._after_error(exc.kind)
            raise
        except BaseException:
            self._after_error("io")  # a bug: let it propagate, but leave no transaction open
            raise
        finally:
            self._lock.release()

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def _after_error(self, kind: UnavailableKind) -> None:
        """Roll back; keep the connection only when the database was merely locked."""
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            kind = "io"  # a connection that cannot even roll back is not kept
        if kind != "locked":
            # Reopen by path next time: the operator may have moved a damaged file away.
            self._conn = None
            conn.close()

    def close(self) -> None:
        """Close the connection (the next call opens it again)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Greylist:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- smar ---------------------------------------------------------------------------------

    def check(self, client: str, sender: str, recipient: str) -> GreyDecision:
        """Greylist one recipient: read and update its triplet and network in one transaction.

        Args:
            client: the client's IP address as smtps reports it.
            sender: MAIL FROM (``""`` or ``<>``: the null sender).
            recipient: RCPT TO.

        Returns:
            ``pass`` or ``defer`` with the reason (and, for ``defer``, the seconds left).

        Raises:
            GreylistUnavailableError: the database is locked, corrupt, unreadable or full.
        """
        triplet = self.policy.triplet(client, sender, recipient)
        if triplet is None:
            return GreyDecision("pass", "no_ip", "")
        return self._call(lambda conn: self._check(_required(conn), triplet))

    def peek(self, client: str, sender: str, recipient: str) -> GreyDecision:
        """What :meth:`check` would decide now, without writing anything (``meta1 explain``; works
        on a ``readonly`` store, where a database not created yet reads as empty).

        Raises:
            GreylistUnavailableError: as :meth:`check`.
        """
        triplet = self.policy.triplet(client, sender, recipient)
        if triplet is None:
            return GreyDecision("pass", "no_ip", "")
        return self._call(lambda conn: self._check(conn, triplet, write=False))

    def _check(self, conn: sqlite3.Connection | None, t: Triplet, *, write: bool = True) -> GreyDecision:
        now = self._clock()
        if conn is None:  # read-only, nothing stored yet
            return self.policy.decide(t.network, now, None, None).decision
        if not write:
            conn.execute("BEGIN")
            try:
                return self._decide(conn, t, now).decision
            finally:
                conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        return self._finish(conn, t, now, self._decide(conn, t, now))

    def _decide(self, conn: sqlite3.Connection, t: Triplet, now: float) -> GreyStep:
        row = conn.execute("SELECT expires FROM networks WHERE network = ?", (t.network,)).fetchone()
        whitelisted_until = float(row[0]) if row is not None else None
        state = None
        if whitelisted_until is None or whitelisted_until <= now:
            found = conn.execute(
                "SELECT first_seen, last_seen, attempts, passed, expires FROM triplets"
                " WHERE network = ? AND sender = ? AND recipient = ?",
                (t.network, t.sender, t.recipient),
            ).fetchone()
            if found is not None:
                state = TripletState(
                    float(found[0]), float(found[1]), int(found[2]), bool(found[3]), float(found[4])
                )
        return self.policy.decide(t.network, now, whitelisted_until, state)

    def _write(self, conn: sqlite3.Connection, t: Triplet, now: float, step: GreyStep) -> None:
        if step.triplet is not None:
            s = step.triplet
            conn.execute(
                "INSERT INTO triplets (network, sender, recipient, first_seen, last_seen, attempts, passed,"
                " expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (network, sender, recipient) DO UPDATE SET first_seen = excluded.first_seen,"
                " last_seen = excluded.last_seen, attempts = excluded.attempts, passed = excluded.passed,"
                " expires = excluded.expires",
                (
                    t.network,
                    t.sender,
                    t.recipient,
                    s.first_seen,
                    s.last_seen,
                    s.attempts,
                    int(s.passed),
                    s.expires,
                ),
            )
        if step.whitelist_until is not None:
            conn.execute(
                "INSERT INTO networks (network, first_seen, last_seen, expires) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (network) DO UPDATE SET last_seen = excluded.last_seen,"
                " expires = excluded.expires",
                (t.network, now, now, step.whitelist_until),
            )

    def _finish(self, conn: sqlite3.Connection, t: Triplet, now: float, step: GreyStep) -> GreyDecision:
        self._write(conn, t, now, step)
        next_sweep = self._next_sweep
        if now >= next_sweep:
            backlog = self._sweep(conn, now)
            # A full batch leaves a backlog: sweep again on the next call.
            next_sweep = now if backlog else now + EXPIRY_INTERVAL_S
        conn.execute("COMMIT")
        self._next_sweep = next_sweep
        return step.decision

    @staticmethod
    def _sweep(conn: sqlite3.Connection, now: float) -> bool:
        """Delete up to EXPIRY_BATCH expired rows of each table (through the expires indexes);
        True when a batch was full (more may be left)."""
        triplets = conn.execute(
            "DELETE FROM triplets WHERE (network, sender, recipient) IN"
            " (SELECT network, sender, recipient FROM triplets WHERE expires <= ? LIMIT ?)",
            (now, EXPIRY_BATCH),
        ).rowcount
        networks = conn.execute(
            "DELETE FROM networks WHERE network IN (SELECT network FROM networks WHERE expires <= ? LIMIT ?)",
            (now, EXPIRY_BATCH),
        ).rowcount
        return max(triplets, networks) >= EXPIRY_BATCH

    # -- meta1 grey ---------------------------------------------------------------------------

    def entries(self) -> GreyEntries:
        """Every triplet and whitelisted network that has not expired (one read transaction).

        Raises:
            GreylistUnavailableError: as :meth:`check`.
        """
        return self._call(self._entries)

    def _entries(self, conn: sqlite3.Connection | None) -> GreyEntries:
        if conn is None:
            return GreyEntries((), ())
        now = self._clock()
        conn.execute("BEGIN")
        triplet_rows = conn.execute(
            "SELECT network, sender, recipient, first_seen, last_seen, attempts, passed, expires"
            " FROM triplets WHERE expires > ?",
            (now,),
        ).fetchall()
        network_rows = conn.execute(
            "SELECT network, first_seen, last_seen, expires FROM networks WHERE expires > ?", (now,)
        ).fetchall()
        conn.execute("COMMIT")
        triplets = [
            TripletEntry(r[0], r[1], r[2], r[3], r[4], r[5], "passed" if r[6] else "deferred", r[7])
            for r in triplet_rows
        ]
        triplets.sort(key=lambda e: (_sort_key(e.network), e.sender, e.recipient))
        networks = [NetworkEntry(r[0], r[1], r[2], r[3]) for r in network_rows]
        networks.sort(key=lambda e: _sort_key(e.network))
        return GreyEntries(tuple(triplets), tuple(networks))

    def remove(self, target: str, sender: str | None = None, recipient: str | None = None) -> Removed:
        """Delete the triplets of every stored network that overlaps ``target`` (and, without
        ``sender`` and ``recipient``, those networks' whitelisting), in one transaction.

        Args:
            target: an IP address (the network that contains it) or a network in CIDR form (every
                stored network inside it or around it).
            sender: only triplets with this sender (normalized; ``<>`` the null sender).
            recipient: only triplets with this recipient.

        Returns:
            How many triplets and whitelisted networks were deleted.

        Raises:
            ValueError: ``target`` is neither an IP address nor a network.
            GreylistUnavailableError: as :meth:`check`.
        """
        wanted = target_network(target)
        return self._call(lambda conn: self._remove(_required(conn), wanted, sender, recipient))

    def _remove(
        self,
        conn: sqlite3.Connection,
        wanted: ipaddress.IPv4Network | ipaddress.IPv6Network,
        sender: str | None,
        recipient: str | None,
    ) -> Removed:
        conn.execute("BEGIN IMMEDIATE")
        stored = [
            r[0] for r in conn.execute("SELECT network FROM triplets UNION SELECT network FROM networks")
        ]
        matching = [n for n in stored if _overlaps(n, wanted)]
        where, extra = "network = ?", []
        if sender is not None:
            where += " AND sender = ?"
            extra.append(normalize_address(sender))
        if recipient is not None:
            where += " AND recipient = ?"
            extra.append(normalize_address(recipient))
        triplets = networks = 0
        for network in matching:
            triplets += conn.execute(f"DELETE FROM triplets WHERE {where}", (network, *extra)).rowcount
            if sender is None and recipient is None:
                networks += conn.execute("DELETE FROM networks WHERE network = ?", (network,)).rowcount
        conn.execute("COMMIT")
        return Removed(triplets, networks)


def _required(conn: sqlite3.Connection | None) -> sqlite3.Connection:
    """A writable store always has a connection; only a read-only one may have none."""
    if conn is None:
        raise sqlite3.OperationalError("the database is opened read-only and does not exist yet")
    return conn


def target_network(target: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """What ``remove`` matches: an IP address as a one-address network (IPv4-mapped as IPv4), or a
    network in CIDR form (host bits allowed).

    Raises:
        ValueError: neither.
    """
    ip = client_ip(target.strip())
    if ip is not None:
        return ipaddress.ip_network(ip)
    try:
        return ipaddress.ip_network(target.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or network: {target!r}") from None


def _overlaps(stored: str, wanted: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        net = ipaddress.ip_network(stored, strict=False)
    except ValueError:
        return False
    return net.version == wanted.version and net.overlaps(wanted)
