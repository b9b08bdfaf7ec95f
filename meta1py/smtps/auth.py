"""SMTP AUTH for smtps (RFC 4954): the PLAIN and LOGIN exchanges, the password check, rate limits.

The SASL exchanges are small state machines with no I/O (:class:`SaslExchange`): the session feeds
them the initial response and each line the client sends after a 334 challenge, and gets back either
the next challenge, the credentials, or a failure. Checking the credentials is the session's job,
through :class:`Authenticator` (scrypt is slow on purpose, so it runs in a worker thread).

Nothing here logs a password or a SASL line; the exchange keeps the password only until it is
handed to the check.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import trio

from meta1py.passwords import hash_password, load_password_file, verify_password

log = logging.getLogger(__name__)

__all__ = [
    "AuthFailureLimiter",
    "Authenticator",
    "Credentials",
    "SaslChallenge",
    "SaslError",
    "SaslExchange",
    "is_loopback",
]

# Base64 of "Username:" and "Password:": what every LOGIN client expects (draft-murchison-sasl-login).
_LOGIN_USER = base64.b64encode(b"Username:").decode()
_LOGIN_PASS = base64.b64encode(b"Password:").decode()
# Bound the number of client IPs remembered by the failure limiter (memory under a spray attack).
_MAX_TRACKED_CLIENTS = 100_000
# scrypt with N=2**14, r=8 needs 16 MiB per check: a few at a time keep memory bounded.
_CONCURRENT_CHECKS = 4


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client sent: the login and the password (never log ``password``)."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class SaslChallenge:
    """Send ``334 <data>`` and feed the client's next line back to the exchange."""

    data: str


class SaslError(Exception):
    """The client broke the SASL exchange.

    Attributes:
        cancelled: the client sent ``*`` (RFC 4954 §4): answer 501 5.7.0.
    """

    def __init__(self, message: str, *, cancelled: bool = False) -> None:
        super().__init__(message)
        self.cancelled = cancelled


def _decode(line: str) -> bytes:
    if line == "*":
        raise SaslError("cancelled", cancelled=True)
    try:
        return base64.b64decode(line.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SaslError("invalid base64") from None


def _text(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{what} is not UTF-8") from None
    if any(c in text for c in "\0\r\n"):
        raise SaslError(f"{what} contains NUL, CR or LF")
    return text


class SaslExchange:
    """One PLAIN (RFC 4616) or LOGIN exchange.

    Usage: ``step = exchange.start(initial_response)``; while ``step`` is a :class:`SaslChallenge`,
    send it and call ``exchange.respond(line)``. The result is :class:`Credentials`.
    """

    def __init__(self, mechanism: str) -> None:
        if mechanism not in ("PLAIN", "LOGIN"):
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._user: str | None = None

    def start(self, initial_response: str | None) -> SaslChallenge | Credentials:
        """Begin with the AUTH command's initial response (None: none given; "" means "=")."""
        if self.mechanism == "PLAIN":
            if initial_response is None:
                return SaslChallenge("")
            return self._plain(initial_response)
        if initial_response is None:
            return SaslChallenge(_LOGIN_USER)
        return self.respond(initial_response)

    def respond(self, line: str) -> SaslChallenge | Credentials:
        """Take the client's answer to the last challenge.

        Raises:
            SaslError: cancelled, bad base64, or malformed credentials.
        """
        if self.mechanism == "PLAIN":
            return self._plain(line)
        data = _text(_decode(line), "LOGIN data")
        if self._user is None:
            if not data:
                raise SaslError("empty user name")
            self._user = data
            return SaslChallenge(_LOGIN_PASS)
        return Credentials(self._user, data)

    def _plain(self, line: str) -> Credentials:
        # message = [authzid] NUL authcid NUL passwd (RFC 4616 §2)
        parts = _decode(line).split(b"\0")
        if len(parts) != 3:
            raise SaslError("PLAIN message must have three NUL-separated parts")
        authzid, authcid, passwd = (_text(p, "PLAIN field") for p in parts)
        if not authcid:
            raise SaslError("empty user name")
        # Acting as another identity is not supported: only an empty authzid or the login itself.
        if authzid and authzid != authcid:
            raise SaslError("authorization identity differs from the login")
        return Credentials(authcid, passwd)


class Authenticator:
    """Checks credentials against a password file loaded once at start.

    Args:
        path: the password file (``user:{SCRYPT}...`` lines, made with ``meta1 passwd``).

    Raises:
        OSError: the file cannot be read.
        meta1py.passwords.PasswordFileError: a malformed line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users = load_password_file(path)
        # Unknown users are checked against this so that a reply's timing does not tell which
        # user names exist.
        self._dummy = hash_password("unknown user")
        self._limiter = trio.CapacityLimiter(_CONCURRENT_CHECKS)

    async def check(self, credentials: Credentials) -> bool:
        """True when the password matches the user's hash (runs scrypt in a worker thread)."""
        stored = self.users.get(credentials.user)
        ok = await trio.to_thread.run_sync(
            verify_password, credentials.password, stored or self._dummy, limiter=self._limiter
        )
        return ok and stored is not None


class AuthFailureLimiter:
    """Failed AUTH attempts per client IP in a sliding window, shared by every session.

    Args:
        max_failures: failures allowed within ``window_s``; one more and the client is blocked until
            the oldest of them leaves the window.
        window_s: the window length in seconds.
    """

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def blocked(self, client: str, now: float) -> bool:
        """Whether ``client`` used up its failures within the window."""
        times = self._recent(client, now)
        return times is not None and len(times) >= self.max_failures

    def record_failure(self, client: str, now: float) -> None:
        """Count one failed attempt."""
        times = self._recent(client, now)
        if times is None:
            times = self._failures[client] = deque()
        times.append(now)
        self._failures.move_to_end(client)
        while len(self._failures) > _MAX_TRACKED_CLIENTS:
            self._failures.popitem(last=False)


def is_loopback(client_address: str) -> bool:
    """Whether the client address is a loopback address (127/8, ::1)."""
    try:
        return ipaddress.ip_address(client_address).is_loopback
    except ValueError:
        return False
