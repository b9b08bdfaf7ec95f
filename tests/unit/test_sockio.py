"""meta1py.sockio.write_nowait on a real socketpair: all, part, nothing, broken."""

from __future__ import annotations

import socket

import pytest

from meta1py.sockio import write_nowait


def test_writes_everything_that_fits_and_returns_the_rest() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        assert write_nowait(a.fileno(), b"250 ok\r\n") == b""
        assert b.recv(100) == b"250 ok\r\n"
        # Fill the buffer: what does not fit comes back, whole or in part, never lost.
        big = b"x" * (8 << 20)
        rest = write_nowait(a.fileno(), big)
        assert 0 < len(rest) < len(big)
        assert big.endswith(rest)
        assert write_nowait(a.fileno(), b"more") == b"more"


def test_a_broken_connection_raises_oserror() -> None:
    a, b = socket.socketpair()
    with a:
        a.setblocking(False)
        b.close()
        with pytest.raises(OSError):
            write_nowait(a.fileno(), b"QUIT\r\n")
