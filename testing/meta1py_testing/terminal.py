"""Run a command with its standard error on a real pseudo-terminal, as an operator's shell would.

What a command draws only for a person (a progress bar) is checked this way: the kernel's
pseudo-terminal answers ``isatty()`` and the window size as a terminal emulator's does, and its
line discipline turns ``\\n`` into ``\\r\\n`` on the way out, as on a real screen. Standard output
goes to a file, not to the terminal, so the test also sees what a script reading it gets.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["TerminalRun", "run_with_terminal_stderr"]


@dataclass(frozen=True)
class TerminalRun:
    """How a command ended, what it wrote to standard output, and what the terminal received."""

    returncode: int
    stdout: str
    terminal: str


def run_with_terminal_stderr(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None = None,
    columns: int = 120,
    rows: int = 40,
    timeout: float = 120.0,
) -> TerminalRun:
    """Run ``args`` with stderr on a new pseudo-terminal of ``columns`` x ``rows``, stdout to a
    file, stdin from /dev/null; read the terminal until the command has closed it and ended.

    Raises:
        subprocess.TimeoutExpired: the command ran longer than ``timeout`` (it is killed, by
            its pid, first).
    """
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        with tempfile.TemporaryFile() as out, open(os.devnull, "rb") as stdin:
            proc = subprocess.Popen(list(args), stdin=stdin, stdout=out, stderr=slave, cwd=cwd, env=dict(env))
            os.close(slave)
            slave = -1
            received = bytearray()
            deadline = time.monotonic() + timeout
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise subprocess.TimeoutExpired(list(args), timeout, output=bytes(received))
                    ready, _, _ = select.select([master], [], [], min(left, 1.0))
                    if not ready:
                        continue
                    try:
                        data = os.read(master, 65536)
                    except OSError as exc:
                        if exc.errno == errno.EIO:  # the last writer closed the terminal
                            break
                        raise
                    if not data:
                        break
                    received += data
                returncode = proc.wait(max(1.0, deadline - time.monotonic()))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            out.seek(0)
            stdout = out.read().decode("utf-8", "replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return TerminalRun(returncode, stdout, received.decode("utf-8", "replace"))
