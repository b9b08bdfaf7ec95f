"""The pytest plugin (``pytest -p meta1py.pytest_plugin``) as an application's tests use it.

Each test runs pytest in a subprocess on a small generated test file: the plugin starts a real
``meta1 run --test-mode`` (as root, in production mode with the four worker users), the generated
tests send mail with smtplib and assert through the control API, and the plugin stops the daemon
at the end of the session (its API port is closed afterwards).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ZONE = Path(__file__).parents[1] / "data" / "zones" / "test.zone"

APP_TESTS = """
import pathlib
import smtplib

import pytest


def test_a_message_is_captured(meta1):
    pathlib.Path("api_url").write_text(meta1.api_url)
    assert meta1.send("ann@example.test", "app@example.test", subject="Welcome") == {}
    mail = meta1.wait_for_message(to="ann@example.test", timeout=30)
    assert mail["subject"] == "Welcome"
    assert "Hello." in mail["text"]
    assert [m["id"] for m in meta1.messages()] == [mail["id"]]


def test_each_test_starts_empty(meta1):
    assert meta1.messages() == []
    assert meta1.clock()["offset"] == 0


def test_scripted_refusal(meta1):
    meta1.script([{"direction": "in", "phase": "rcpt", "to": "nobody@example.test",
                   "reply": "550 5.1.1 No such user"}])
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        meta1.send("nobody@example.test")
    assert info.value.recipients["nobody@example.test"][0] == 550


def test_the_clock_moves(meta1):
    before = meta1.clock()["now"]
    meta1.advance(3600)
    assert meta1.clock()["offset"] == pytest.approx(3600, abs=1)
    assert meta1.clock()["now"] >= before + 3599
"""


def _run_pytest(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_app.py").write_text(APP_TESTS)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "meta1py.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-q",
            *options,
            "test_app.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _closed(url: str) -> bool:
    host, _, port = url.removeprefix("http://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


def test_plugin_runs_an_applications_tests(tmp_path: Path) -> None:
    done = _run_pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout
    # The daemon was stopped at the end of the session.
    assert _closed((tmp_path / "api_url").read_text())


def test_plugin_with_a_zone_file(tmp_path: Path) -> None:
    done = _run_pytest(tmp_path, "--meta1-zone", str(ZONE), "-k", "captured")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
