"""Run the real ``meta1 run`` as a child process for end-to-end tests.

``Meta1Daemon`` writes a temporary config (loopback, a free high port, queue and mail directories
under a fresh temporary directory), starts ``python -m meta1py run -f <conf>`` with
``NOTIFY_SOCKET`` pointing at a datagram socket it owns, and waits for ``READY=1``. It exposes the
pids of mcp and its workers (from /proc), the port, the captured stderr, and stops everything it
started by pid::

    with Meta1Daemon() as daemon:
        with daemon.connect() as sock:
            assert daemon.read_line(sock).startswith(b"220 ")

No sleeps: every wait polls a condition until a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from meta1py.contract import WORKER_NAMES

_T = TypeVar("_T")

_POLL_S = 0.02


@contextlib.contextmanager
def temporary_worker_account(prefix: str = "m1t") -> Iterator[str | None]:
    """As root: a throw-away system user and group for the workers, removed afterwards.

    Yields its name, or None when not root (the workers then run as the invoking user).
    """
    if os.geteuid() != 0:
        yield None
        return
    name = f"{prefix}{secrets.token_hex(4)}"
    subprocess.run(["groupadd", "--system", name], check=True)
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--gid", name, name],
            check=True,
        )
        try:
            yield name
        finally:
            subprocess.run(["userdel", name], check=False)
    finally:
        subprocess.run(["groupdel", name], check=False, stderr=subprocess.DEVNULL)


#: The worker accounts of etc/meta1.conf, ``{worker: (user, group)}``: what ``meta1 setup`` creates.
PRODUCTION_ACCOUNTS = {
    "qmgr": ("meta1q", "meta1"),
    "smar": ("meta1r", "meta1r"),
    "smtpc": ("meta1c", "meta1"),
    "smtps": ("meta1s", "meta1"),
}


@contextlib.contextmanager
def production_accounts() -> Iterator[dict[str, tuple[str, str]] | None]:
    """As root: make sure the worker users and groups of :data:`PRODUCTION_ACCOUNTS` exist, made
    by the same code as ``meta1 setup``. They stay, as ``meta1 setup`` leaves them: removing them
    would pull them from under another test run on the same machine.

    Yields the accounts, or None when not root.
    """
    if os.geteuid() != 0:
        yield None
        return
    from meta1py.cli.setup import Report, ensure_accounts
    from meta1py.conf import parse_config

    text = "\n".join(
        f"{name} {{ user = {user}; group = {group}; }}" for name, (user, group) in PRODUCTION_ACCOUNTS.items()
    )
    ensure_accounts(parse_config(text), Report(), check=False)
    yield dict(PRODUCTION_ACCOUNTS)


class DaemonError(AssertionError):
    """The daemon did not do what the test waited for (subclass of AssertionError for pytest)."""


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``address``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def poll(condition: Callable[[], _T | None], timeout: float, what: str) -> _T:
    """Call ``condition`` until it returns something other than None/False, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise DaemonError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(_POLL_S)


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def worker_name(pid: int) -> str | None:
    """``smtps`` for a worker process: forked (``meta1py: smtps``) or exec'd (``-m meta1py.smtps``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if argv and argv[0].startswith(b"meta1py: "):
        name = argv[0][len(b"meta1py: ") :].decode(errors="replace")
        return name if name in WORKER_NAMES else None
    for i, arg in enumerate(argv[:-1]):
        if arg == b"-m" and argv[i + 1].startswith(b"meta1py."):
            return argv[i + 1][len(b"meta1py.") :].decode()
    return None


def _is_meta1(pid: int) -> bool:
    """A worker or a fork server (so that a recycled pid is never killed by mistake)."""
    try:
        return worker_name(pid) is not None or Path(f"/proc/{pid}/cmdline").read_bytes().startswith(
            b"meta1py: forkserver"
        )
    except OSError:
        return False


def forkserver_pid(mcp_pid: int) -> int | None:
    """The pid of mcp's fork server (``meta1py: forkserver``), None when there is none."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ppid(int(entry)) == mcp_pid:
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(b"meta1py: forkserver"):
                    return int(entry)
            except OSError:
                continue
    return None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def proc_ids(pid: int) -> dict[str, tuple[int, ...]]:
    """The ``Uid``/``Gid``/``Groups`` lines of /proc/<pid>/status as integer tuples."""
    result: dict[str, tuple[int, ...]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            result[key] = tuple(int(v) for v in value.split())
    return result


class Meta1Daemon:
    """A running mcp with its workers, for tests.

    Args:
        extra_config: top-level config text appended to the generated file.
        sections: text to put inside the generated ``qmgr``/``smar``/``smtpc``/``smtps`` sections.
        user: when mcp runs as root, the account every worker uses (``group`` likewise).
        users: when mcp runs as root, each worker's own account as ``{worker: (user, group)}`` (see
            :data:`PRODUCTION_ACCOUNTS`); overrides ``user`` and ``group``.
        port: SMTP port on 127.0.0.1 (default: a free high port).
        config_text: use this whole config instead of generating one (``{dir}`` and ``{port}``
            are substituted).
        env: extra environment variables for mcp (and so its workers).
        ready_timeout: seconds to wait for ``READY=1``.
        keep_dir: do not remove the temporary directory (for debugging).
    """

    def __init__(
        self,
        extra_config: str = "",
        *,
        sections: Mapping[str, str] | None = None,
        user: str | None = None,
        group: str | None = None,
        users: Mapping[str, tuple[str, str]] | None = None,
        port: int | None = None,
        config_text: str | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
        keep_dir: bool = False,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="meta1-e2e-"))
        # Workers that dropped privileges must be able to reach their directories.
        self.dir.chmod(0o755)
        self.port = port or free_port()
        self.conf_path = self.dir / "meta1.conf"
        self.log_path = self.dir / "mcp.log"
        self.queue_directory = self.dir / "queue"
        self.run_directory = self.queue_directory / "run"
        self.mail_directory = self.dir / "mail"
        self.ready_timeout = ready_timeout
        self.keep_dir = keep_dir
        self.notifications: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._env = dict(env or {})
        self._seen_workers: set[int] = set()
        self._notify_name = f"@meta1-test-{os.getpid()}-{secrets.token_hex(6)}"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(b"\0" + self._notify_name[1:].encode())
        if config_text is None:
            config_text = self._generate(extra_config, dict(sections or {}), user, group, users)
        else:
            config_text = config_text.replace("{dir}", str(self.dir)).replace("{port}", str(self.port))
        self.write_config(config_text)

    def _generate(
        self,
        extra: str,
        sections: dict[str, str],
        user: str | None,
        group: str | None,
        users: Mapping[str, tuple[str, str]] | None,
    ) -> str:
        lines = [
            "hostname = localhost;",
            f"queue_directory = {self.queue_directory};",
            f"mail_directory = {self.mail_directory};",
        ]
        for name in WORKER_NAMES:
            body = []
            worker_user, worker_group = users[name] if users else (user, group or user)
            if worker_user:
                body.append(f"user = {worker_user};")
            if worker_group:
                body.append(f"group = {worker_group};")
            if name == "smtps":
                body.append(f"listen_socket {{ address = 127.0.0.1; port = {self.port}; }}")
            body.append(sections.get(name, ""))
            lines.append(f"{name} {{ {' '.join(b for b in body if b)} }}")
        lines.append(extra)
        return "\n".join(lines) + "\n"

    # -- life cycle ----------------------------------------------------------------------------

    def write_config(self, text: str) -> None:
        """Replace the config file (send SIGHUP afterwards to apply it)."""
        self.conf_path.write_text(text)
        self.conf_path.chmod(0o644)

    def __enter__(self) -> Meta1Daemon:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, wait_ready: bool = True) -> None:
        """Start mcp; with ``wait_ready``, return once it sent ``READY=1``.

        May be called again after :meth:`stop` (or after mcp was killed) to run a new mcp on the
        same directories and config; only notifications sent by the new mcp count.
        """
        if self.running():
            raise DaemonError("mcp is already running")
        first_notification = len(self.notifications)
        env = {k: v for k, v in os.environ.items() if not k.startswith("META1_")}
        env.update(self._env)
        env["NOTIFY_SOCKET"] = self._notify_name
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "meta1py", "run", "-f", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                cwd=self.dir,
                env=env,
            )
        if wait_ready:
            self.wait_notify("READY=1", self.ready_timeout, start=first_notification)

    @property
    def pid(self) -> int:
        """mcp's pid."""
        if self.process is None:
            raise DaemonError("the daemon was not started")
        return self.process.pid

    def running(self) -> bool:
        """True while mcp has not exited."""
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for mcp to exit on its own; return its exit status."""
        if self.process is None:
            raise DaemonError("the daemon was not started")
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"mcp did not exit within {timeout:g}s\n{self.log_text()}") from None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to mcp (by pid)."""
        if self.running():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM mcp, wait up to ``timeout``, then SIGKILL; return its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._remember_workers()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._kill_leftover_workers()
        return self.process.returncode

    def close(self) -> None:
        """Stop everything and remove the temporary directory."""
        try:
            self.stop()
        finally:
            self._notify.close()
            if not self.keep_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _remember_workers(self) -> None:
        if self.running():
            self._seen_workers.update(self.workers().values())
            forkserver = forkserver_pid(self.pid)
            if forkserver is not None:
                self._seen_workers.add(forkserver)

    def _kill_leftover_workers(self, timeout: float = 15.0) -> None:
        # Workers exit by themselves when mcp goes (lifeline); give them the chance, then make
        # sure nothing a test started outlives it.
        deadline = time.monotonic() + timeout
        for pid in sorted(self._seen_workers):
            while pid_alive(pid) and _is_meta1(pid) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            if pid_alive(pid) and _is_meta1(pid):
                os.kill(pid, signal.SIGKILL)

    # -- observation ---------------------------------------------------------------------------

    def workers(self) -> dict[str, int]:
        """Current worker pids by name (children of mcp, forked or ``-m meta1py.<name>``)."""
        found: dict[str, int] = {}
        if not self.running():
            return found
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _ppid(int(entry)) == self.pid:
                name = worker_name(int(entry))
                if name:
                    found[name] = int(entry)
        self._seen_workers.update(found.values())
        return found

    def worker_pid(self, name: str, timeout: float = 30.0) -> int:
        """The pid of worker ``name``, waiting until it exists."""
        return poll(lambda: self.workers().get(name), timeout, f"worker {name}")

    def restarted_worker_pid(self, name: str, old_pid: int, timeout: float = 30.0) -> int:
        """Wait until worker ``name`` runs with a pid other than ``old_pid``; return it."""

        def new_pid() -> int | None:
            pid = self.workers().get(name)
            return pid if pid is not None and pid != old_pid else None

        return poll(new_pid, timeout, f"{name} to come back after pid {old_pid}")

    def log_text(self) -> str:
        """Everything mcp and its workers wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0, start: int = 0) -> re.Match[str]:
        """Wait until the log (from character ``start``) matches ``pattern``; return the match."""
        regex = re.compile(pattern, re.MULTILINE)

        def search() -> re.Match[str] | None:
            return regex.search(self.log_text(), start)

        try:
            return poll(search, timeout, f"log line /{pattern}/")
        except DaemonError as exc:
            raise DaemonError(f"{exc}\n--- log ---\n{self.log_text()}") from None

    def log_size(self) -> int:
        """The log's current length, to pass as ``start`` to ``wait_for_log``."""
        return len(self.log_text())

    def wait_notify(self, line: str, timeout: float = 30.0, start: int = 0) -> str:
        """Wait for a notification datagram containing ``line`` (e.g. ``READY=1``); return it.

        Datagrams already received (``self.notifications[start:]``) count too.
        """
        deadline = time.monotonic() + timeout
        index = start
        while True:
            while index < len(self.notifications):
                message = self.notifications[index]
                index += 1
                if line in message.splitlines():
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonError(f"no {line} within {timeout:g}s\n--- log ---\n{self.log_text()}")
            # Check for exit before reading, so that datagrams sent just before exiting are
            # still read (the socket keeps them) before giving up.
            exited = self.process is not None and self.process.poll() is not None
            self._notify.settimeout(0 if exited else min(remaining, 0.2))
            try:
                data = self._notify.recv(65536)
            except (TimeoutError, BlockingIOError):
                if exited:
                    raise DaemonError(
                        f"mcp exited with status {self.process.returncode} before {line}\n"  # type: ignore[union-attr]
                        f"--- log ---\n{self.log_text()}"
                    ) from None
                continue
            self.notifications.append(data.decode(errors="replace"))

    # -- talking SMTP --------------------------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> socket.socket:
        """A TCP connection to the daemon's SMTP port."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    @staticmethod
    def read_line(sock: socket.socket) -> bytes:
        """One CRLF-terminated line from ``sock`` (b"" at EOF)."""
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1)
            if not chunk:
                break
            data += chunk
        return data

    @contextlib.contextmanager
    def connecting_in_a_loop(self) -> Iterator[list[bytes | OSError]]:
        """Connect again and again from a thread while the block runs (reload tests).

        Yields the list of what each connection got: its first line, or the error it failed with.
        The thread is stopped and joined when the block ends.
        """
        results: list[bytes | OSError] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    with self.connect() as sock:
                        results.append(self.read_line(sock))
                except OSError as exc:
                    results.append(exc)

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            yield results
        finally:
            stop.set()
            thread.join(60)

    def banner(self, timeout: float = 30.0) -> bytes:
        """Connect, read the greeting, say QUIT and close; return the greeting line."""
        with self.connect(timeout) as sock:
            line = self.read_line(sock)
            try:
                sock.sendall(b"QUIT\r\n")
            except OSError:
                pass
            return line
