"""smtps's admission and resource decisions, free of I/O (the clock and the file system are passed in).

- :class:`SessionLimits` (in the spirit of Postfix's anvil): concurrent sessions and connections per
  minute per client address and per network (/24 for IPv4, /64 for IPv6), a global cap that keeps a
  reserve for clients below their fair share, stress mode, and refusal logging throttled to one
  line per client per minute.
- :class:`MailRates` (anvil's message and recipient rates): MAIL FROM and RCPT TO commands per
  minute per client address and per authenticated user, and per session.
- :class:`QueueSpace`: is there room in the queue file system for a new message (``queue_minfree``,
  452 4.3.1 at MAIL)? The free space is read through a function and cached for a second.

Times are seconds of a monotonic clock given by the caller (``trio.current_time()`` in smtps, a
fake clock in the tests).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from meta1py.conf import SmtpsConfig
from meta1py.netaddr import client_ip

#: Width of the connection-rate window, and of the refusal-log throttle (seconds).
RATE_WINDOW_S = 60.0
#: Most clients remembered for rates and log throttling (a flood from many addresses must not grow
#: these without bound; forgetting one only forgives its past).
_MAX_TRACKED = 100_000

Refusal = Literal["client", "network", "client_rate", "network_rate", "reserve", "total"]


@functools.lru_cache(maxsize=4096)
def network_of(client: str) -> str:
    """The client's network for the per-network limits: its /24 (IPv4) or /64 (IPv6).

    An address that does not parse (a Unix socket peer, "unknown") is its own network.
    """
    addr = client_ip(client)
    if addr is None:
        return client
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def is_trusted(client: str, service: SmtpsConfig) -> bool:
    """True when the client is in the service's ``relay_clients`` (Postfix's $mynetworks)."""
    addr = client_ip(client)
    if addr is None:
        return False
    return any(addr in net for net in service.relay_clients if net.version == addr.version)


class _Rate:
    """Connection times in the last RATE_WINDOW_S per key."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {}

    def count(self, key: str, now: float) -> int:
        times = self._times.get(key)
        if times is None:
            return 0
        horizon = now - RATE_WINDOW_S
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._times[key]
            return 0
        return len(times)

    def add(self, key: str, now: float, cap: int) -> None:
        times = self._times.get(key)
        if times is None:
            if len(self._times) >= _MAX_TRACKED:
                self._prune(now)
            # Never more than the cap is needed to decide; a deque bounded by it.
            times = self._times[key] = deque(maxlen=max(cap, 1))
        times.append(now)

    def _prune(self, now: float) -> None:
        for key in list(self._times):
            self.count(key, now)
        if len(self._times) >= _MAX_TRACKED:
            self._times.clear()


RateRefusal = Literal["session_messages", "session_recipients", "client", "user"]


