"""Non-blocking socket writes for the plaintext fast paths of smtps and smtpc.

Replies and command groups are small and the socket buffer almost always has room for them, so one
``os.write`` usually does the whole job without trio's stream machinery (a third of smtps's CPU per
message when it was profiled). Whatever does not fit goes the slow way, through the trio stream.
"""

from __future__ import annotations

import os

__all__ = ["write_nowait"]


def write_nowait(fd: int, data: bytes) -> bytes:
    """Write as much of ``data`` as the non-blocking socket ``fd`` takes now; return the rest.

    Returns:
        The part not written (``b""`` when everything went).

    Raises:
        OSError: the connection is broken (never ``BlockingIOError``: a full buffer returns
            ``data`` unchanged).
    """
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        return data
    return data[sent:] if sent < len(data) else b""
