"""Real peers for tests: downstream SMTP/LMTP servers and SMTP clients on loopback.

Each server is a context manager that starts the peer, waits until it accepts connections (polling
with a deadline, never sleeping blindly), yields an object describing it, and on exit stops it by pid
(SIGTERM, then SIGKILL after a grace period). Nothing here binds anything but loopback addresses.

Peers:

- :func:`smtp_sink`: Postfix's ``smtp-sink`` (a fast, real C implementation of the server side).
  It counts messages and, with a dump directory, writes each transaction to a file that
  :meth:`SmtpSink.messages` parses.
- :func:`recording_sink`: an aiosmtpd server in a thread that records every transaction and can be
  scripted to fail in the ways a delivery agent must handle (4xx after DATA, 5xx at RCPT, silence,
  per-recipient LMTP replies).
- :func:`dovecot_lmtp`: Dovecot's LMTP service with a private minimal configuration, delivering into
  Maildirs under a directory the test owns.
- :func:`swaks`: run the ``swaks`` SMTP client with a timeout.
- :func:`raw_smtp_server`: a minimal scripted server in a thread that answers the end of data with
  raw bytes (malformed replies a delivery agent must not trust).

Running as root: ``smtp-sink`` insists on ``-u user`` and Dovecot refuses to deliver mail as uid 0, so
both use the ``nobody`` account and files they write are owned by it (root can still read them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DovecotLmtp",
    "PeerStartError",
    "RawSmtpServer",
    "RecordedMessage",
    "RecordingSink",
    "SinkDump",
    "SinkScript",
    "SmtpSink",
    "dovecot_lmtp",
    "free_port",
    "raw_smtp_server",
    "recording_sink",
    "smtp_sink",
    "stop_process",
    "swaks",
    "wait_until_accepting",
]

#: How long a peer may take to start accepting. Generous: CI machines are small and loaded.
START_TIMEOUT_S = 30.0
#: How long a peer gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 10.0
#: The account unprivileged peers run as when the tests run as root.
UNPRIVILEGED_USER = "nobody"

_POLL_INTERVAL_S = 0.02


class PeerStartError(RuntimeError):
    """A peer did not start: it exited early or did not accept connections in time."""


# --------------------------------------------------------------------------------------------
# Process helpers


def free_port(address: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``address`` right now.

    The port is released before returning, so another process may take it; callers that start a
    server on it retry with a new port when the bind fails (see :func:`smtp_sink`).

    Args:
        address: Loopback address to probe.

    Returns:
        A port number.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _try_connect(address: str | Path, port: int | None) -> bool:
    try:
        if port is None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(address))
        else:
            with socket.create_connection((str(address), port), timeout=1.0):
                pass
    except OSError:
        return False
    return True


def wait_until_accepting(
    address: str | Path,
    port: int | None = None,
    *,
    timeout_s: float = START_TIMEOUT_S,
    proc: subprocess.Popen[Any] | None = None,
    describe: str = "peer",
) -> None:
    """Poll until a TCP (``port`` given) or Unix (``port`` None) socket accepts a connection.

    Args:
        address: Host address, or the Unix socket path when ``port`` is None.
        port: TCP port, or None for a Unix socket.
        timeout_s: Deadline for the whole wait.
        proc: The server process; if it exits the wait fails at once instead of at the deadline.
        describe: Name used in the error message.

    Raises:
        PeerStartError: The process exited or the deadline passed.
    """
    deadline = time.monotonic() + timeout_s
    where = str(address) if port is None else f"{address}:{port}"
    while True:
        if proc is not None and proc.poll() is not None:
            raise PeerStartError(f"{describe} exited with status {proc.returncode} before {where}")
        if _try_connect(address, port):
            return
        if time.monotonic() > deadline:
            raise PeerStartError(f"{describe} did not accept on {where} within {timeout_s} s")
        time.sleep(_POLL_INTERVAL_S)


def stop_process(proc: subprocess.Popen[Any], *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a process we started: SIGTERM by pid, wait, SIGKILL if it lingers.

    Args:
        proc: The process.
        timeout_s: Grace period after SIGTERM.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)


def _is_root() -> bool:
    return os.geteuid() == 0


def _poll(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Return True as soon as ``condition()`` holds, False when the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_INTERVAL_S)
    return True


# --------------------------------------------------------------------------------------------
# Postfix smtp-sink

_COUNTER = re.compile(rb"mesg=(\d+)")


@dataclasses.dataclass(frozen=True, slots=True)
class SinkDump:
    """One transaction as dumped by ``smtp-sink -d``.

    Attributes:
        helo: Argument of the last HELO/EHLO/LHLO, or None.
        mail_args: Arguments of MAIL (``<sender> PARAM=...``).
        rcpt_args: Arguments of each RCPT, in order.
        content: Message header and body as received (dot-unstuffed), with LF line endings:
            smtp-sink writes lines with the local newline convention.
        path: The dump file.
    """

    helo: str | None
    mail_args: str
    rcpt_args: tuple[str, ...]
    content: bytes
    path: Path

    @property
    def mail_from(self) -> str:
        """The sender address without angle brackets or parameters."""
        return _strip_address(self.mail_args)

    @property
    def rcpt_tos(self) -> tuple[str, ...]:
        """The recipient addresses without angle brackets or parameters."""
        return tuple(_strip_address(a) for a in self.rcpt_args)

    @property
    def content_crlf(self) -> bytes:
        """The content with CRLF line endings, as it travelled on the wire (before dot-stuffing)."""
        return self.content.replace(b"\n", b"\r\n")


def _strip_address(args: str) -> str:
    first = args.split(" ", 1)[0] if args else ""
    return first[1:-1] if first.startswith("<") and first.endswith(">") else first


def _parse_sink_dump(path: Path) -> SinkDump:
    data = path.read_bytes()
    helo: str | None = None
    mail_args = ""
    rcpts: list[str] = []
    pos = 0
    # smtp-sink's own headers come first; its three-line Received: header closes them.
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end].decode("utf-8", "surrogateescape")
        pos = end + 1
        name, _, value = line.partition(": ")
        if name == "X-Helo-Args":
            helo = value
        elif name == "X-Mail-Args":
            mail_args = value
        elif name == "X-Rcpt-Args":
            rcpts.append(value)
        elif name == "Received":
            for _ in range(2):
                pos = data.index(b"\n", pos) + 1
            break
    content = data[pos:]
    # The dump ends with one empty line after the message.
    if content.endswith(b"\n\n"):
        content = content[:-1]
    return SinkDump(helo, mail_args, tuple(rcpts), content, path)


class SmtpSink:
    """A running ``smtp-sink``; see :func:`smtp_sink`.

    Attributes:
        address: Listening address.
        port: Listening port.
        dump_dir: Where transactions are dumped, or None.
        proc: The process.
    """

    def __init__(self, address: str, port: int, dump_dir: Path | None, proc: subprocess.Popen[bytes]) -> None:
        self.address = address
        self.port = port
        self.dump_dir = dump_dir
        self.proc = proc
        self._counter_lock = threading.Lock()
        self._count = 0
        self._reader = threading.Thread(target=self._read_counters, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def _read_counters(self) -> None:
        # `-c` prints "sess=N quit=N mesg=N\r" whenever a session ends or "." is received.
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):  # type: ignore[attr-defined]
            found = _COUNTER.findall(chunk)
            if found:
                with self._counter_lock:
                    self._count = max(self._count, int(found[-1]))

    def message_count(self) -> int:
        """Messages received so far (the end of DATA was seen)."""
        with self._counter_lock:
            return self._count

    def wait_for_messages(self, n: int, timeout_s: float = 30.0) -> int:
        """Wait until at least ``n`` messages have been received.

        Args:
            n: The number to wait for.
            timeout_s: Deadline.

        Returns:
            The count reached.

        Raises:
            TimeoutError: Fewer than ``n`` messages arrived in time.
        """
        if not _poll(lambda: self.message_count() >= n, timeout_s):
            raise TimeoutError(f"smtp-sink got {self.message_count()} of {n} messages")
        return self.message_count()

    def messages(self) -> list[SinkDump]:
        """Parse the dumped transactions (needs ``dump_dir``).

        They come roughly oldest first, but file time stamps are coarse: messages that arrived
        within a few milliseconds may be in any order.

        Raises:
            RuntimeError: The sink was started without a dump directory.
        """
        if self.dump_dir is None:
            raise RuntimeError("smtp_sink was started without dump_dir")
        files = [p for p in self.dump_dir.rglob("*") if p.is_file()]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [_parse_sink_dump(p) for p in files]


@contextlib.contextmanager
def smtp_sink(
    address: str = "127.0.0.1",
    port: int | None = None,
    *,
    dump_dir: Path | None = None,
    lmtp: bool = False,
    hostname: str | None = None,
    extra_args: Sequence[str] = (),
    executable: str = "/usr/sbin/smtp-sink",
) -> Iterator[SmtpSink]:
    """Run Postfix's ``smtp-sink`` on a loopback address.

    Args:
        address: Loopback address to listen on.
        port: TCP port; None picks a free one (retrying if another process takes it first).
        dump_dir: If given, every transaction is written to a file below it (``-d``), readable
            with :meth:`SmtpSink.messages`. As root the sink is chrooted there (``-R``) and runs as
            ``nobody``, so the directory is handed to that user.
        lmtp: Speak LMTP (``-L``).
        hostname: Name in the greeting (``-h``).
        extra_args: More options, e.g. ``["-r", "RCPT"]`` to soft-reject every RCPT or
            ``["-q", "DATA"]`` to hang up at DATA (see smtp-sink(1)).
        executable: Path of the program.

    Yields:
        The running sink.

    Raises:
        PeerStartError: It did not start.
    """
    if shutil.which(executable) is None:
        raise PeerStartError(f"{executable} not found (install the postfix package)")
    args: list[str] = [executable, "-c"]
    if lmtp:
        args.append("-L")
    if hostname:
        args += ["-h", hostname]
    if _is_root():
        args += ["-u", UNPRIVILEGED_USER]
    if dump_dir is not None:
        dump_dir.mkdir(parents=True, exist_ok=True)
        # Files are named by strftime plus a random suffix; the directory part keeps the sink
        # from having to create anything above dump_dir.
        template = "%Y%m%d%H%M%S."
        if _is_root():
            # The sink opens dump files after dropping to `nobody`, who cannot traverse the
            # test's private temporary directories: chroot into dump_dir instead.
            pw = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(dump_dir, pw.pw_uid, pw.pw_gid)
            args += ["-R", str(dump_dir), "-d", "/" + template]
        else:
            args += ["-d", str(dump_dir / template)]
    args += list(extra_args)

    attempts = 1 if port is not None else 5
    for attempt in range(attempts):
        use_port = port if port is not None else free_port(address)
        proc = subprocess.Popen(
            [*args, f"{address}:{use_port}", "256"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_until_accepting(address, use_port, proc=proc, describe="smtp-sink")
        except PeerStartError as exc:
            stop_process(proc)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            proc.stdout and proc.stdout.close()
            proc.stderr and proc.stderr.close()
            if attempt + 1 < attempts and "in use" in err:
                continue
            raise PeerStartError(f"{exc}: {err.strip()}") from None
        break
    sink = SmtpSink(address, use_port, dump_dir, proc)
    try:
        yield sink
    finally:
        stop_process(proc)
        sink._reader.join(timeout=STOP_TIMEOUT_S)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# --------------------------------------------------------------------------------------------
# aiosmtpd recording sink


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedMessage:
    """One transaction seen by a :class:`RecordingSink` (after the end of data).

    Attributes:
        mail_from: Envelope sender.
        rcpt_tos: Envelope recipients accepted at RCPT, in order.
        content: The message exactly as received: CRLF line endings, dot-unstuffed.
        helo: The EHLO/HELO/LHLO argument of the session.
        peer: The client's address.
        tls: Whether the session had switched to TLS.
        mail_options: ESMTP parameters of MAIL FROM.
        reply: The reply sent after the data (LMTP: one line per recipient, CRLF-joined).
        accepted: Whether the message was accepted (LMTP: for at least one recipient).
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    helo: str | None
    peer: Any
    tls: bool
    mail_options: tuple[str, ...]
    reply: str
    accepted: bool


