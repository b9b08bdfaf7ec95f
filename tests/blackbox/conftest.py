"""The black-box suite: meta1py in test mode, driven only over SMTP and HTTP (docs/testmode.md).

Nothing here imports meta1py. The MTA under test is either

- one that runs already, named by ``META1_BLACKBOX_SMTP=host:port`` and
  ``META1_BLACKBOX_API=http://host:port`` (the container image with ``META1_TEST=1``; its
  configuration must be tests/blackbox/meta1.conf.in's, as tests/e2e/test_container.py gives it), or
- started here for the session: ``meta1 run --test-mode`` with that configuration in a temporary
  directory on free loopback ports (as root, after ``meta1 setup``, with the four worker users of
  etc/meta1.conf: production mode), stopped by pid at the end.

Each test starts from ``POST /reset`` (empty queue and captures, real time, no scripts).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from blackbox_client import Api, Mta

#: The configuration the suite expects, as a template (its placeholders: see the file).
CONFIG_TEMPLATE = Path(__file__).with_name("meta1.conf.in")

USERS = {
    "qmgr": ("meta1q", "meta1"),
    "smar": ("meta1r", "meta1r"),
    "smtpc": ("meta1c", "meta1"),
    "smtps": ("meta1s", "meta1"),
}
_DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _meta1_command() -> list[str]:
    """The ``meta1`` command: $META1_COMMAND, else the one beside this Python, else on $PATH."""
    if os.environ.get("META1_COMMAND"):
        return os.environ["META1_COMMAND"].split()
    beside = Path(sys.executable).with_name("meta1")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("meta1")
    if found is None:
        pytest.skip("no meta1 command to start (set META1_COMMAND or META1_BLACKBOX_SMTP/_API)")
    return [found]


def _wait_for_greeting(host: str, port: int, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + _DEADLINE_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"meta1 run exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                if sock.recv(3) == b"220":
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("no greeting")


@pytest.fixture(scope="session")
def mta() -> Iterator[Mta]:
    smtp, api = os.environ.get("META1_BLACKBOX_SMTP"), os.environ.get("META1_BLACKBOX_API")
    if smtp and api:
        host, _, port = smtp.rpartition(":")
        _wait_for_greeting(host, int(port), None)
        yield Mta(host, int(port), Api(api))
        return
    command = _meta1_command()
    work = Path(tempfile.mkdtemp(prefix="meta1-blackbox-"))
    work.chmod(0o755)
    smtp_port, api_port = _free_port(), _free_port()
    root = os.geteuid() == 0
    users = {f"{n}_user": (f"user = {u}; group = {g};" if root else "") for n, (u, g) in USERS.items()}
    conf = work / "meta1.conf"
    conf.write_text(
        CONFIG_TEMPLATE.read_text().format(
            paths=f"queue_directory = {work}/queue; mail_directory = {work}/mail;",
            listen=f"listen_socket {{ address = 127.0.0.1; port = {smtp_port}; }}",
            test_mode=f"test_mode {{ enable = yes; listen = 127.0.0.1:{api_port}; }}",
            **users,
        )
    )
    log = (work / "meta1.log").open("wb")
    if root:  # production mode: the worker users, made as an operator makes them
        subprocess.run([*command, "setup", "-f", str(conf)], check=True, stdout=log, stderr=log)
    proc = subprocess.Popen(
        [*command, "run", "--test-mode", "-f", str(conf)], stdout=log, stderr=log, cwd=work
    )
    try:
        _wait_for_greeting("127.0.0.1", smtp_port, proc)
        yield Mta("127.0.0.1", smtp_port, Api(f"http://127.0.0.1:{api_port}"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def clean(mta: Mta) -> Mta:
    """The MTA after ``POST /reset``."""
    assert mta.api.ok("POST", "/reset") == {"reset": True}
    return mta
