"""The ownership model: every path meta1py uses, who owns it, its mode, and who may do what there.

mcp (as root) creates and repairs the directories at every start (:func:`repair_layout`), and
``meta1 setup --check`` reports what differs (:func:`inspect_layout`) without changing anything.
When mcp is not root every path belongs to the invoking user, with the same modes.

With four worker users (``meta1q``, ``meta1r``, ``meta1c``, ``meta1s``) and one shared group
(``meta1``: the qmgr section's group, which every worker also has as its primary group):

========================  =============  ======  ==================================================
path                      owner:group    mode    who does what
========================  =============  ======  ==================================================
queue_directory           qmgr:meta1     0750    mcp creates; every worker enters; qmgr writes
                                         (0751)  (0751 when smar's greylisting database is in
                                                 queue/smar and smar has a group of its own, or
                                                 when the submission group exists: they may then
                                                 search the directory, not list it)
queue/content             qmgr:meta1     0750    mcp creates; workers enter and read (not write)
queue/content/XX (961)    qmgr:meta1     3730    mcp creates them all (930 of them while the
                                                 workers start); smtps and qmgr create files;
                                                 only qmgr lists and removes (sticky: smtps may
                                                 remove only files it owns); setgid: new files
                                                 are group meta1
content files             creator:meta1  0640    smtps writes (qmgr: bounces); smtpc and qmgr
                                                 read; qmgr removes
envelopes.sqlite(-wal,    qmgr:meta1     0600    qmgr alone (the queue CLI runs as root)
-shm)
run_directory             root:meta1     0750    mcp creates; workers enter; no worker can
                                                 replace a socket
qmgr.sock, smar.sock      root:meta1     0660    mcp binds; any worker connects
smtpc.sock                qmgr:root      0600    mcp binds; only qmgr connects (no other worker
                                                 can make smtpc deliver)
mcp.pid                   root:root      0644    mcp
mcp.status                root:root      0644    mcp rewrites it (meta1py.status); qmgr and
                                                 ``meta1 status`` read it
mail_directory            smtpc:meta1    0700    mcp creates; smtpc delivers Maildirs below it
queue/pickup              qmgr:meta1d    1730    mcp creates; the submission group (setgid_group:
                                                 meta1-postdrop, the setgid helper) creates files
                                                 but cannot list; qmgr reads, moves, removes them
                                                 (group root when setgid_group does not exist:
                                                 only root and qmgr may drop mail there)
pickup files              submitter:     0644    the submitting user owns them (qmgr writes that
                          meta1d                 uid into Received:); qmgr reads them as "other"
queue/corrupt             qmgr:meta1     0700    pickup files that are not messages, for the
                                                 operator
queue/public              qmgr:meta1     0711    mcp creates; qmgr binds showq in it; anyone
                                                 may reach it, nobody else list or write it
public/showq              qmgr:meta1     0666    qmgr binds it at start: the queue listing for
                                                 users in authorized_mailq_users (SO_PEERCRED)
queue/smar                smar:smar      0700    mcp creates; smar alone: its data directory
queue/test (test mode)    qmgr:meta1     2770    qmgr writes the active scripts; smtps and smtpc
                                                 read them
queue/test/messages       smtpc:meta1    2770    smtpc writes captured deliveries; qmgr reads
                                                 and clears them
greylist.db(-wal,-shm)    smar:smar      0600    smar creates and writes them (``meta1 grey``
                                                 runs as their owner); mcp repairs
TLS keys, password_file   (operator)     0600    read by smtps and smtpc at start, *before* they
                                                 drop privileges; root:root 0600 keeps them from
                                                 every worker afterwards
========================  =============  ======  ==================================================

Repairs never follow symbolic links: a worker that owns a directory could otherwise plant a link
and make root change the owner of an arbitrary file. Every path below the queue directory is
opened relative to its parent with ``O_NOFOLLOW`` and changed through its descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from meta1py.contract import WORKER_NAMES, smar_data_directory, test_directory
from meta1py.queue.ids import ALPHABET, is_seed_subdir
from meta1py.queue.pickup import CORRUPT_DIRNAME, PICKUP_DIRNAME
from meta1py.queue.showq import public_directory

if TYPE_CHECKING:
    from meta1py.conf import Config

#: Roles that own paths: the four workers, and root (mcp).
Role = Literal["root", "qmgr", "smar", "smtpc", "smtps"]

QUEUE_DIR_MODE = 0o750
#: The queue directory when smar, in a group of its own, must reach its greylisting database below
#: it: others may search (not list) it. Every entry in it stays closed to them (content/ and the
#: run directory 0750, the envelope store 0600, smar's directory 0700); what they gain is stat()
#: of a name they guess (the envelope store's size and time).
QUEUE_DIR_SEARCH_MODE = 0o751
SMAR_DATA_DIR_MODE = 0o700
#: queue/test and queue/test/messages in test mode: setgid, group-writable (qmgr and smtpc).
TEST_DIR_MODE = 0o2770
GREYLIST_FILE_MODE = 0o600
CONTENT_DIR_MODE = 0o750
#: setgid (files take the shared group), sticky (only a file's owner or qmgr may remove it), owner
#: rwx, group wx: workers may create and open files by name, but not list the directory.
CONTENT_SUBDIR_MODE = 0o3730
ENVELOPE_FILE_MODE = 0o600
RUN_DIR_MODE = 0o750
MAIL_DIR_MODE = 0o700
#: sticky (a submitter may remove only its own files; qmgr owns the directory), owner rwx, group
#: wx: the submission group may create files and open them by name, not list the directory.
PICKUP_DIR_MODE = 0o1730
CORRUPT_DIR_MODE = 0o700
#: queue/public: every local user may reach the sockets in it (qmgr's showq), none may list it.
PUBLIC_DIR_MODE = 0o711
SHARED_SOCKET_MODE = 0o660
PRIVATE_SOCKET_MODE = 0o600

ENVELOPE_FILES = ("envelopes.sqlite", "envelopes.sqlite-wal", "envelopes.sqlite-shm")


@dataclass(frozen=True)
class Account:
    """A worker's account, resolved (`resolve_accounts`)."""

    user: str
    group: str
    uid: int
    gid: int