@dataclasses.dataclass(frozen=True)
class SinkScript:
    """How a :class:`RecordingSink` misbehaves. The default accepts everything.

    Attributes:
        data_temp_failures: Answer ``451 4.3.0`` after the data of the first N transactions.
        reject_recipients: Recipients (case-insensitive) answered ``550 5.1.1`` at RCPT.
        temp_reject_recipients: Recipients answered ``450 4.2.1`` at RCPT.
        silent: Accept TCP connections and never say anything (not even the greeting).
        lmtp_replies: LMTP only: final reply per recipient (lower-cased key), e.g.
            ``{"b@example.org": "452 4.2.2 mailbox full"}``; others get 250.
        on_data: Called with each transaction before replying; a returned string replaces the
            reply (for SMTP; for LMTP it replaces the whole multi-line reply).
    """

    data_temp_failures: int = 0
    reject_recipients: frozenset[str] = frozenset()
    temp_reject_recipients: frozenset[str] = frozenset()
    silent: bool = False
    lmtp_replies: Mapping[str, str] = dataclasses.field(default_factory=dict)
    on_data: Callable[[RecordedMessage], str | None] | None = None


class _Handler:
    """aiosmtpd handler hooks; they run in the controller's event loop thread."""

    def __init__(self, sink: RecordingSink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        script = self._sink.script
        key = address.lower()
        if key in {a.lower() for a in script.reject_recipients}:
            return f"550 5.1.1 <{address}>: recipient unknown"
        if key in {a.lower() for a in script.temp_reject_recipients}:
            return f"450 4.2.1 <{address}>: try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self._sink._record(session, envelope)


class RecordingSink:
    """A running aiosmtpd sink; see :func:`recording_sink`.

    Attributes:
        address: Listening address (or the Unix socket path).
        port: Listening port (None for a Unix socket).
        lmtp: Whether it speaks LMTP.
        script: The current :class:`SinkScript`; may be replaced between transactions.
    """

    def __init__(self, address: str, port: int | None, lmtp: bool, script: SinkScript | None) -> None:
        self.address = address
        self.port = port
        self.lmtp = lmtp
        self.script = script or SinkScript()
        self._cond = threading.Condition()
        self._transactions: list[RecordedMessage] = []
        self._data_count = 0
        self.silent_connections = 0

    @property
    def transactions(self) -> list[RecordedMessage]:
        """Every transaction that reached the end of data, accepted or not."""
        with self._cond:
            return list(self._transactions)

    @property
    def messages(self) -> list[RecordedMessage]:
        """The accepted transactions."""
        with self._cond:
            return [m for m in self._transactions if m.accepted]

    def wait_for_messages(self, n: int, timeout_s: float = 30.0) -> list[RecordedMessage]:
        """Wait until ``n`` messages have been accepted.

        Args:
            n: The number to wait for.
            timeout_s: Deadline.

        Returns:
            The accepted messages (at least ``n``).

        Raises:
            TimeoutError: Fewer arrived in time.
        """
        with self._cond:
            ok = self._cond.wait_for(lambda: sum(m.accepted for m in self._transactions) >= n, timeout_s)
            got = [m for m in self._transactions if m.accepted]
        if not ok:
            raise TimeoutError(f"recording sink got {len(got)} of {n} messages")
        return got

    def wait_for_transactions(self, n: int, timeout_s: float = 30.0) -> list[RecordedMessage]:
        """Like :meth:`wait_for_messages` but counts rejected transactions too."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._transactions) >= n, timeout_s)
            got = list(self._transactions)
        if not ok:
            raise TimeoutError(f"recording sink saw {len(got)} of {n} transactions")
        return got

    def _record(self, session: Any, envelope: Any) -> str:
        script = self.script
        rcpts = tuple(envelope.rcpt_tos)
        with self._cond:
            self._data_count += 1
            temp_fail = self._data_count <= script.data_temp_failures
        if temp_fail:
            lines = ["451 4.3.0 temporary failure (scripted)"] * (len(rcpts) if self.lmtp else 1)
        elif self.lmtp:
            lines = [script.lmtp_replies.get(r.lower(), f"250 2.0.0 <{r}> delivered") for r in rcpts]
        else:
            lines = ["250 2.0.0 OK: queued"]
        reply = "\r\n".join(lines)
        msg = RecordedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=rcpts,
            content=bytes(envelope.original_content),
            helo=session.host_name,
            peer=session.peer,
            tls=session.ssl is not None,
            mail_options=tuple(envelope.mail_options),
            reply=reply,
            accepted=False,
        )
        if script.on_data is not None:
            override = script.on_data(msg)
            if override is not None:
                reply = override
        accepted = any(line[:1] == "2" for line in reply.split("\r\n"))
        msg = dataclasses.replace(msg, reply=reply, accepted=accepted)
        with self._cond:
            self._transactions.append(msg)
            self._cond.notify_all()
        return reply


def _make_controller(
    sink: RecordingSink,
    unix_path: Path | None,
    starttls_context: ssl.SSLContext | None,
    hostname: str,
) -> Any:
    from aiosmtpd.controller import Controller, UnixSocketController
    from aiosmtpd.lmtp import LMTP
    from aiosmtpd.smtp import SMTP

    kwargs: dict[str, Any] = {"server_hostname": hostname, "ready_timeout": START_TIMEOUT_S}
    if starttls_context is not None:
        kwargs["tls_context"] = starttls_context
    base: type = UnixSocketController if unix_path is not None else Controller

    class _Controller(base):
        def factory(self) -> SMTP:
            cls = LMTP if sink.lmtp else SMTP
            return cls(self.handler, **self.SMTP_kwargs)

    handler = _Handler(sink)
    if unix_path is not None:
        return _Controller(handler, unix_socket=unix_path, **kwargs)
    return _Controller(handler, hostname=sink.address, port=sink.port, **kwargs)


class _SilentServer:
    """Accepts TCP connections and never writes a byte: a peer that hangs."""

    def __init__(self, sink: RecordingSink) -> None:
        self._sink = sink
        family = socket.AF_INET6 if ":" in sink.address else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((sink.address, sink.port or 0))
        self._listener.listen(64)
        sink.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            with self._sink._cond:
                self._sink.silent_connections += 1
                self._sink._cond.notify_all()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_TIMEOUT_S)
        self._listener.close()
        for conn in self._conns:
            conn.close()


@contextlib.contextmanager
def recording_sink(
    address: str = "127.0.0.1",
    port: int | None = None,
    *,
    script: SinkScript | None = None,
    lmtp: bool = False,
    starttls_context: ssl.SSLContext | None = None,
    unix_path: Path | None = None,
    hostname: str = "sink.test",
) -> Iterator[RecordingSink]:
    """Run an aiosmtpd server in a thread that records every transaction.

    Args:
        address: Loopback address to listen on.
        port: TCP port; None picks a free one.
        script: How to misbehave (see :class:`SinkScript`); ``sink.script`` may be replaced later.
        lmtp: Speak LMTP (LHLO, one reply per recipient after the data).
        starttls_context: A server SSL context; when given, STARTTLS is offered.
        unix_path: Listen on this Unix socket instead of TCP.
        hostname: Name in the greeting and EHLO reply.

    Yields:
        The running sink.
    """
    sink = RecordingSink(address, port, lmtp, script)
    if sink.script.silent:
        silent = _SilentServer(sink)
        silent.start()
        try:
            yield sink
        finally:
            silent.stop()
        return
    attempts = 1 if port is not None or unix_path is not None else 5
    controller: Any = None
    for attempt in range(attempts):
        if unix_path is None:
            sink.port = port if port is not None else free_port(address)
        else:
            sink.address, sink.port = str(unix_path), None
        controller = _make_controller(sink, unix_path, starttls_context, hostname)
        try:
            controller.start()
        except OSError:
            if attempt + 1 == attempts:
                raise
            continue
        break
    if unix_path is not None:
        # The socket gets the umask's mode; delivery agents run as other users (e2e tests as
        # root drop the workers to a throw-away account), and connect(2) needs write access.
        os.chmod(unix_path, 0o666)
    try:
        yield sink
    finally:
        controller.stop()


# --------------------------------------------------------------------------------------------
# Dovecot LMTP


class DovecotLmtp:
    """A running Dovecot LMTP service; see :func:`dovecot_lmtp`.

    Attributes:
        socket_path: The LMTP Unix socket.
        address: The LMTP TCP address.
        port: The LMTP TCP port.
        mail_root: Mail for ``user@domain`` lands in the Maildir ``mail_root/domain/user``.
        log_path: Dovecot's log (useful when a delivery fails).
        proc: The master process.
    """

    def __init__(
        self,
        socket_path: Path,
        address: str,
        port: int,
        mail_root: Path,
        log_path: Path,
        proc: subprocess.Popen[bytes],
    ) -> None:
        self.socket_path = socket_path
        self.address = address
        self.port = port
        self.mail_root = mail_root
        self.log_path = log_path
        self.proc = proc

    @property
    def pid(self) -> int:
        """The master process id."""
        return self.proc.pid

    def maildir(self, recipient: str) -> Path:
        """The Maildir that mail for ``recipient`` (``user@domain``) is delivered to."""
        user, _, domain = recipient.rpartition("@")
        return self.mail_root / domain / user

    def messages(self, recipient: str) -> list[bytes]:
        """The messages delivered to ``recipient`` (files in ``new/`` and ``cur/``).

        Roughly oldest first; deliveries within the file system's time stamp granularity may be in
        any order.
        """
        md = self.maildir(recipient)
        files = [p for sub in ("new", "cur") if (md / sub).is_dir() for p in (md / sub).iterdir()]
        files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files]

    def wait_for_messages(self, recipient: str, n: int, timeout_s: float = 30.0) -> list[bytes]:
        """Wait until ``recipient`` has ``n`` messages.

        Raises:
            TimeoutError: Fewer arrived in time.
        """
        if not _poll(lambda: len(self.messages(recipient)) >= n, timeout_s):
            raise TimeoutError(f"dovecot got {len(self.messages(recipient))} of {n} messages")
        return self.messages(recipient)

    def log(self) -> str:
        """Dovecot's log so far."""
        return self.log_path.read_text(errors="replace")


def _dovecot_config(
    *,
    base_dir: Path,
    state_dir: Path,
    mail_root: Path,
    socket_path: Path,
    address: str,
    port: int,
    internal_user: str,
    internal_group: str,
    mail_uid: int,
    mail_gid: int,
) -> str:
    # Why each setting:
    # - base_dir/state_dir: private run directory, so we never touch /run/dovecot or a system
    #   instance and may run unprivileged.
    # - default_internal_user/login_user: Dovecot setuids its helper processes to these; as a
    #   normal user it can only "switch" to itself.
    # - first_valid_uid/gid: Dovecot refuses mail access below them; we deliver as mail_uid.
    # - userdb static without uid/gid: Dovecot rejects a userdb that returns uid 0 outright,
    #   so the uid comes from mail_uid (never 0: root runs deliveries as `nobody`).
    # - chroot emptied for the services that chroot by default (needs root otherwise).
    return f"""\
base_dir = {base_dir}
state_dir = {state_dir}
instance_name = meta1py-test-{port}
log_path = /dev/stderr
info_log_path = /dev/stderr
protocols = lmtp
listen = {address}
ssl = no
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {internal_user}
mail_uid = {mail_uid}
mail_gid = {mail_gid}
first_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}
mail_location = maildir:{mail_root}/%d/%n
mail_home = {mail_root}/%d/%n
lmtp_save_to_detail_mailbox = no
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = allow_all_users=yes
}}
service lmtp {{
  unix_listener lmtp {{
    path = {socket_path.name}
    mode = 0666
  }}
  inet_listener lmtp {{
    address = {address}
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
"""


@contextlib.contextmanager
def dovecot_lmtp(
    tmpdir: Path, *, address: str = "127.0.0.1", port: int | None = None
) -> Iterator[DovecotLmtp]:
    """Run Dovecot's LMTP service on a Unix socket in ``tmpdir`` and on a loopback TCP port.

    Any ``user@domain`` is accepted and delivered to the Maildir ``mail_root/domain/user``. As a
    normal user the whole instance runs as that user and ``mail_root`` is ``tmpdir/mail``. As root,
    deliveries run as ``nobody`` (Dovecot never writes mail as root), so ``mail_root`` is a fresh
    directory under the system temporary directory owned by ``nobody`` (the test's own tmpdir is
    not reachable by it); it is removed on exit.

    Args:
        tmpdir: Directory for the configuration, sockets and log.
        address: Loopback address for the TCP listener.
        port: TCP port; None picks a free one.

    Yields:
        The running service.

    Raises:
        PeerStartError: Dovecot is missing or did not start.
    """
    exe = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not os.path.exists(exe):
        raise PeerStartError("dovecot not found (install dovecot-lmtpd)")
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    # Unix socket paths are limited to about 108 bytes and Dovecot creates sockets below
    # base_dir, so keep it short even when the test's tmpdir is deep.
    cleanup: list[Path] = []
    base_dir = tmpdir / "run"
    if len(str(base_dir)) > 60:
        base_dir = Path(tempfile.mkdtemp(prefix="m1dv-"))
        cleanup.append(base_dir)
    base_dir.mkdir(exist_ok=True)
    state_dir = tmpdir / "state"
    state_dir.mkdir(exist_ok=True)
    socket_path = base_dir / "lmtp.sock"
    me = pwd.getpwuid(os.getuid())
    if _is_root():
        nobody = pwd.getpwnam(UNPRIVILEGED_USER)
        mail_uid, mail_gid = nobody.pw_uid, nobody.pw_gid
        mail_root = Path(tempfile.mkdtemp(prefix="m1dv-mail-"))
        os.chown(mail_root, mail_uid, mail_gid)
        cleanup.append(mail_root)
    else:
        mail_uid, mail_gid = os.getuid(), os.getgid()
        mail_root = tmpdir / "mail"
        mail_root.mkdir(exist_ok=True)
    internal_group = _group_name(me.pw_gid)
    log_path = tmpdir / "dovecot.log"
    conf_path = tmpdir / "dovecot.conf"
    proc: subprocess.Popen[bytes] | None = None
    try:
        attempts = 1 if port is not None else 5
        for attempt in range(attempts):
            use_port = port if port is not None else free_port(address)
            conf_path.write_text(
                _dovecot_config(
                    base_dir=base_dir,
                    state_dir=state_dir,
                    mail_root=mail_root,
                    socket_path=socket_path,
                    address=address,
                    port=use_port,
                    internal_user=me.pw_name,
                    internal_group=internal_group,
                    mail_uid=mail_uid,
                    mail_gid=mail_gid,
                )
            )
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [exe, "-F", "-c", str(conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            try:
                wait_until_accepting(address, use_port, proc=proc, describe="dovecot")
                wait_until_accepting(socket_path, None, proc=proc, describe="dovecot")
            except PeerStartError as exc:
                stop_process(proc)
                text = log_path.read_text(errors="replace")
                if attempt + 1 < attempts and "in use" in text:
                    continue
                raise PeerStartError(f"{exc}; log:\n{text[-2000:]}") from None
            break
        assert proc is not None
        yield DovecotLmtp(socket_path, address, use_port, mail_root, log_path, proc)
    finally:
        if proc is not None:
            # The master takes its children down with it on SIGTERM.
            stop_process(proc)
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# --------------------------------------------------------------------------------------------
# swaks


def swaks(
    *args: str, timeout_s: float = 60.0, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``swaks`` with ``args`` and return its result (never raises on a non-zero status).

    Example: ``swaks("--server", "127.0.0.1:2525", "--to", "u@localhost", "--from", "a@b")``.
    swaks exits 0 on success; 21-29 name the SMTP stage that failed (see swaks(1)).

    Args:
        *args: Command-line arguments.
        timeout_s: Kill swaks after this long.
        input: Bytes for its stdin (e.g. with ``--data -``).

    Returns:
        The completed process, stdout and stderr decoded as text.

    Raises:
        subprocess.TimeoutExpired: It ran longer than ``timeout_s``.
        FileNotFoundError: swaks is not installed.
    """
    exe = shutil.which("swaks")
    if exe is None:
        raise FileNotFoundError("swaks not found (install the swaks package)")
    proc = subprocess.run(
        [exe, *args],
        input=input,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


# --------------------------------------------------------------------------------------------
# A raw scripted SMTP server (hostile downstream replies)


@dataclasses.dataclass
class RawSmtpServer:
    """A minimal SMTP server that answers the end of data with raw bytes; see :func:`raw_smtp_server`.

    Attributes:
        address: loopback address it listens on.
        port: its TCP port.
        sessions: connections accepted so far.
        messages: messages whose data was read completely, as ``(recipients, data)``.
        replies_sent: the raw end-of-data replies sent, in order.
    """

    address: str
    port: int
    sessions: int = 0
    messages: list[tuple[tuple[str, ...], bytes]] = dataclasses.field(default_factory=list)
    replies_sent: list[bytes] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def raw_smtp_server(
    end_of_data_reply: Callable[[tuple[str, ...]], bytes],
    address: str = "127.0.0.1",
    port: int | None = None,
) -> Iterator[RawSmtpServer]:
    """Run a scripted SMTP server in a thread that sends ``end_of_data_reply(recipients)`` verbatim.

    Everything before the end of data is well-behaved (220, 250 to EHLO/MAIL/RCPT/RSET, 354 to
    DATA, 221 to QUIT); the reply to the end of data is whatever bytes the callable returns (a bare
    LF, a NUL, a bad code, a megabyte without a line end, ...). The session then waits for the
    client to close. It is not a full SMTP server: one command per line, no PIPELINING, no TLS.

    Yields:
        The running server (its ``port`` is set).
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port or 0))
    listener.listen(64)
    server = RawSmtpServer(address, listener.getsockname()[1])
    stop = threading.Event()
    lock = threading.Lock()
    conns: list[socket.socket] = []

    def session(conn: socket.socket) -> None:
        conn.settimeout(60)
        buf = b""
        rcpts: list[str] = []

        def line() -> bytes | None:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                buf += chunk
            got, _sep, buf = buf.partition(b"\r\n")
            return got

        conn.sendall(b"220 raw.test ESMTP scripted\r\n")
        while not stop.is_set():
            cmd = line()
            if cmd is None:
                return
            verb = cmd[:4].upper()
            if verb in (b"EHLO", b"HELO", b"LHLO"):
                conn.sendall(b"250-raw.test\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                rcpts = []
                conn.sendall(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                rcpts.append(cmd.decode(errors="replace").partition(":")[2].strip().strip("<>"))
                conn.sendall(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                while b"\r\n.\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                data, _sep, buf = buf.partition(b"\r\n.\r\n")
                reply = end_of_data_reply(tuple(rcpts))
                with lock:
                    server.messages.append((tuple(rcpts), data + b"\r\n"))
                    server.replies_sent.append(reply)
                conn.sendall(reply)
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                return
            else:
                conn.sendall(b"250 2.0.0 ok\r\n")

    def run_session(conn: socket.socket) -> None:
        try:
            session(conn)
        except OSError:
            pass  # the client hung up on us, as it should after a bad reply
        finally:
            conn.close()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with lock:
                server.sessions += 1
                conns.append(conn)
            threading.Thread(target=run_session, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=STOP_TIMEOUT_S)
        listener.close()
        with lock:
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
