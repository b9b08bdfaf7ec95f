"""The files smar reads for local recipients besides the maps: ``:include:`` lists, ``.forward``
files, and the accounts that commands and file deliveries run as.

smar runs as ``meta1r``: it reads these files with that user's rights. An include file must be
readable by it (else the mail that needs it is deferred, 451 4.3.0, and the log says why). A
``.forward`` file is looked for in the user's home directory through ``forward_path``; a home
directory smar cannot enter (mode 0700, Debian's default since bookworm) is a home without a
``.forward`` as far as smar can tell, but a ``.forward`` that exists and cannot be read defers the
user's mail rather than delivering it to the mailbox the user wanted to forward away from.

Who runs a command or a file delivery is Postfix's local(8) rule (docs/smar.md, "Commands and
files"): the owner of the aliases file or include file that named it, or ``default_privs``
(``nobody``) when that owner is root; the user of the ``.forward`` file. Never root.

With ``home_mailbox``, :func:`home_account` says which local parts are users with a home Maildir
(docs/smar.md, "Home mailboxes").
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from meta1py.conf.model import HOME_MAILBOX_MIN_UID, NOBODY_UID
from meta1py.maps.aliases import MAX_LIST_FILE_BYTES, ForwardFile, LocalTarget, parse_target_list
from meta1py.maps.errors import MapTempError

__all__ = ["Account", "AccountError", "ForwardFiles", "IncludeFiles", "account_for", "home_account"]

log = logging.getLogger(__name__)

_Version = tuple[int, int, int, int]


def _version(st: os.stat_result) -> _Version:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_list(path: str, fd: int, st: os.stat_result) -> tuple[str, ...]:
    """The targets of the open list file ``fd`` (closed here).

    Raises:
        MapTempError: not a regular file, too big, or a read error.
        MapErrors: a bad line.
    """
    try:
        if not stat.S_ISREG(st.st_mode):
            raise MapTempError(f"{path}: not a regular file")
        if st.st_size > MAX_LIST_FILE_BYTES:
            raise MapTempError(f"{path}: larger than {MAX_LIST_FILE_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_LIST_FILE_BYTES + 1)
    except OSError as exc:
        raise MapTempError(f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MapTempError(f"{path}: not UTF-8 ({exc.reason})") from None
    return parse_target_list(text, path)


class IncludeFiles:
    """``:include:`` files, read when an expansion reaches them (a changed file is read again).

    Call it with an absolute path: the targets as written (:data:`meta1py.maps.aliases.IncludeReader`).
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[_Version, tuple[str, ...]]] = {}

    def __call__(self, path: str) -> tuple[str, ...]:
        """The targets of the include file ``path``.

        Raises:
            MapTempError: the file is missing, unreadable for smar's user, not a regular file or
                too big (the mail that needs it waits; the operator fixes the file).
            MapErrors: a bad line.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            if isinstance(exc, PermissionError):
                user = pwd.getpwuid(os.geteuid()).pw_name
                raise MapTempError(f"{path}: smar (user {user}) cannot read it: {exc.strerror}") from None
            raise MapTempError(f"{path}: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == _version(st):
            os.close(fd)
            return cached[1]
        targets = _read_list(path, fd, st)
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[path] = (_version(st), targets)
        return targets


class ForwardFiles:
    """Local users' ``.forward`` files (:data:`meta1py.maps.aliases.ForwardReader`).

    Args:
        templates: ``forward_path``: paths with ``$home`` and ``$user``, tried in order.
    """

    def __init__(self, templates: Sequence[str]) -> None:
        self.templates = tuple(templates)
        self._warned: set[tuple[str, _Version]] = set()

    def paths(self, account: pwd.struct_passwd) -> list[str]:
        """The candidate files of ``account``, in order."""
        out = []
        for template in self.templates:
            path = template
            for name, value in (("home", account.pw_dir), ("user", account.pw_name)):
                path = path.replace("${" + name + "}", value).replace("$" + name, value)
            out.append(path)
        return out

    def __call__(self, name: str) -> ForwardFile | None:
        """The ``.forward`` of the local user ``name``, or None (no such user, no file).

        Root's ``.forward`` is never read (alias root instead): its commands would have to run
        as someone else anyway.

        Raises:
            MapTempError: the file exists but smar cannot read it, or it is too big.
            MapErrors: a bad line.
        """
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            return None
        if account.pw_uid == 0 or not account.pw_dir.startswith("/"):
            return None
        for path in self.paths(account):
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError:
                # The home directory is closed to smar: no .forward it could honour.
                log.debug("%s: not reachable for smar: no .forward for %s", path, name)
                continue
            unsafe = self._unsafe(st, account)
            if unsafe is not None:
                if (path, _version(st)) not in self._warned:
                    self._warned.add((path, _version(st)))
                    log.warning("%s: ignored: %s", path, unsafe)
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as exc:
                raise MapTempError(f"{path}: smar cannot read it: {exc.strerror or exc}") from None
            return ForwardFile(name, path, _read_list(path, fd, os.fstat(fd)))
        return None

    @staticmethod
    def _unsafe(st: os.stat_result, account: pwd.struct_passwd) -> str | None:
        """Why a ``.forward`` must not be trusted (sendmail's and Postfix's rules), or None."""
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_uid not in (account.pw_uid, 0):
            return f"owned by uid {st.st_uid}, not by {account.pw_name} or root"
        if st.st_mode & 0o022:
            return "writable by group or others"
        return None


@dataclass(frozen=True, slots=True)
class Account:
    """The account a command or file delivery runs as."""

    user: str
    uid: int
    gid: int
    home: str
    shell: str


class AccountError(Exception):
    """No account can run this target now (a missing ``default_privs`` user, an unreadable
    source file): the delivery is deferred."""


def account_for(target: LocalTarget, default_privs: str) -> Account:
    """Who runs ``target``: Postfix's local(8) rule (see the module docstring).

    Raises:
        AccountError: the account cannot be found, or it would be root.
    """
    if target.source == "forward":
        assert target.user is not None
        try:
            found = pwd.getpwnam(target.user)
        except KeyError:
            raise AccountError(f"user {target.user!r} no longer exists") from None
    else:
        try:
            owner = os.stat(target.source_path)
        except OSError as exc:
            raise AccountError(f"{target.source_path}: {exc.strerror or exc}") from None
        if owner.st_uid == 0:
            try:
                found = pwd.getpwnam(default_privs)
            except KeyError:
                raise AccountError(f"default_privs user {default_privs!r} does not exist") from None
        else:
            try:
                found = pwd.getpwuid(owner.st_uid)
            except KeyError:
                # An owner without a passwd entry: run as the file's uid and gid.
                return Account(str(owner.st_uid), owner.st_uid, owner.st_gid, "/", "/bin/sh")
    if found.pw_uid == 0 or found.pw_gid == 0:
        raise AccountError(f"refusing to deliver as {found.pw_name} (uid or gid 0); check default_privs")
    return Account(found.pw_name, found.pw_uid, found.pw_gid, found.pw_dir, found.pw_shell)


def home_account(name: str) -> Account | None:
    """The user whose home Maildir gets the mail of local part ``name`` (``home_mailbox``), or
    None: no such account, root (Postfix never delivers as root), ``nobody``, a system account
    (uid below :data:`~meta1py.conf.model.HOME_MAILBOX_MIN_UID`), gid 0, or a home that is not an
    absolute path. Those keep their Maildir in ``mail_directory``.

    Args:
        name: the local part, already lower-cased and without its ``+extension``.
    """
    if not name or "\0" in name:
        return None
    try:
        found = pwd.getpwnam(name)
    except KeyError:
        return None
    if (
        found.pw_uid < HOME_MAILBOX_MIN_UID
        or found.pw_uid == NOBODY_UID
        or found.pw_gid == 0
        or not found.pw_dir.startswith("/")
    ):
        return None
    return Account(found.pw_name, found.pw_uid, found.pw_gid, found.pw_dir, found.pw_shell)