class UnknownAccountError(LookupError):
    """A worker's ``user`` or ``group`` does not exist on this system."""


def resolve_accounts(cfg: Config) -> dict[str, Account]:
    """Look up every worker's ``user``/``group``, as mcp does at start and ``meta1 setup`` checks.

    Raises:
        UnknownAccountError: an account does not exist (``conf.check_accounts`` normally reports
            this earlier, with the ``useradd`` line to fix it).
    """
    from meta1py.conf import process_config

    accounts: dict[str, Account] = {}
    for name in WORKER_NAMES:
        section = process_config(cfg, name)
        if section is None:
            continue
        try:
            uid = pwd.getpwnam(section.user).pw_uid
            gid = grp.getgrnam(section.group).gr_gid
        except KeyError as exc:
            raise UnknownAccountError(f"{name}: unknown account {exc.args[0]}") from None
        accounts[name] = Account(section.user, section.group, uid, gid)
    return accounts


@dataclass(frozen=True)
class Ids:
    """The uid and gid a role's paths get (resolved accounts, or the invoking user)."""

    uid: int
    gid: int


@dataclass(frozen=True)
class Owners:
    """Who owns what: the uid/gid of each role, and the group every worker shares."""

    roles: Mapping[str, Ids]
    shared_gid: int
    #: Owner of mcp's own paths: 0 when mcp is root, else the invoking user.
    admin_uid: int = 0
    #: The pickup directory's group (``setgid_group``), None when it does not exist (the
    #: directory then gets root's group: only root and qmgr may drop mail there).
    submission_gid: int | None = None

    def uid(self, role: Role) -> int:
        """The uid of ``role`` (``root``: mcp's own uid)."""
        return self.admin_uid if role == "root" else self.roles[role].uid

    @classmethod
    def unprivileged(cls) -> Owners:
        """Everything belongs to the invoking user (mcp is not root)."""
        me = Ids(os.getuid(), os.getgid())
        return cls({name: me for name in WORKER_NAMES}, me.gid, me.uid, me.gid)

    @classmethod
    def from_accounts(cls, accounts: Mapping[str, Account], submission_gid: int | None = None) -> Owners:
        """From the workers' accounts; the shared group is qmgr's; ``submission_gid`` is
        :func:`submission_gid` of the configuration."""
        roles = {name: Ids(a.uid, a.gid) for name, a in accounts.items()}
        return cls(roles, roles["qmgr"].gid, 0, submission_gid)