@dataclass
class MailRates:
    """MAIL FROM and RCPT TO commands per minute, per client address and per authenticated user.

    The limits come from the session's ``smtps`` section (``message_rate_per_client``,
    ``recipient_rate_per_client``, ``message_rate_per_user``, ``recipient_rate_per_user``,
    ``max_messages_per_session``, ``max_recipients_per_session``); 0 is no limit. A command
    these limits refuse does not count. Exempt clients (relay_clients unless ``limit_relay_clients``, and
    ``ratelimit:`` OK in the access map) are not counted at all.
    """

    _messages: _Rate = field(default_factory=_Rate)
    _recipients: _Rate = field(default_factory=_Rate)

    def mail(
        self, service: SmtpsConfig, client: str, user: str | None, in_session: int, now: float
    ) -> RateRefusal | None:
        """Count one MAIL FROM (the session's ``in_session``-th before it), or say why not."""
        if service.max_messages_per_session and in_session >= service.max_messages_per_session:
            return "session_messages"
        return self._take(
            self._messages, client, user, service.message_rate_per_client, service.message_rate_per_user, now
        )

    def rcpt(
        self, service: SmtpsConfig, client: str, user: str | None, in_session: int, now: float
    ) -> RateRefusal | None:
        """Count one RCPT TO (the session's ``in_session``-th before it), or say why not."""
        if service.max_recipients_per_session and in_session >= service.max_recipients_per_session:
            return "session_recipients"
        return self._take(
            self._recipients,
            client,
            user,
            service.recipient_rate_per_client,
            service.recipient_rate_per_user,
            now,
        )

    @staticmethod
    def _take(
        rate: _Rate, client: str, user: str | None, per_client: int, per_user: int, now: float
    ) -> RateRefusal | None:
        client_key = f"ip:{client}"
        user_key = f"user:{user}" if user is not None and per_user else None
        if per_client and rate.count(client_key, now) >= per_client:
            return "client"
        if user_key is not None and rate.count(user_key, now) >= per_user:
            return "user"
        if per_client:
            rate.add(client_key, now, per_client)
        if user_key is not None:
            rate.add(user_key, now, per_user)
        return None


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of :meth:`SessionLimits.admit`: admitted, or refused and why (log it or not)."""

    admitted: bool
    reason: Refusal | None = None
    #: False when the same client was refused and logged less than a minute ago.
    log: bool = False


# Shared: the caller's frame holds the answer for the whole session.
_ADMITTED = Admission(True)


@dataclass
class SessionLimits:
    """Counters shared by every session of one smtps process.

    The limits come from each session's ``smtps`` section; the counters are the process's (one
    client talking to two services counts once per session in each).

    The reserve: the last ``session_reserve`` percent of ``max_sessions`` goes only to a client
    with fewer sessions than its fair share of the rest (the open share divided by the clients
    holding sessions) whose network is also below its fair share (the open share divided by the
    networks holding sessions). A flood from a few addresses or networks fills the open share and
    is then refused, while a client that has few sessions, from a network that has few, still
    gets in. Trusted clients (relay_clients)
    are exempt from the per-client, per-network and rate limits unless ``limit_relay_clients``;
    they still count, and only the global cap stops them.
    """

    total: int = 0
    per_client: dict[str, int] = field(default_factory=dict)
    per_network: dict[str, int] = field(default_factory=dict)
    _client_rate: _Rate = field(default_factory=_Rate)
    _network_rate: _Rate = field(default_factory=_Rate)
    _logged: dict[str, float] = field(default_factory=dict)
    #: The largest max_sessions and stress_threshold seen (for stressed()).
    _max_sessions: int = 0
    _stress_at: int = 0

    def admit(self, client: str, service: SmtpsConfig, now: float, trusted: bool = False) -> Admission:
        """Count a new session, or say why not (answer 421 4.7.0)."""
        network = network_of(client)
        reason = self._refusal(client, network, service, now, trusted)
        if reason is not None:
            return Admission(False, reason, self._should_log(client, now))
        self._count(client, network, service, now)
        self._max_sessions = max(self._max_sessions, service.max_sessions)
        stress_at = max(1, service.max_sessions * service.stress_threshold // 100)
        self._stress_at = stress_at if not self._stress_at else min(self._stress_at, stress_at)
        return _ADMITTED

    def _refusal(
        self, client: str, network: str, service: SmtpsConfig, now: float, trusted: bool
    ) -> Refusal | None:
        if self.total >= service.max_sessions:
            return "total"
        exempt = trusted and not service.limit_relay_clients
        if exempt:
            return None
        mine = self.per_client.get(client, 0)
        if mine >= service.max_sessions_per_client:
            return "client"
        if self.per_network.get(network, 0) >= service.max_sessions_per_network:
            return "network"
        rate = service.connection_rate_per_client
        if rate and self._client_rate.count(client, now) >= rate:
            return "client_rate"
        rate = service.connection_rate_per_network
        if rate and self._network_rate.count(network, now) >= rate:
            return "network_rate"
        reserve = service.max_sessions * service.session_reserve // 100
        open_share = service.max_sessions - reserve
        if self.total >= open_share:
            # In the reserve: only a client whose address and network are both below their fair
            # share of the open part gets in (a flood spread over many addresses of a few
            # networks is held by the network's share).
            if mine >= max(1, open_share // max(len(self.per_client), 1)):
                return "reserve"
            if self.per_network.get(network, 0) >= max(1, open_share // max(len(self.per_network), 1)):
                return "reserve"
        return None

    def eviction_victim(self, client: str, service: SmtpsConfig) -> str | None:
        """Whose session should make room for ``client``, refused for the total cap or the reserve.

        Only a client with no session of its own is let in this way, and only at the expense of
        the client holding the most sessions, if that one holds at least two and more than its
        fair share of ``max_sessions`` (divided by the clients holding sessions). So a flood
        from many addresses that each keep several idle sessions cannot lock out a newcomer:
        every new client gets in at once, and the flood only replaces its own sessions. (A flood
        of one session per address is not told apart from real clients this way.)

        Returns:
            The victim's address, or None: refuse the newcomer as decided.
        """
        if self.per_client.get(client, 0) or not self.per_client:
            return None
        victim, held = max(self.per_client.items(), key=lambda item: item[1])
        fair = service.max_sessions // max(len(self.per_client), 1)
        if held < 2 or held <= fair or victim == client:
            return None
        return victim

    def admit_over_cap(self, client: str, service: SmtpsConfig, now: float) -> Admission:
        """Count a session let in by :meth:`eviction_victim` (the evicted one leaves at once)."""
        self._count(client, network_of(client), service, now)
        return _ADMITTED

    def _count(self, client: str, network: str, service: SmtpsConfig, now: float) -> None:
        self.total += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        self.per_network[network] = self.per_network.get(network, 0) + 1
        if service.connection_rate_per_client:
            self._client_rate.add(client, now, service.connection_rate_per_client)
        if service.connection_rate_per_network:
            self._network_rate.add(network, now, service.connection_rate_per_network)

    def _should_log(self, client: str, now: float) -> bool:
        last = self._logged.get(client)
        if last is not None and now - last < RATE_WINDOW_S:
            return False
        if len(self._logged) >= _MAX_TRACKED:
            horizon = now - RATE_WINDOW_S
            self._logged = {k: t for k, t in self._logged.items() if t > horizon}
            if len(self._logged) >= _MAX_TRACKED:
                self._logged.clear()
        self._logged[client] = now
        return True

    def release(self, client: str) -> None:
        """Forget a finished session."""
        self.total -= 1
        left = self.per_client.get(client, 1) - 1
        if left:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)
        network = network_of(client)
        left = self.per_network.get(network, 1) - 1
        if left:
            self.per_network[network] = left
        else:
            self.per_network.pop(network, None)

    @property
    def stressed(self) -> bool:
        """Stress mode: more sessions open than ``stress_threshold`` percent of ``max_sessions``."""
        return bool(self._stress_at) and self.total > self._stress_at


class QueueSpace:
    """Is there room in the queue for a new message? (``queue_minfree``, checked at MAIL and BDAT.)

    Args:
        minfree: bytes the queue file system must keep free (0: never refuse).
        free_bytes: returns the free bytes of the queue file system (``statvfs``: f_bavail *
            f_frsize, what an unprivileged writer may use); an OSError counts as "room" (the write
            itself will tell).
        cache_s: how long one reading is used (so a busy server reads it once a second at most).
    """

    def __init__(self, minfree: int, free_bytes: Callable[[], int], cache_s: float = 1.0) -> None:
        self.minfree = minfree
        self._free_bytes = free_bytes
        self._cache_s = cache_s
        self._read_at: float | None = None
        self._free: int | None = None
        self._full_until = 0.0
        self._logged_at: float | None = None

    def free(self, now: float) -> int | None:
        """The free bytes (cached), or None when they cannot be read."""
        if self._read_at is None or now - self._read_at >= self._cache_s:
            self._read_at = now
            try:
                self._free = self._free_bytes()
            except OSError:
                self._free = None
        return self._free

    def room_for(self, size: int | None, now: float) -> bool:
        """True when a message of ``size`` bytes (None: not declared) can be taken now."""
        if now < self._full_until:
            return False
        if not self.minfree:
            return True
        free = self.free(now)
        if free is None:
            return True
        if free < self.minfree:
            return False
        return size is None or size <= free - self.minfree

    def should_log(self, now: float) -> bool:
        """True at most once a minute: refusals for want of space are logged, not each one."""
        if self._logged_at is not None and now - self._logged_at < RATE_WINDOW_S:
            return False
        self._logged_at = now
        return True

    def store_full(self, now: float, hold_s: float = 5.0) -> None:
        """qmgr could not write its store: refuse new messages for ``hold_s`` seconds."""
        self._full_until = now + hold_s
        self._read_at = None  # read again afterwards
