"""Password hashes for SMTP AUTH: ``{SCRYPT}`` entries in a password file.

File format (one user per line, ``#`` comments): ``user:{SCRYPT}N=16384,r=8,p=1$SALT$HASH`` with
SALT and HASH in unpadded base64.  scrypt (RFC 7914) is memory-hard and in Python's standard
library; the parameters are stored with each hash so that they can be raised later without
invalidating old entries.  Lines are created with ``meta1 passwd USER``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from pathlib import Path

SCHEME = "{SCRYPT}"
_N, _R, _P = 2**14, 8, 1
_DKLEN = 32
_HASH_RE = re.compile(r"^\{SCRYPT\}N=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")


class PasswordFileError(Exception):
    """A password file line that cannot be used; the message names path and line."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """Return a ``{SCRYPT}`` hash of ``password`` with a fresh random salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=2**27)
    return f"{SCHEME}N={n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against a stored hash in constant time; unknown schemes never match."""
    m = _HASH_RE.match(stored)
    if not m:
        return False
    n, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if n > 2**20 or r > 32 or p > 16 or n < 2:
        return False
    digest = hashlib.scrypt(
        password.encode(), salt=_unb64(m.group(4)), n=n, r=r, p=p, dklen=len(_unb64(m.group(5))), maxmem=2**28
    )
    return hmac.compare_digest(digest, _unb64(m.group(5)))


def load_password_file(path: Path) -> dict[str, str]:
    """Read ``user:hash`` lines.

    Raises:
        PasswordFileError: a malformed line (``path:line: message``).
    """
    users: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        user, sep, stored = text.partition(":")
        if not sep or not user or not _HASH_RE.match(stored):
            raise PasswordFileError(
                f"{path}:{number}: expected 'user:{SCHEME}...' (create it with meta1 passwd)"
            )
        users[user] = stored
    return users