def submission_gid(cfg: Config) -> int | None:
    """The gid of ``setgid_group`` (the pickup directory's group), or None when it does not exist
    (``meta1 setup --sendmail`` creates it)."""
    try:
        return grp.getgrnam(cfg.setgid_group).gr_gid
    except KeyError:
        return None


@dataclass(frozen=True)
class Expected:
    """One path of the layout and what it should look like."""

    path: Path
    kind: Literal["dir", "file"]
    uid: int
    gid: int
    mode: int
    #: Created by mcp when missing (directories); files are only checked when they exist.
    create: bool
    #: May be created after the workers started (:func:`create_deferred`): the content
    #: subdirectories other than the seed ones (meta1py.queue.ids.is_seed_subdir).
    later: bool = False


@dataclass(frozen=True)
class Problem:
    """A path that is not as the model says."""

    path: Path
    found: str
    expected: str
    #: False when only an operator can fix it (wrong type, a symbolic link, unreachable).
    fixable: bool = True

    def __str__(self) -> str:
        return f"{self.path}: found {self.found}, expected {self.expected}"


class LayoutError(Exception):
    """A path that mcp cannot create or repair; the message names the path, what it found and
    what it expected."""


def content_subdirs() -> Iterator[str]:
    """The names of the 961 content subdirectories (the last two symbols of a queue id)."""
    for first in ALPHABET:
        for second in ALPHABET:
            yield first + second


def queue_directory_mode(cfg: Config, owners: Owners) -> int:
    """`QUEUE_DIR_MODE`, or `QUEUE_DIR_SEARCH_MODE` when smar must search the queue directory to
    reach its greylisting database and neither its user nor its group lets it, or when the
    submission group exists and is not the queue's (``meta1-postdrop`` must reach the pickup
    directory)."""
    if owners.submission_gid is not None and owners.submission_gid != owners.shared_gid:
        return QUEUE_DIR_SEARCH_MODE
    grey = cfg.smar.greylisting
    smar = owners.roles.get("smar")
    if smar is None or not grey.enable or not Path(grey.database).is_relative_to(cfg.queue_directory):
        return QUEUE_DIR_MODE
    if smar.uid == owners.uid("qmgr") or smar.gid == owners.shared_gid:
        return QUEUE_DIR_MODE
    return QUEUE_DIR_SEARCH_MODE


def greylist_files(database: Path) -> tuple[Path, Path, Path]:
    """The greylisting database and the two files SQLite keeps beside it in WAL mode."""
    return database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")


