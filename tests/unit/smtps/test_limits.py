"""smtps's admission limits and the queue_minfree check, with a fake clock (no I/O)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from meta1py.conf import SmtpsConfig
from meta1py.smtps.limits import RATE_WINDOW_S, MailRates, QueueSpace, SessionLimits, is_trusted, network_of


def service(**kw: object) -> SmtpsConfig:
    base = {
        "max_sessions": 100,
        "max_sessions_per_client": 50,
        "max_sessions_per_network": 1000,
        "connection_rate_per_client": 0,
        "connection_rate_per_network": 0,
        "session_reserve": 20,
    }
    base.update(kw)
    return dataclasses.replace(SmtpsConfig(), **base)  # type: ignore[arg-type]


def test_network_of() -> None:
    assert network_of("192.0.2.77") == "192.0.2.0/24"
    assert network_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert network_of("::ffff:192.0.2.9") == "192.0.2.0/24"
    assert network_of("unknown") == "unknown"


def test_trusted_is_relay_clients() -> None:
    svc = SmtpsConfig()  # relay_clients 127.0.0.0/8, ::1
    assert is_trusted("127.0.0.5", svc) and is_trusted("::1", svc) and is_trusted("::ffff:127.0.0.1", svc)
    assert not is_trusted("192.0.2.1", svc) and not is_trusted("unknown", svc)


def test_per_client_and_per_network_concurrency() -> None:
    limits = SessionLimits()
    svc = service(max_sessions_per_client=3, max_sessions_per_network=5)
    for _ in range(3):
        assert limits.admit("192.0.2.1", svc, 0.0).admitted
    refused = limits.admit("192.0.2.1", svc, 0.0)
    assert not refused.admitted and refused.reason == "client"
    assert limits.admit("192.0.2.2", svc, 0.0).admitted
    assert limits.admit("192.0.2.3", svc, 0.0).admitted
    refused = limits.admit("192.0.2.4", svc, 0.0)
    assert refused.reason == "network"
    assert limits.admit("198.51.100.1", svc, 0.0).admitted  # another /24
    limits.release("192.0.2.1")
    assert limits.admit("192.0.2.4", svc, 0.0).admitted
    assert limits.total == 6 and limits.per_network["192.0.2.0/24"] == 5


def test_connection_rate_per_client_and_network_with_a_window() -> None:
    limits = SessionLimits()
    svc = service(connection_rate_per_client=3, connection_rate_per_network=4)
    for t in (0.0, 1.0, 2.0):
        assert limits.admit("192.0.2.1", svc, t).admitted
        limits.release("192.0.2.1")
    assert limits.admit("192.0.2.1", svc, 3.0).reason == "client_rate"
    assert limits.admit("192.0.2.2", svc, 3.0).admitted
    assert limits.admit("192.0.2.3", svc, 3.0).reason == "network_rate"
    # The first connection leaves the window a minute after it was made.
    assert limits.admit("192.0.2.1", svc, RATE_WINDOW_S + 0.5).admitted


def test_reserve_keeps_room_for_clients_below_their_fair_share() -> None:
    # max 100, 20 % reserve: the open share is 80. A flood from four addresses fills it (20
    # each); then the flooders are refused while a new client gets in.
    limits = SessionLimits()
    svc = service(max_sessions=100, max_sessions_per_client=50)
    flood = [f"203.0.113.{i}" for i in range(1, 5)]
    for n in range(80):
        assert limits.admit(flood[n % 4], svc, 0.0).admitted
    for client in flood:
        refused = limits.admit(client, svc, 0.0)
        assert not refused.admitted and refused.reason == "reserve"
    for i in range(10):
        assert limits.admit(f"198.51.100.{i}", svc, 0.0).admitted
    assert limits.total == 90


def test_reserve_holds_a_flood_spread_over_many_addresses_of_one_network() -> None:
    # 80 addresses of one /24, one session each, fill the open share; more addresses of that
    # network have no session of their own, but their network is over its share.
    limits = SessionLimits()
    svc = service(max_sessions=100, max_sessions_per_network=1000)
    for i in range(80):
        assert limits.admit(f"203.0.113.{i}", svc, 0.0).admitted
    for i in range(80, 90):
        assert limits.admit(f"203.0.113.{i}", svc, 0.0).reason == "reserve"
    assert limits.admit("198.51.100.7", svc, 0.0).admitted
    # A relay client (trusted) may use the reserve whatever its counts.
    for _ in range(5):
        assert limits.admit("10.0.0.5", svc, 0.0, trusted=True).admitted


def test_global_cap_is_absolute_and_trusted_clients_are_exempt_below_it() -> None:
    limits = SessionLimits()
    svc = service(max_sessions=120, max_sessions_per_client=50, connection_rate_per_client=10)
    # An application server in relay_clients opening 100 sessions at once (issue 16).
    for _ in range(100):
        assert limits.admit("10.0.0.5", svc, 0.0, trusted=True).admitted
    assert not limits.admit("10.0.0.5", svc, 0.0, trusted=False).admitted
    for _ in range(20):
        assert limits.admit("10.0.0.5", svc, 0.0, trusted=True).admitted
    assert limits.admit("10.0.0.5", svc, 0.0, trusted=True).reason == "total"
    limited = service(max_sessions=200, max_sessions_per_client=50, limit_relay_clients=True)
    assert limits.admit("10.0.0.5", limited, 0.0, trusted=True).reason == "client"


def test_refusals_are_logged_once_per_client_per_minute() -> None:
    limits = SessionLimits()
    svc = service(max_sessions_per_client=1)
    assert limits.admit("192.0.2.1", svc, 0.0).admitted
    logs = [limits.admit("192.0.2.1", svc, t).log for t in (1.0, 2.0, 30.0, 59.0)]
    assert logs == [True, False, False, False]
    assert limits.admit("192.0.2.9", svc, 2.0).admitted
    assert limits.admit("192.0.2.9", svc, 2.0).log  # another client: its own line
    assert limits.admit("192.0.2.1", svc, 61.5).log


def test_stress_mode_follows_the_session_count() -> None:
    limits = SessionLimits()
    svc = service(max_sessions=10, stress_threshold=80, max_sessions_per_client=100, session_reserve=0)
    for _ in range(8):
        limits.admit("192.0.2.1", svc, 0.0)
    assert not limits.stressed
    limits.admit("192.0.2.1", svc, 0.0)
    assert limits.stressed
    limits.release("192.0.2.1")
    assert not limits.stressed


class FakeDisk:
    def __init__(self, free: int) -> None:
        self.free = free
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.free


def test_queue_space_minfree_and_declared_size() -> None:
    disk = FakeDisk(100)
    space = QueueSpace(30, disk, cache_s=1.0)
    assert space.room_for(None, 0.0)
    assert space.room_for(70, 0.0)
    assert not space.room_for(71, 0.0)  # SIZE larger than free minus queue_minfree
    disk.free = 29
    assert space.room_for(None, 0.5)  # the cached reading
    assert not space.room_for(None, 1.0)  # read again: below queue_minfree
    assert disk.reads == 2
    disk.free = 1000
    assert space.room_for(None, 2.0)


def test_queue_space_is_read_at_most_once_per_second() -> None:
    disk = FakeDisk(10**9)
    space = QueueSpace(10, disk)
    for i in range(1000):
        space.room_for(None, i / 1000)
    assert disk.reads == 1


def test_queue_space_off_and_unreadable() -> None:
    disk = FakeDisk(0)
    assert QueueSpace(0, disk).room_for(10**12, 0.0) and disk.reads == 0

    def broken() -> int:
        raise OSError("statvfs failed")

    assert QueueSpace(10, broken).room_for(None, 0.0)  # the write itself will tell


def test_store_full_holds_new_messages_for_a_while() -> None:
    space = QueueSpace(10, FakeDisk(10**9))
    space.store_full(100.0, hold_s=5.0)
    assert not space.room_for(None, 101.0)
    assert space.room_for(None, 105.0)


@pytest.mark.parametrize("prefix", ["192.0.2.0/24", "2001:db8::/64"])
def test_network_keys_are_networks(prefix: str) -> None:
    net = ipaddress.ip_network(prefix)
    assert network_of(str(net.network_address + 7)) == prefix


def test_space_refusals_are_logged_once_a_minute() -> None:
    space = QueueSpace(10, FakeDisk(0))
    assert [space.should_log(t) for t in (0.0, 1.0, 59.0, 60.0)] == [True, False, False, True]


def test_a_newcomer_at_the_cap_evicts_the_heaviest_client_above_its_share() -> None:
    svc = service(max_sessions=10, session_reserve=0)
    limits = SessionLimits()
    for i in range(10):  # two flooders hold the whole cap: 6 and 4 sessions
        assert limits.admit(f"198.51.100.{1 + (i % 10 >= 6)}", svc, 0.0).admitted
    refused = limits.admit("203.0.113.9", svc, 1.0)
    assert (refused.admitted, refused.reason) == (False, "total")
    assert limits.eviction_victim("203.0.113.9", svc) == "198.51.100.1"
    assert limits.admit_over_cap("203.0.113.9", svc, 1.0).admitted
    assert (limits.total, limits.per_client["203.0.113.9"]) == (11, 1)
    limits.release("198.51.100.1")  # the evicted session ends
    assert limits.total == 10
    # A client that already has a session is not let in this way.
    assert limits.eviction_victim("203.0.113.9", svc) is None


def test_nobody_is_evicted_when_no_client_holds_more_than_its_share() -> None:
    svc = service(max_sessions=10, session_reserve=0)
    limits = SessionLimits()
    for i in range(10):  # ten clients with one session each: all at their fair share
        assert limits.admit(f"198.51.100.{i + 1}", svc, 0.0).admitted
    assert limits.eviction_victim("203.0.113.9", svc) is None


def test_message_and_recipient_rates_per_client_and_per_user() -> None:
    service = dataclasses.replace(
        SmtpsConfig(), message_rate_per_client=2, recipient_rate_per_client=3, message_rate_per_user=1
    )
    rates = MailRates()
    # Two messages a minute from one address; the third waits until the first leaves the window.
    assert rates.mail(service, "192.0.2.1", None, 0, 0.0) is None
    assert rates.mail(service, "192.0.2.1", None, 1, 1.0) is None
    assert rates.mail(service, "192.0.2.1", None, 2, 2.0) == "client"
    assert rates.mail(service, "192.0.2.2", None, 0, 2.0) is None  # another client has its own
    assert rates.mail(service, "192.0.2.1", None, 2, RATE_WINDOW_S + 0.5) is None
    # Per user: one a minute, wherever it connects from.
    assert rates.mail(service, "198.51.100.1", "alice", 0, 100.0) is None
    assert rates.mail(service, "198.51.100.2", "alice", 0, 101.0) == "user"
    assert rates.mail(service, "198.51.100.2", "bob", 0, 101.0) is None
    # Recipients: their own count; a refused RCPT does not count.
    for n in range(3):
        assert rates.rcpt(service, "203.0.113.9", None, n, 200.0) is None
    assert rates.rcpt(service, "203.0.113.9", None, 3, 200.0) == "client"
    assert rates.rcpt(service, "203.0.113.9", None, 3, 200.0 + RATE_WINDOW_S) is None


def test_per_session_limits_and_no_limit_by_default() -> None:
    rates = MailRates()
    default = SmtpsConfig()
    assert all(rates.mail(default, "192.0.2.1", None, n, 0.0) is None for n in range(10_000))
    service = dataclasses.replace(default, max_messages_per_session=2, max_recipients_per_session=5)
    assert rates.mail(service, "192.0.2.1", None, 1, 0.0) is None
    assert rates.mail(service, "192.0.2.1", None, 2, 0.0) == "session_messages"
    assert rates.rcpt(service, "192.0.2.1", None, 4, 0.0) is None
    assert rates.rcpt(service, "192.0.2.1", None, 5, 0.0) == "session_recipients"
