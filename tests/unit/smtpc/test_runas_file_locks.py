"""File deliveries (aliases(5) ``/file``) wait for both kinds of lock a mail reader may hold.

The root helper's writer (``meta1py.smtpc.runas._append_file``) runs here as the current uid. The
lock holders are real other processes (a POSIX record lock is per process): ``flock(1)`` from
util-linux for a BSD lock, and a Python child with ``fcntl.lockf`` for a record lock, as mutt and
procmail take on an mbox.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from meta1py.smtpc.runas import _append_file

MESSAGE = b"From a@example.org Thu Jan  1 00:00:00 2026\nSubject: s\n\nbody\n\n"

_HOLD_LOCKF = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def held(kind: str, path: Path) -> Iterator[None]:
    """Another process holds ``path`` locked (``flock`` or ``lockf``) until the block ends."""
    if kind == "flock":
        command = ["flock", "--exclusive", str(path), "-c", "echo locked; exec cat >/dev/null"]
    else:
        command = [sys.executable, "-c", _HOLD_LOCKF, str(path)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def message_fd(tmp_path: Path) -> int:
    source = tmp_path / "message"
    source.write_bytes(MESSAGE)
    return os.open(source, os.O_RDONLY)


@pytest.mark.parametrize("kind", ["flock", "lockf"])
def test_a_file_locked_by_a_reader_is_waited_for_then_appended(tmp_path: Path, kind: str) -> None:
    mbox = tmp_path / "mbox"
    mbox.write_bytes(b"")
    message = message_fd(tmp_path)
    try:
        with held(kind, mbox):
            result = _append_file(str(mbox), message, 1.0)
            assert result == {
                "errno": errno.EAGAIN,
                "error": "timed out waiting for the file's lock",
                "stage": "lock",
            }
            assert mbox.read_bytes() == b""
        assert _append_file(str(mbox), message, 1.0) == {"ok": True}
        assert mbox.read_bytes() == MESSAGE
    finally:
        os.close(message)