def expected_layout(cfg: Config, owners: Owners) -> list[Expected]:
    """Every directory and file of the model for ``cfg``, parents before children."""
    shared = owners.shared_gid
    qmgr = owners.uid("qmgr")
    queue = Path(cfg.queue_directory)
    content = queue / "content"
    layout = [
        Expected(queue, "dir", qmgr, shared, queue_directory_mode(cfg, owners), True),
        Expected(content, "dir", qmgr, shared, CONTENT_DIR_MODE, True),
    ]
    layout += [
        Expected(content / name, "dir", qmgr, shared, CONTENT_SUBDIR_MODE, True, not is_seed_subdir(name))
        for name in content_subdirs()
    ]
    layout += [
        Expected(queue / name, "file", qmgr, shared, ENVELOPE_FILE_MODE, False) for name in ENVELOPE_FILES
    ]
    pickup_gid = owners.submission_gid if owners.submission_gid is not None else 0
    layout.append(Expected(queue / PICKUP_DIRNAME, "dir", qmgr, pickup_gid, PICKUP_DIR_MODE, True))
    layout.append(Expected(queue / CORRUPT_DIRNAME, "dir", qmgr, shared, CORRUPT_DIR_MODE, True))
    layout.append(Expected(public_directory(queue), "dir", qmgr, shared, PUBLIC_DIR_MODE, True))
    layout.append(Expected(Path(cfg.run_directory), "dir", owners.uid("root"), shared, RUN_DIR_MODE, True))
    layout.append(Expected(Path(cfg.mail_directory), "dir", owners.uid("smtpc"), shared, MAIL_DIR_MODE, True))
    if cfg.test_mode.enable:
        # Test mode (meta1py.testmode): qmgr writes the active scripts; smtpc writes captured
        # deliveries, which qmgr's control API reads and clears (setgid: files stay group meta1).
        test = test_directory(queue)
        layout.append(Expected(test, "dir", qmgr, shared, TEST_DIR_MODE, True))
        layout.append(Expected(test / "messages", "dir", owners.uid("smtpc"), shared, TEST_DIR_MODE, True))
    # smar's data directory, made whether or not greylisting is on: turning it on is then a reload.
    smar_uid, smar_gid = owners.uid("smar"), owners.roles["smar"].gid
    data = smar_data_directory(queue)
    layout.append(Expected(data, "dir", smar_uid, smar_gid, SMAR_DATA_DIR_MODE, True))
    database = Path(cfg.smar.greylisting.database)
    if database.parent == data:
        # Checked when they exist: a root-run sqlite3 or meta1 grey could leave them root's.
        layout += [
            Expected(path, "file", smar_uid, smar_gid, GREYLIST_FILE_MODE, False)
            for path in greylist_files(database)
        ]
    return layout


def _describe(st: os.stat_result) -> str:
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
    return f"{kind} {_user(st.st_uid)}:{_group(st.st_gid)} {stat.S_IMODE(st.st_mode):04o}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _want(item: Expected) -> str:
    kind = "directory" if item.kind == "dir" else "file"
    return f"{kind} {_user(item.uid)}:{_group(item.gid)} {item.mode:04o}"


def _compare(item: Expected, st: os.stat_result) -> Problem | None:
    if stat.S_ISLNK(st.st_mode):
        return Problem(item.path, "a symbolic link", _want(item) + " (links are never followed)", False)
    is_dir = stat.S_ISDIR(st.st_mode)
    if (item.kind == "dir") != is_dir or (item.kind == "file" and not stat.S_ISREG(st.st_mode)):
        return Problem(item.path, _describe(st), _want(item), False)
    if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (item.uid, item.gid, item.mode):
        return Problem(item.path, _describe(st), _want(item))
    return None


def inspect_layout(cfg: Config, owners: Owners) -> list[Problem]:
    """What differs from the model, without changing anything (``meta1 setup --check``)."""
    problems: list[Problem] = []
    for item in expected_layout(cfg, owners):
        try:
            st = os.lstat(item.path)
        except FileNotFoundError:
            if item.create:
                problems.append(Problem(item.path, "nothing", _want(item)))
            continue
        except OSError as exc:
            problems.append(Problem(item.path, f"an error ({exc.strerror})", _want(item), False))
            continue
        problem = _compare(item, st)
        if problem is not None:
            problems.append(problem)
    return problems


def _open_nofollow(path: Path, directory: bool) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if directory:
        flags |= os.O_DIRECTORY
    return os.open(path, flags)


