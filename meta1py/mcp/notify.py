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
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, _address(name))
    except OSError as exc:
        log.warning("cannot notify %s: %s", name, exc)
        return False
    return True
