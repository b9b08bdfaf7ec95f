"""The container's entrypoint in test mode (``META1_TEST=1``), without an engine.

As ``tests/e2e/test_container.py`` does, the entrypoint runs as a plain process (as ``nobody``
when we are root: the image's user is unprivileged) with the image's configuration, its includes
pointing at a temporary runtime directory. With ``META1_TEST=1`` it starts test mode: the control
API answers on ``META1_TEST_LISTEN_ADDRESS:META1_TEST_PORT`` and mail is captured. An address
that is not loopback is refused unless the operator consents (``META1_TEST_ALLOW_NON_LOOPBACK``);
only the refusal is tested here, since tests listen on loopback only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meta1py.pytest_plugin import Meta1, Meta1ApiError
from meta1py_testing.daemon import DaemonError, free_port, poll

pytestmark = pytest.mark.e2e

CONTAINER_DIR = Path(__file__).resolve().parents[2] / "contrib" / "container"
ENTRYPOINT = CONTAINER_DIR / "entrypoint.sh"
VENV_BIN = Path(sys.executable).parent
NOBODY = 65534
ROOT = os.geteuid() == 0


@pytest.fixture
def base() -> Iterator[Path]:
    if not (VENV_BIN / "meta1").exists():
        pytest.skip(f"no meta1 command next to {sys.executable} (run scripts/install.sh)")
    # Not pytest's tmp_path: its parents are mode 0700, and nobody must reach this directory.
    directory = Path(tempfile.mkdtemp(prefix="meta1-entrypoint-test-"))
    directory.chmod(0o755)
    conf = directory / "etc" / "meta1.conf"
    conf.parent.mkdir()
    text = re.sub(r'"/run/meta1/', f'"{directory / "run"}/', (CONTAINER_DIR / "meta1.conf").read_text())
    conf.write_text(text)
    if ROOT:
        for path in (directory, conf.parent, conf):
            os.chown(path, NOBODY, NOBODY)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _env(base: Path, smtp_port: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "META1_CONF": str(base / "etc" / "meta1.conf"),
        "META1_RUNTIME_DIR": str(base / "run"),
        "META1_QUEUE_DIRECTORY": str(base / "queue"),
        "META1_MAIL_DIRECTORY": str(base / "mail"),
        "META1_LISTEN_ADDRESS": "127.0.0.1",
        "META1_PORT": str(smtp_port),
        "META1_TEST": "1",
        **extra,
    }


def _start(base: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(base / "entrypoint.log", "ab") as log:
        return subprocess.Popen(
            [str(ENTRYPOINT)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=base,
            user=NOBODY if ROOT else None,
            group=NOBODY if ROOT else None,
            extra_groups=[] if ROOT else None,
        )


def _log(base: Path) -> str:
    return (base / "entrypoint.log").read_text(errors="replace")


def test_meta1_test_starts_test_mode_with_the_api_on_loopback(base: Path) -> None:
    smtp_port, api_port = free_port(), free_port()
    process = _start(base, _env(base, smtp_port, META1_TEST_PORT=str(api_port)))
    meta1 = Meta1(f"http://127.0.0.1:{api_port}", "127.0.0.1", smtp_port)
    try:

        def api_answers() -> dict[str, float] | None:
            if process.poll() is not None:
                raise DaemonError(f"the entrypoint exited with {process.returncode}\n{_log(base)}")
            try:
                return meta1.clock()
            except (OSError, Meta1ApiError):
                return None

        poll(api_answers, 60, "the control API")
        assert f"TEST MODE: control API on 127.0.0.1:{api_port}" in _log(base)
        meta1.send("ann@example.test", "app@example.test", subject="from the container")
        mail = meta1.wait_for_message(to="ann@example.test", timeout=30)
        assert mail["subject"] == "from the container"
        assert mail["destination"] == "smtp:example.test"  # no DNS: captured, never sent
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, _log(base)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_non_loopback_api_needs_the_operators_consent(base: Path) -> None:
    env = _env(base, free_port(), META1_TEST_LISTEN_ADDRESS="0.0.0.0", META1_TEST_PORT=str(free_port()))
    process = _start(base, env)
    assert process.wait(60) == 78
    log = _log(base)
    assert "the test-mode control API may not listen on 0.0.0.0: not a loopback address" in log, log
    assert "allow_non_loopback = yes" in log


def test_a_bad_consent_value_is_refused(base: Path) -> None:
    process = _start(base, _env(base, free_port(), META1_TEST_ALLOW_NON_LOOPBACK="sure"))
    assert process.wait(60) == 64
    assert "META1_TEST_ALLOW_NON_LOOPBACK=sure: yes or no" in _log(base)
