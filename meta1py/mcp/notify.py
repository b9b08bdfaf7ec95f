"""The systemd notification protocol (sd_notify), written directly on the datagram socket.

``$NOTIFY_SOCKET`` names an AF_UNIX datagram socket; a leading ``@`` means the Linux abstract
namespace. We do not link libsystemd: the protocol is one datagram of ``KEY=value`` lines.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=..."``) as one datagram to ``$NOTIFY_SOCKET``.

    Returns:
        True if a datagram was sent, False when ``$NOTIFY_SOCKET`` is unset or sending failed
        (failures are logged: readiness reporting must never stop the mail system).
    """
    name = os.environ.get("NOTIFY_SOCKET")
    if not name:
        return False
    payload = "\n".join(lines).encode()
    try:
        # Non-blocking: a reader that stopped reading (its queue holds net.unix.max_dgram_qlen
        # datagrams, 10 by default) must not freeze mcp's event loop in sendto(); the message is
        # dropped instead, as a lost STATUS= costs nothing.
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.sendto(payload, _address(name))
    except BlockingIOError:
        log.debug("notify socket %s is full: dropped %r", name, lines)
        return False
    except OSError as exc:
        log.warning("cannot notify %s: %s", name, exc)
        return False
    return True