def repair_layout(cfg: Config, owners: Owners, deferred: list[Expected] | None = None) -> list[str]:
    """Create what is missing and set owners and modes as the model says.

    Only the invoking user's own paths can be changed when mcp is not root; then owners are not
    touched. Symbolic links are never followed.

    Args:
        cfg: the configuration.
        owners: who owns what.
        deferred: when given, missing paths that may be made later (``Expected.later``) are
            appended to it instead of being made; pass them to :func:`create_deferred`.

    Returns:
        One line per change made (for the log).

    Raises:
        LayoutError: a path that cannot be made right: it is a link or of the wrong type, or a
            system call failed. The message says which path, what was found and what was expected.
    """
    root = os.geteuid() == 0
    changes: list[str] = []
    created_dirs: set[Path] = set()
    for item in expected_layout(cfg, owners):
        try:
            st = os.lstat(item.path)
        except FileNotFoundError:
            if not item.create:
                continue
            if item.later and deferred is not None:
                deferred.append(item)
                continue
            try:
                item.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LayoutError(f"{item.path}: cannot create the directory: {exc.strerror or exc}") from exc
            created_dirs.add(item.path.parent)
            st = os.lstat(item.path)
            changes.append(f"created {item.path}")
        except OSError as exc:
            raise LayoutError(f"{item.path}: cannot inspect: {exc.strerror or exc}") from exc
        problem = _compare(item, st)
        if problem is None:
            continue
        if not problem.fixable:
            raise LayoutError(f"{problem}; move it away, then start again")
        try:
            fd = _open_nofollow(item.path, item.kind == "dir")
        except OSError as exc:
            raise LayoutError(f"{problem}; cannot open it: {exc.strerror or exc}") from exc
        try:
            now = os.fstat(fd)
            if root and (now.st_uid, now.st_gid) != (item.uid, item.gid):
                os.fchown(fd, item.uid, item.gid)
            elif not root and now.st_uid != item.uid:
                raise LayoutError(f"{problem}; only root can change its owner")
            if stat.S_IMODE(now.st_mode) != item.mode:
                os.fchmod(fd, item.mode)
                # The kernel drops setgid silently for a process without CAP_FSETID (a systemd
                # unit that bounds it away): check rather than trust.
                got = stat.S_IMODE(os.fstat(fd).st_mode)
                if got != item.mode:
                    raise LayoutError(f"{problem}; chmod gave {got:04o} (is CAP_FSETID missing?)")
        except OSError as exc:
            raise LayoutError(f"{problem}; cannot change it: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        if not changes or changes[-1] != f"created {item.path}":
            changes.append(f"repaired {problem}")
    for parent in created_dirs:
        _fsync_dir(parent)
    return changes


def create_deferred(items: list[Expected], stop: threading.Event | None = None) -> int:
    """Make the directories :func:`repair_layout` deferred; returns how many were made.

    Each one appears complete or not at all: it is made under a temporary name, given its owner
    and mode through a descriptor, then renamed into place, so a worker never finds one that is
    still root's. One that appeared meanwhile is left alone. The parents are fsynced at the end.
    When ``stop`` is set, the rest are left for the next start.

    Raises:
        LayoutError: a system call failed (the rest stay missing; writers use the seed ones).
    """
    made = 0
    parents: set[Path] = set()
    for item in items:
        if stop is not None and stop.is_set():
            break  # mcp is stopping; the next start makes the rest
        temp = item.path.with_name(f".new-{item.path.name}-{os.getpid()}")
        try:
            os.mkdir(temp, 0o700)
            try:
                fd = _open_nofollow(temp, True)
                try:
                    os.fchown(fd, item.uid, item.gid)
                    os.fchmod(fd, item.mode)
                finally:
                    os.close(fd)
                os.rename(temp, item.path)  # replaces nothing but an empty directory
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rmdir(temp)
                raise
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise LayoutError(f"{item.path}: cannot create the directory: {exc.strerror or exc}") from exc
        made += 1
        parents.add(item.path.parent)
    for parent in parents:
        _fsync_dir(parent)
    return made


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- who can reach what -----------------------------------------------------------------------


def access_problem(path: Path, uid: int, gids: set[int], want: int = os.R_OK) -> str | None:
    """Why ``uid`` (with groups ``gids``) cannot reach and read ``path``; None when it can.

    Walks every directory from ``/`` down, as the kernel does (search permission on each), then
    checks ``want`` on the path itself, from the mode bits only (no ACLs, which meta1py never
    sets). Root can do anything.
    """
    if uid == 0:
        return None
    path = Path(os.path.abspath(path))
    parts = [*reversed(path.parents), path]
    for i, part in enumerate(parts):
        try:
            st = os.stat(part)
        except OSError as exc:
            return f"{part}: {exc.strerror}"
        last = i == len(parts) - 1
        need = want if last else os.X_OK
        if last and stat.S_ISDIR(st.st_mode) and want & os.R_OK:
            need |= os.X_OK
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid in gids:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        if bits & need != need:
            what = "enter" if not last else "write in" if want & os.W_OK else "read"
            return (
                f"{part} is {_user(st.st_uid)}:{_group(st.st_gid)} {stat.S_IMODE(st.st_mode):04o}: "
                f"{_user(uid)} cannot {what} it"
            )
    return None


def python_paths() -> list[tuple[str, Path]]:
    """The files a worker needs after it dropped privileges: the interpreter, the standard
    library (modules are imported lazily, e.g. codecs), the installed packages, and meta1py."""
    import importlib.util
    import sys

    import meta1py

    def found(module: str) -> Path:
        # Located, not imported: importing trio here would cost mcp a tenth of a second.
        spec = importlib.util.find_spec(module)
        return Path(spec.origin) if spec is not None and spec.origin else Path("/nonexistent")

    paths = [
        ("the Python interpreter", Path(sys.executable)),
        ("the Python standard library", Path(os.__file__).parent),
        ("Python's extension modules", found("_ssl").parent),
        ("the installed packages", found("trio").parent.parent),
        ("the meta1py package", Path(meta1py.__file__).parent),
    ]
    return [(what, p) for what, p in paths if p.exists()]


def python_problems(accounts: Mapping[str, Account]) -> list[str]:
    """For each worker account: what of the Python installation it cannot read, as one message
    per account with the fix."""
    problems: list[str] = []
    seen: set[int] = set()
    for worker, account in accounts.items():
        user, uid, gid = account.user, account.uid, account.gid
        if uid in seen:
            continue
        seen.add(uid)
        # Workers keep only their primary group (setgroups([gid])).
        gids = {gid}
        for what, path in python_paths():
            reason = access_problem(path, uid, gids)
            if reason is not None:
                problems.append(
                    f"{worker} runs as {user}, which cannot read {what} ({path}): {reason}; "
                    "workers import modules after they drop privileges. Install meta1py with a "
                    "Python every user can read (scripts/install.sh picks Debian's /usr/bin/python3.11 "
                    "when the default one is private), or let others enter the directory"
                )
                break
    return problems


def reach_problems(cfg: Config, accounts: Mapping[str, Account]) -> list[str]:
    """Directories a worker must be able to enter but cannot, because of a directory *above* the
    ones mcp manages (a queue under a 0700 home directory, say), one message per worker and path;
    and, with greylisting on, a ``database`` outside the queue whose directory smar cannot write.
    """
    needs = {
        "qmgr": [Path(cfg.queue_directory), Path(cfg.run_directory)],
        "smtps": [Path(cfg.queue_directory), Path(cfg.run_directory)],
        "smtpc": [Path(cfg.queue_directory), Path(cfg.run_directory), Path(cfg.mail_directory)],
    }
    problems: list[str] = []
    grey = cfg.smar.greylisting
    if grey.enable and "smar" in accounts:
        database = Path(grey.database)
        if database.is_relative_to(cfg.queue_directory):
            needs["smar"] = [Path(cfg.queue_directory)]
        if database.parent != smar_data_directory(cfg.queue_directory):
            # A database elsewhere: nobody creates its directory; smar must be able to write there.
            account = accounts["smar"]
            reason = access_problem(database.parent, account.uid, {account.gid}, want=os.W_OK | os.X_OK)
            if reason is not None:
                problems.append(
                    f"smar runs as {account.user}, which cannot create its greylisting database "
                    f"{database}: {reason}"
                )
    for worker, paths in needs.items():
        if worker not in accounts:
            continue
        account = accounts[worker]
        user, uid, gid = account.user, account.uid, account.gid
        for path in paths:
            # Only the part above the managed directory (mcp sets that one itself), as far as it
            # exists yet.
            above = path.parent
            while not above.exists() and above != above.parent:
                above = above.parent
            reason = access_problem(above, uid, {gid}, want=os.X_OK)
            if reason is not None:
                problems.append(f"{worker} runs as {user}, which cannot reach {path}: {reason}")
    return problems
