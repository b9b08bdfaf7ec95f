"""sd_notify (meta1py.mcp.notify): a reader that stops reading must never block mcp."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys


def test_notify_never_blocks_on_a_full_socket() -> None:
    name = f"@meta1-notify-test-{os.getpid()}-{secrets.token_hex(4)}"
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(b"\0" + name[1:].encode())
    try:
        # In a child process with a timeout: a blocking sendto would hang it, not the suite.
        code = (
            "from meta1py.mcp.notify import notify\n"
            "print(sum(notify(f'STATUS=message {i}') for i in range(100)))\n"
        )
        env = {**os.environ, "NOTIFY_SOCKET": name}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        sent = int(result.stdout)
        assert 0 < sent < 100  # the queue took some, the rest was dropped instead of waiting
        first = reader.recv(4096)
        assert first == b"STATUS=message 0"
    finally:
        reader.close()
