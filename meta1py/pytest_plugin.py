"""A pytest plugin: a real meta1py in test mode for the tests of an application that sends mail.

Load it with ``pytest -p meta1py.pytest_plugin`` (or ``pytest_plugins = ["meta1py.pytest_plugin"]``
in a ``conftest.py``). It starts ``meta1 run --test-mode`` once per test session, with a private
configuration in a temporary directory, SMTP and the control API on free loopback ports, and
stops it (by its pid) at the end. Each test gets the fixture ``meta1``, reset before the test::

    def test_signup_sends_a_welcome(meta1):
        app.signup("ann@example.test", smtp_port=meta1.smtp_port)
        mail = meta1.wait_for_message(to="ann@example.test")
        assert "Welcome" in mail["subject"]

Options: ``--meta1-conf FILE`` (configuration text appended to the generated file),
``--meta1-zone FILE`` (``test_mode { zone_file }``: DNS from that zone file), ``--meta1-api URL``
with ``--meta1-smtp HOST:PORT`` (use an instance that is already running, e.g. the container
image with ``META1_TEST=1``, instead of starting one).

As root the workers run as the accounts of the configuration (``meta1 setup`` creates them); as
any other user they run as that user. The plugin talks HTTP with :mod:`urllib` and SMTP with
:mod:`smtplib`; it needs nothing else. See docs/testmode.md ("pytest plugin").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Meta1", "Meta1ApiError", "Meta1Instance", "start_instance"]

#: Seconds to wait for the first 220 greeting after ``meta1 run`` started.
START_TIMEOUT_S = 60.0
#: Seconds mcp gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 30.0
_POLL_S = 0.05


class Meta1ApiError(AssertionError):
    """The control API answered with an error (an ``AssertionError``, so pytest shows it as a
    failed expectation): ``status`` is the HTTP status, ``error`` the API's explanation."""

    def __init__(self, method: str, path: str, status: int, error: str) -> None:
        super().__init__(f"{method} {path}: {status} {error}")
        self.status = status
        self.error = error


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Meta1:
    """The running MTA as a test sees it: its SMTP port and its control API.

    Args:
        api_url: the control API, e.g. ``http://127.0.0.1:8025``.
        smtp_host: where SMTP listens.
        smtp_port: likewise.
    """

    def __init__(self, api_url: str, smtp_host: str, smtp_port: int) -> None:
        self.api_url = api_url.rstrip("/")
        self.smtp_host = smtp_host
        self.smtp_port = smtp_port

    # -- SMTP ----------------------------------------------------------------------------------

    def send(
        self,
        to: str | Sequence[str] = "user@example.test",
        sender: str = "sender@example.test",
        *,
        subject: str = "test",
        body: str = "Hello.\n",
        message: EmailMessage | bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, tuple[int, bytes]]:
        """Send one message over SMTP (smtplib), as an application would.

        Args:
            to: the recipient(s).
            sender: the envelope sender (and ``From:`` of a generated message).
            subject: ``Subject:`` of a generated message.
            body: its text.
            message: send this instead of a generated message.
            headers: more header fields of a generated message.

        Returns:
            The recipients the server refused, as smtplib reports them (empty: all accepted).

        Raises:
            smtplib.SMTPException: the server refused the message or every recipient.
        """
        recipients = [to] if isinstance(to, str) else list(to)
        if message is None:
            message = EmailMessage()
            message["From"] = sender
            message["To"] = ", ".join(recipients)
            message["Subject"] = subject
            for name, value in (headers or {}).items():
                message[name] = value
            message.set_content(body)
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=30) as smtp:
            if isinstance(message, EmailMessage):
                return smtp.send_message(message, from_addr=sender, to_addrs=recipients)
            return smtp.sendmail(sender, recipients, message)

    # -- the control API -----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, object] | None = None,
        timeout: float = 30.0,
    ) -> Any:
        """One call of the control API; its JSON answer (the bytes for a non-JSON answer).

        Raises:
            Meta1ApiError: a 4xx or 5xx answer.
        """
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        url = self.api_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
                kind = resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                error = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                error = text
            raise Meta1ApiError(method, path, exc.code, str(error)) from None
        return json.loads(payload) if kind == "application/json" else payload

    def reset(self) -> None:
        """Empty the queue, forget captures, set the clock back, drop every script."""
        self.request("POST", "/reset")

    def messages(self, **filters: object) -> list[dict[str, Any]]:
        """Captured deliveries, newest first (filters: ``to``, ``from_``, ``subject``, ``kind``,
        ``limit``)."""
        answer = self.request("GET", "/messages", params=_filters(filters))
        result: list[dict[str, Any]] = answer["messages"]
        return result

    def message(self, message_id: str) -> dict[str, Any]:
        """One captured delivery with its headers, text, parts, envelope and transcript."""
        answer: dict[str, Any] = self.request("GET", f"/messages/{urllib.parse.quote(message_id)}")
        return answer

    def raw(self, message_id: str) -> bytes:
        """A captured message as delivered."""
        answer: bytes = self.request("GET", f"/messages/{urllib.parse.quote(message_id)}/raw")
        return answer

    def wait_for_message(self, timeout: float = 5.0, **filters: object) -> dict[str, Any]:
        """The first captured delivery that matches (``to``, ``from_``, ``subject``, ``kind``),
        as :meth:`message` gives it; waits up to ``timeout`` seconds (at most 60).

        Raises:
            Meta1ApiError: none arrived in time (status 408).
        """
        params = {**_filters(filters), "timeout": timeout}
        answer: dict[str, Any] = self.request("GET", "/messages/wait", params=params, timeout=timeout + 30)
        return answer

    def queue(self) -> list[dict[str, Any]]:
        """The messages in the queue, with each recipient's status."""
        result: list[dict[str, Any]] = self.request("GET", "/queue")["messages"]
        return result

    def clock(self) -> dict[str, float]:
        """``{"now": virtual epoch seconds, "offset": seconds ahead of the real clock}``."""
        answer: dict[str, float] = self.request("GET", "/clock")
        return answer

    def advance(self, seconds: float) -> dict[str, Any]:
        """Move the virtual clock forward; retries, warnings and bounces due meanwhile run first."""
        answer: dict[str, Any] = self.request("POST", "/clock/advance", params={"s": seconds}, timeout=120)
        return answer

    def script(self, rules: Sequence[Mapping[str, Any]], *, replace: bool = True) -> None:
        """Make these the active rules (``replace=False``: add them after the others)."""
        self.request("PUT" if replace else "POST", "/scripts", {"rules": list(rules)})


