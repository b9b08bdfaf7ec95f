"""runas: smtpc's privileged helper for command, file and home Maildir deliveries.

NAME
    runas -- runs one command, appends to one file, or writes one message into a Maildir (a
    ``/path/`` target or a user's home Maildir), as a given unprivileged user.

DESCRIPTION
    aliases(5) ``"|command"`` and ``/file`` targets (and those of ``:include:`` and ``.forward``
    files) must run as the user Postfix would run them as: the owner of the file that named them,
    ``default_privs`` when root owns it, the user of a ``.forward``; with ``home_mailbox``, a local
    user's mail is written into the user's home as that user. smtpc runs as ``meta1c`` and cannot
    change its uid, so when ``allow_mail_to_commands``, ``allow_mail_to_files`` or
    ``home_mailbox`` is set, smtpc starts this helper in its ``prepare`` step, before it drops
    privileges: a fresh interpreter (``python -I -m meta1py.smtpc.runas``) that keeps root and
    imports nothing but this module and the standard library.

    smtpc sends one request per delivery over a ``SOCK_SEQPACKET`` socket: a JSON object (kind,
    target, uid, gid, home, source, environment, time limit; a Maildir file name) with two
    descriptors attached: the message, already formatted by smtpc (a memfd; mbox ``From`` line,
    ``Return-Path:``, ``Delivered-To:``), and a socket for the answer. The helper checks the
    request, forks a *runner* and goes back to its loop; it never waits for a delivery. The runner
    closes the helper's socket, drops to the user (setgroups, setresgid, setresuid, then proves
    that root cannot be regained) and only then touches the message: it runs ``/bin/sh -c
    command`` with the message on standard input (killing its process group after the time
    limit), or locks and appends to the file (``O_APPEND``, no symbolic links, one hard link,
    truncated back on error), or writes the message into a Maildir: ``home_mailbox`` below the
    user's home, or the directory a file target ending in ``/`` names (Postfix's Maildir form),
    below its parent as configured (``tmp/``, fsync, link into ``new/``, fsync of ``new/``; every
    directory below the home or the parent opened without following symbolic links and created
    mode 0700 when missing), and writes a JSON result (exit status, signal, output, errno) to the
    answer socket. smtpc turns that result into a delivery status.

SECURITY
    Root's code is this module's loop: read a small JSON request, check it, fork, change uid. It
    never reads the message and never runs as root anything the request names. It refuses uid or
    gid 0 and the worker accounts and groups (a command with group ``meta1`` could read the
    queue), requests for a kind or source the configuration does not allow, and, unless
    ``:include:`` or ``.forward`` targets are allowed, any uid other than ``default_privs`` and
    the owners of the aliases files; a file target ending in ``/`` (a Maildir) is checked as a
    file and must come with a Maildir file name. A home Maildir delivery must name
    ``home_mailbox`` itself, a uid of ``home_min_uid`` or more (not ``nobody``) and that
    account's own gid and home, as the password database has them now. What it trusts smtpc
    for: the uid, within those limits; a compromised smtpc could run a command as such a user,
    which Postfix's local(8), running as root throughout, would have allowed too. When mcp does
    not run as root, neither does the helper: every delivery runs as the invoking user.

PEERS
    smtpc only, over the socketpair made when smtpc started it; it exits at end of file (smtpc
    gone) and when its parent dies (``PR_SET_PDEATHSIG``).

DIAGNOSTICS
    Refusals and runner failures are answered to smtpc, which logs them with the queue id.
    Exit status 0 at end of file, 64 for a bad command line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ENV_NAMES",
    "HOME_MIN_UID",
    "MAX_OUTPUT_BYTES",
    "MAX_REQUEST_BYTES",
    "NOBODY_UID",
    "Policy",
    "main",
]

#: Largest request (JSON) smtpc sends.
MAX_REQUEST_BYTES = 64 * 1024
#: Command output kept for the delivery status (the rest is read and dropped).
MAX_OUTPUT_BYTES = 2048
#: The environment variables a command may get (Postfix local(8)'s).
ENV_NAMES = frozenset(
    {
        "HOME",
        "LOGNAME",
        "USER",
        "SHELL",
        "PATH",
        "SENDER",
        "RECIPIENT",
        "LOCAL",
        "DOMAIN",
        "EXTENSION",
        "ORIGINAL_RECIPIENT",
        "TZ",
        "LANG",
    }
)
#: The lowest uid whose mail goes to its home with ``home_mailbox`` when the policy does not say
#: (meta1py.conf.model.HOME_MAILBOX_MIN_UID; this module imports the standard library only).
HOME_MIN_UID = 1000
#: ``nobody`` (Debian's 65534) never gets mail in a home of its own.
NOBODY_UID = 65534
_PR_SET_PDEATHSIG = 1
_COPY_BYTES = 64 * 1024


class RequestError(Exception):
    """A request the helper refuses."""


class Policy:
    """What the helper allows, from the configuration smtpc read (JSON on the command line).

    Attributes:
        commands: sources whose commands may run (``alias``, ``include``, ``forward``).
        files: sources whose files may be written.
        forbidden_users: the worker accounts (and root): never run as them.
        forbidden_groups: the worker groups: never a primary or supplementary group.
        default_privs: the account for root's files.
        alias_files: the aliases files (their owners may run commands and files).
        time_limit_s: the longest command run (``command_time_limit``).
        home_mailbox: ``home_mailbox`` (``Maildir/``), or None when home deliveries are off.
        home_min_uid: the lowest uid whose mail goes to its home.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.commands = frozenset(str(s) for s in data.get("commands", ()))
        self.files = frozenset(str(s) for s in data.get("files", ()))
        self.forbidden_users = frozenset(str(u) for u in data.get("forbidden_users", ()))
        self.forbidden_groups = frozenset(str(g) for g in data.get("forbidden_groups", ()))
        self.default_privs = str(data.get("default_privs", "nobody"))
        self.alias_files = tuple(str(p) for p in data.get("alias_files", ()))
        self.time_limit_s = float(data.get("time_limit_s", 1000.0))
        home_mailbox = data.get("home_mailbox")
        self.home_mailbox = str(home_mailbox) if home_mailbox else None
        self.home_min_uid = int(data.get("home_min_uid", HOME_MIN_UID))

    def to_json(self) -> str:
        """The form :func:`main` reads back."""
        return json.dumps(
            {
                "commands": sorted(self.commands),
                "files": sorted(self.files),
                "forbidden_users": sorted(self.forbidden_users),
                "forbidden_groups": sorted(self.forbidden_groups),
                "default_privs": self.default_privs,
                "alias_files": list(self.alias_files),
                "time_limit_s": self.time_limit_s,
                "home_mailbox": self.home_mailbox,
                "home_min_uid": self.home_min_uid,
            }
        )

    def _ids(self) -> tuple[set[int], set[int]]:
        """The uids and gids of the forbidden accounts and groups (looked up now: accounts may
        be created after the helper started)."""
        import grp

        uids, gids = {0}, {0}
        for name in self.forbidden_users:
            try:
                uids.add(pwd.getpwnam(name).pw_uid)
            except KeyError:
                pass
        for name in self.forbidden_groups:
            try:
                gids.add(grp.getgrnam(name).gr_gid)
            except KeyError:
                pass
        return uids, gids

    def check(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The request, checked and normalised.

        Raises:
            RequestError: why it is refused.
        """
        kind, source, target = request.get("kind"), request.get("source"), request.get("target")
        if kind == "maildir":
            return self._check_maildir(request)
        if kind not in ("command", "file"):
            raise RequestError(f"unknown kind {kind!r}")
        allowed = self.commands if kind == "command" else self.files
        if source not in allowed:
            raise RequestError(f"mail to {kind} from {source!r} is not allowed here")
        if not isinstance(target, str) or not target or "\0" in target:
            raise RequestError("bad target")
        if kind == "file" and not target.startswith("/"):
            raise RequestError("a file target must be an absolute path")
        name = None
        if kind == "file" and target.endswith("/"):
            # Postfix's Maildir form of a file target: smtpc names the file, as for a home Maildir.
            if _split_maildir(target)[1] in ("", ".", ".."):
                raise RequestError("a Maildir target must name its directory")
            name = _maildir_name(request.get("name"))
        uid, gid = request.get("uid"), request.get("gid")
        if not isinstance(uid, int) or not isinstance(gid, int) or uid < 0 or gid < 0:
            raise RequestError("bad uid or gid")
        forbidden_uids, forbidden_gids = self._ids()
        if os.geteuid() == 0:
            if uid in forbidden_uids or gid in forbidden_gids:
                raise RequestError(f"refusing to run as uid {uid} gid {gid} (root or a meta1py account)")
            if "include" not in allowed and "forward" not in allowed and uid not in self._alias_uids():
                raise RequestError(f"uid {uid} is neither default_privs nor an aliases file's owner")
        home = request.get("home")
        env = request.get("env")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and k in ENV_NAMES and isinstance(v, str) and "\0" not in v
            for k, v in env.items()
        ):
            raise RequestError("bad environment")
        limit = request.get("time_limit_s", self.time_limit_s)
        if not isinstance(limit, int | float) or limit <= 0:
            raise RequestError("bad time limit")
        checked: dict[str, Any] = {
            "kind": kind,
            "target": target,
            "uid": uid,
            "gid": gid,
            "home": home if isinstance(home, str) and home.startswith("/") else "/",
            "env": dict(env),
            "time_limit_s": min(float(limit), self.time_limit_s),
            "forbidden_gids": sorted(forbidden_gids),
        }
        if name is not None:
            checked["name"] = name
        return checked

    def _check_maildir(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """A home Maildir delivery: ``home_mailbox`` below the home of the account with that uid,
        as the password database says now (smtpc names the uid; the rest must agree with it)."""
        if self.home_mailbox is None:
            raise RequestError("home_mailbox is not set here")
        if request.get("source") != "home_mailbox" or request.get("target") != self.home_mailbox:
            raise RequestError(f"a home Maildir delivery must be to home_mailbox ({self.home_mailbox})")
        name = _maildir_name(request.get("name"))
        uid, gid, home = request.get("uid"), request.get("gid"), request.get("home")
        if not isinstance(uid, int) or not isinstance(gid, int) or not isinstance(home, str):
            raise RequestError("bad uid, gid or home")
        try:
            account = pwd.getpwuid(uid)
        except KeyError:
            raise RequestError(f"uid {uid} has no account") from None
        if (account.pw_gid, account.pw_dir) != (gid, home) or not home.startswith("/"):
            raise RequestError(f"gid {gid} or home {home!r} is not uid {uid}'s")
        forbidden_uids, forbidden_gids = self._ids()
        if os.geteuid() == 0 and (
            uid in forbidden_uids or gid in forbidden_gids or uid < self.home_min_uid or uid == NOBODY_UID
        ):
            raise RequestError(f"no home Maildir delivery as uid {uid} gid {gid}")
        return {
            "kind": "maildir",
            "target": self.home_mailbox,
            "name": name,
            "uid": uid,
            "gid": gid,
            "home": home,
            "forbidden_gids": sorted(forbidden_gids),
        }

    def _alias_uids(self) -> set[int]:
        uids = set()
        try:
            uids.add(pwd.getpwnam(self.default_privs).pw_uid)
        except KeyError:
            pass
        for path in self.alias_files:
            try:
                owner = os.stat(path).st_uid
            except OSError:
                continue
            if owner != 0:
                uids.add(owner)
        return uids


def _maildir_name(name: object) -> str:
    """A Maildir file name smtpc chose: one component that is not hidden (``tmp/NAME``).

    Raises:
        RequestError: anything else.
    """
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 255
        or name.startswith(".")
        or any(c in name for c in "/\0")
    ):
        raise RequestError("bad Maildir file name")
    return name


def _split_maildir(target: str) -> tuple[str, str]:
    """``(parent, directory)`` of a Maildir file target: ``/var/mail/archive/`` ->
    ``("/var/mail", "archive")``."""
    parent, _, last = target.rstrip("/").rpartition("/")
    return parent or "/", last


# -- the runner (after the fork) -------------------------------------------------------------------


def _become(uid: int, gid: int, forbidden_gids: set[int]) -> None:
    """Drop to ``uid``:``gid`` for good (root only; otherwise the runner stays who it is)."""
    if os.geteuid() != 0:
        return
    try:
        name = pwd.getpwuid(uid).pw_name
        groups = os.getgrouplist(name, gid)
    except KeyError:
        groups = [gid]
    os.setgroups([g for g in groups if g not in forbidden_gids] or [gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    for regain in (os.setuid, os.seteuid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise RuntimeError(f"{regain.__name__}(0) succeeded after dropping privileges")
    if 0 in os.getresuid() or 0 in os.getresgid():
        raise RuntimeError("an id is still 0 after dropping privileges")


def _run_command(command: str, message: int, env: dict[str, str], time_limit_s: float) -> dict[str, Any]:
    """``/bin/sh -c command`` with the message on stdin, killed (with its process group) after
    ``time_limit_s``."""
    os.lseek(message, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    deadline = time.monotonic() + time_limit_s
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=message,
            stdout=out_w,
            stderr=out_w,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        os.close(out_r)
        os.close(out_w)
        return {"error": f"cannot start /bin/sh: {exc.strerror or exc}"}
    os.close(out_w)
    output = bytearray()
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([out_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(out_r, _COPY_BYTES)
            if not chunk:
                break
            output += chunk[: max(0, MAX_OUTPUT_BYTES - len(output))]
        if not timed_out:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        os.close(out_r)
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait()
    status = proc.returncode
    return {
        "exit": status if status >= 0 else None,
        "signal": -status if status < 0 and not timed_out else None,
        "timeout": timed_out,
        "output": output.decode("utf-8", "replace"),
    }


class _LockTimeout(Exception):
    pass


def _alarm(_signum: int, _frame: object) -> None:
    raise _LockTimeout


def _append_file(path: str, message: int, time_limit_s: float) -> dict[str, Any]:
    """Append the message to ``path`` under exclusive ``fcntl`` and ``flock`` locks; on error the
    file is cut back to its old size, so a reader never sees half a message."""
    if path == "/dev/null":  # Postfix's special case: a successful delivery to nowhere
        return {"ok": True}
    stage = "open"
    try:
        fd = os.open(
            path,
            os.O_WRONLY
            | os.O_APPEND
            | os.O_CREAT
            | os.O_NOFOLLOW
            | os.O_NOCTTY
            | os.O_NONBLOCK
            | os.O_CLOEXEC,
            0o600,
        )
    except OSError as exc:
        return {"errno": exc.errno, "error": exc.strerror or str(exc), "stage": stage}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {"errno": errno.EINVAL, "error": "not a regular file", "stage": stage}
        if st.st_nlink > 1:
            return {"errno": errno.EPERM, "error": f"the file has {st.st_nlink} hard links", "stage": stage}
        stage = "lock"
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(max(1, int(time_limit_s)))
        try:
            # Both kinds, as Debian's Postfix (mailbox_delivery_lock = fcntl, dotlock) and
            # mail readers use them: a POSIX record lock (mutt, procmail, Dovecot's mbox) and a
            # BSD lock (flock(1), Python's mailbox). On Linux they do not see each other.
            fcntl.lockf(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except _LockTimeout:
            return {"errno": errno.EAGAIN, "error": "timed out waiting for the file's lock", "stage": stage}
        finally:
            signal.alarm(0)
        stage = "write"
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            os.lseek(message, 0, os.SEEK_SET)
            while chunk := os.read(message, _COPY_BYTES):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            return {"errno": exc.errno, "error": exc.strerror or str(exc), "stage": stage}
        return {"ok": True}
    except OSError as exc:
        return {"errno": exc.errno, "error": exc.strerror or str(exc), "stage": stage}
    finally:
        os.close(fd)


def _open_below(parent: int, name: str, created: list[int]) -> int:
    """The directory ``name`` in ``parent`` (made mode 0700 when missing), opened without following
    a symbolic link; the descriptor of a directory that got a new entry goes into ``created``.

    Raises:
        OSError: ELOOP for a symbolic link (Linux says ENOTDIR when ``O_DIRECTORY`` meets one).
    """
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
        created.append(parent)
    except FileExistsError:
        pass
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except NotADirectoryError:
        if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
        raise


def _deliver_maildir(base: str, mailbox: str, name: str, message: int, *, home: bool) -> dict[str, Any]:
    """Write the message as ``base/mailbox/new/name`` (through ``tmp/``), as the user the runner
    has become.

    ``base`` is taken as configured (a symbolic link there is the administrator's): for a home
    Maildir (``home``) the home as the password database names it, which must belong to the user;
    for a Maildir file target (``/path/``) the target's parent directory, whoever owns it. Below
    it nothing is followed: every component of ``mailbox`` and ``tmp``/``new``/``cur`` is opened
    with ``O_NOFOLLOW`` relative to its parent (and made mode 0700 when missing), so a link planted
    as ``Maildir`` or ``Maildir/new`` fails (ELOOP) instead of leading elsewhere.
    """
    stage = "home" if home else "parent"
    fds: list[int] = []
    created: list[int] = []
    try:
        fds.append(os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        if home and os.fstat(fds[0]).st_uid != os.getuid():
            return {"errno": errno.EPERM, "error": f"home directory {base} is not the user's", "stage": stage}
        stage = "mkdir"
        for part in mailbox.strip("/").split("/"):
            fds.append(_open_below(fds[-1], part, created))
        maildir = fds[-1]
        tmp = _open_below(maildir, "tmp", created)
        fds.append(tmp)
        new = _open_below(maildir, "new", created)
        fds.append(new)
        fds.append(_open_below(maildir, "cur", created))
        for fd in dict.fromkeys(created):
            os.fsync(fd)  # a new directory entry is durable once its parent is synced
        stage = "create"
        out = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tmp
        )
        stage = "write"
        linked = False
        try:
            try:
                os.lseek(message, 0, os.SEEK_SET)
                while chunk := os.read(message, _COPY_BYTES):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
                os.fsync(out)
            finally:
                os.close(out)
            try:
                os.link(name, name, src_dir_fd=tmp, dst_dir_fd=new, follow_symlinks=False)
                linked = True
                os.unlink(name, dir_fd=tmp)
            except OSError as exc:
                if linked or exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                    raise
                os.rename(name, name, src_dir_fd=tmp, dst_dir_fd=new)
                linked = True
            os.fsync(new)
        except OSError:
            # Never a partial file in new/, nor one a crash could lose after a 250.
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=tmp)
            if linked:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=new)
            raise
        return {"ok": True, "name": name}
    except OSError as exc:
        return {"errno": exc.errno, "error": exc.strerror or str(exc), "stage": stage}
    finally:
        for fd in fds:
            os.close(fd)


def _runner(sock: socket.socket, message: int, answer: int, request: dict[str, Any]) -> None:
    """In the forked runner: become the user, deliver, answer, exit."""
    result: dict[str, Any]
    try:
        sock.close()  # the user's command must never reach the root helper
        # The helper's own dispositions are not the command's (an ignored SIGINT would be kept
        # across exec).
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _become(request["uid"], request["gid"], set(request["forbidden_gids"]))
        os.umask(0o077)
        try:
            os.chdir(request["home"])
        except OSError:
            os.chdir("/")
        if request["kind"] == "command":
            result = _run_command(request["target"], message, request["env"], request["time_limit_s"])
        elif request["kind"] == "maildir":
            result = _deliver_maildir(request["home"], request["target"], request["name"], message, home=True)
        elif request["target"].endswith("/"):  # a Maildir file target (check() saw its name)
            parent, directory = _split_maildir(request["target"])
            result = _deliver_maildir(parent, directory, request["name"], message, home=False)
        else:
            result = _append_file(request["target"], message, request["time_limit_s"])
        result["uid"] = os.getuid()
    except BaseException as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        os.write(answer, json.dumps(result).encode()[:MAX_REQUEST_BYTES])
    finally:
        os._exit(0)


# -- the helper's loop -----------------------------------------------------------------------------


def _answer(fd: int, result: Mapping[str, Any]) -> None:
    try:
        os.write(fd, json.dumps(result).encode())
    except OSError:
        pass


def serve(sock: socket.socket, policy: Policy) -> int:
    """Answer requests until end of file (smtpc gone)."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST_BYTES, 2)
        except InterruptedError:
            continue
        except ConnectionResetError:
            return 0
        if not data:
            for fd in fds:
                os.close(fd)
            return 0
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        message, answer = fds
        try:
            try:
                request = policy.check(json.loads(data))
            except (RequestError, ValueError) as exc:
                _answer(answer, {"refused": str(exc)})
                continue
            pid = os.fork()
            if pid == 0:
                _runner(sock, message, answer, request)
        finally:
            os.close(message)
            os.close(answer)


def main(argv: list[str] | None = None) -> int:
    """``python -I -m meta1py.smtpc.runas FD POLICY_JSON``: serve the socket ``FD``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit():
        print("usage: python -m meta1py.smtpc.runas FD POLICY_JSON", file=sys.stderr)
        return 64
    try:
        policy = Policy(json.loads(args[1]))
    except (ValueError, TypeError, AttributeError) as exc:
        print(f"runas: bad policy: {exc}", file=sys.stderr)
        return 64
    sock = socket.socket(fileno=int(args[0]))
    _set_parent_death_signal()
    # Runners are reaped by the kernel; a Ctrl-C on the terminal is for mcp.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.chdir("/")
    return serve(sock, policy)


def _set_parent_death_signal() -> None:
    """SIGKILL when smtpc dies (end of file on the socket also ends the loop)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