def _filters(filters: Mapping[str, object]) -> dict[str, object]:
    # ``from`` is a Python keyword: callers write ``from_``.
    return {("from" if k == "from_" else k): v for k, v in filters.items() if v is not None}


class Meta1Instance:
    """A ``meta1 run --test-mode`` this plugin started: its directory, process and :class:`Meta1`.

    Use :func:`start_instance`; :meth:`stop` ends it by its pid.
    """

    def __init__(self, directory: Path, process: subprocess.Popen[bytes], client: Meta1) -> None:
        self.directory = directory
        self.process = process
        self.client = client

    @property
    def log_path(self) -> Path:
        """mcp's and the workers' log (stderr)."""
        return self.directory / "meta1.log"

    def log_text(self) -> str:
        """What the daemon logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM mcp, wait, then SIGKILL; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _config_text(directory: Path, smtp_port: int, api_port: int, zone: Path | None, extra: str) -> str:
    test_mode = [f"enable = yes; listen = 127.0.0.1:{api_port};"]
    if zone is not None:
        test_mode.append(f'zone_file = "{zone}";')
    return "\n".join(
        [
            "hostname = localhost;",
            f'queue_directory = "{directory / "queue"}";',
            f'mail_directory = "{directory / "mail"}";',
            f"smtps {{ listen_socket {{ address = 127.0.0.1; port = {smtp_port}; }} }}",
            f"test_mode {{ {' '.join(test_mode)} }}",
            extra,
            "",
        ]
    )


def _greeting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return sock.makefile("rb").readline().startswith(b"220")
    except OSError:
        return False


def start_instance(
    *, zone_file: Path | None = None, extra_config: str = "", timeout: float = START_TIMEOUT_S
) -> Meta1Instance:
    """Start ``meta1 run --test-mode`` in a new temporary directory; return once it greets.

    Raises:
        RuntimeError: it exited, or did not greet within ``timeout`` seconds (the log attached).
    """
    directory = Path(tempfile.mkdtemp(prefix="meta1-pytest-"))
    directory.chmod(0o755)  # as root, the workers (after dropping privileges) must reach it
    smtp_port, api_port = _free_port(), _free_port()
    conf = directory / "meta1.conf"
    conf.write_text(
        _config_text(directory, smtp_port, api_port, zone_file and zone_file.resolve(), extra_config)
    )
    conf.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META1_", "NOTIFY_SOCKET"))}
    with open(directory / "meta1.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "meta1py", "run", "--test-mode", "-f", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=directory,
            env=env,
        )
    instance = Meta1Instance(
        directory, process, Meta1(f"http://127.0.0.1:{api_port}", "127.0.0.1", smtp_port)
    )
    deadline = time.monotonic() + timeout
    while not _greeting(smtp_port):
        status = process.poll()
        if status is not None or time.monotonic() > deadline:
            instance.stop()
            why = f"exited with status {status}" if status is not None else f"did not greet in {timeout:g}s"
            raise RuntimeError(f"meta1 run --test-mode {why}:\n{instance.log_text()}")
        time.sleep(_POLL_S)  # polling with a deadline: the port opens when smtps is ready
    return instance


# -- pytest hooks and fixtures ---------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("meta1", "meta1py test mode")
    group.addoption("--meta1-conf", metavar="FILE", help="configuration text appended to the generated file")
    group.addoption(
        "--meta1-zone", metavar="FILE", help="answer DNS from this zone file (test_mode zone_file)"
    )
    group.addoption("--meta1-api", metavar="URL", help="use a running instance's control API, start none")
    group.addoption("--meta1-smtp", metavar="HOST:PORT", help="that instance's SMTP (with --meta1-api)")


@pytest.fixture(scope="session")
def meta1_instance(request: pytest.FixtureRequest) -> Iterator[Meta1]:
    """The session's MTA in test mode: started once (or the one of ``--meta1-api``)."""
    config = request.config
    api = config.getoption("--meta1-api")
    if api:
        smtp = config.getoption("--meta1-smtp") or "127.0.0.1:25"
        host, _, port = smtp.rpartition(":")
        yield Meta1(api, host or "127.0.0.1", int(port))
        return
    conf, zone = config.getoption("--meta1-conf"), config.getoption("--meta1-zone")
    extra = Path(conf).read_text() if conf else ""
    instance = start_instance(zone_file=Path(zone) if zone else None, extra_config=extra)
    try:
        yield instance.client
    finally:
        instance.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(instance.directory)


@pytest.fixture
def meta1(meta1_instance: Meta1) -> Meta1:
    """The MTA, reset for this test: empty queue, no captures, real time, no scripts."""
    meta1_instance.reset()
    return meta1_instance
