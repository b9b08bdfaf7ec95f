"""Greylisting (meta1py.smar.greylist): the pure decision, then the SQLite store with a fake clock,
and the broken databases smar must survive (locked, corrupt, foreign, unwritable, full)."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meta1py.smar import greylist
from meta1py.smar.greylist import (
    BUSY_TIMEOUT_S,
    RENEW_INTERVAL_S,
    GreyDecision,
    Greylist,
    GreylistUnavailableError,
    GreyPolicy,
    TripletState,
    normalize_address,
    target_network,
)

T0 = 1_700_000_000.0
POLICY = GreyPolicy(delay_s=300, retry_window_s=2 * 86400, whitelist_expiry_s=35 * 86400)


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def grey(tmp_path: Path, clock: Clock) -> Iterator[Greylist]:
    with Greylist(tmp_path / "greylist.db", POLICY, clock=clock) as store:
        yield store


# -- the pure part ----------------------------------------------------------------------------


def test_the_triplet_is_the_client_network_and_the_normalized_addresses() -> None:
    policy = GreyPolicy()
    assert policy.network_of("192.0.2.77") == "192.0.2.0/24"
    assert policy.network_of("::ffff:192.0.2.77") == "192.0.2.0/24"  # IPv4-mapped counts as IPv4
    assert policy.network_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert policy.network_of("unknown") is None
    assert GreyPolicy(ipv4_netmask=32, ipv6_netmask=48).network_of("2001:db8:1:2::9") == "2001:db8:1::/48"
    assert GreyPolicy(ipv4_netmask=32).network_of("192.0.2.77") == "192.0.2.77/32"
    t = policy.triplet("192.0.2.1", "<Alice@Example.ORG>", " Bob@Example.net ")
    assert t is not None and (t.sender, t.recipient) == ("alice@example.org", "bob@example.net")
    assert normalize_address("") == normalize_address("<>") == normalize_address(" < > ") == "<>"
    assert policy.triplet("unknown", "a@b", "c@d") is None


def test_decide_new_early_retried_whitelisted() -> None:
    net = "192.0.2.0/24"
    first = POLICY.decide(net, T0, None, None)
    assert first.decision == GreyDecision("defer", "new", net, 300)
    assert first.triplet == TripletState(T0, T0, 1, False, T0 + 2 * 86400) and first.whitelist_until is None
    assert first.triplet is not None
    early = POLICY.decide(net, T0 + 100.5, None, first.triplet)
    assert early.decision == GreyDecision("defer", "early", net, 200)  # 199.5 s left, rounded up
    assert early.triplet is not None and early.triplet.attempts == 2
    assert early.triplet.expires == first.triplet.expires  # the window runs from the first attempt
    late = POLICY.decide(net, T0 + 300, None, early.triplet)
    assert late.decision == GreyDecision("pass", "retried", net)
    assert late.triplet is not None and late.triplet.passed and late.whitelist_until == T0 + 300 + 35 * 86400
    # Whitelisted: passes without touching the triplet; renewed once RENEW_INTERVAL_S has passed.
    until = T0 + 300 + 35 * 86400
    soon = POLICY.decide(net, T0 + 301, until, None)
    assert soon.decision.reason == "whitelisted" and soon.triplet is None and soon.whitelist_until is None
    later = POLICY.decide(net, T0 + 300 + RENEW_INTERVAL_S, until, None)
    assert later.whitelist_until == until + RENEW_INTERVAL_S
    # A deferred triplet not retried within the window is forgotten: the next attempt is new.
    stale = POLICY.decide(net, T0 + 2 * 86400, None, first.triplet)
    assert stale.decision.reason == "new"
    # delay 0: the first attempt is still deferred (by "1 second"), the retry passes.
    zero = GreyPolicy(delay_s=0)
    assert zero.decide(net, T0, None, None).decision.retry_in_s == 1


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        GreyPolicy(ipv4_netmask=33)
    with pytest.raises(ValueError):
        GreyPolicy(retry_window_s=0)


# -- the store --------------------------------------------------------------------------------


def test_first_attempt_deferred_retry_passes_and_whitelists_the_network(grey: Greylist, clock: Clock) -> None:
    assert grey.check("192.0.2.7", "a@example.org", "b@example.net") == GreyDecision(
        "defer", "new", "192.0.2.0/24", 300
    )
    clock.advance(120)
    assert grey.check("192.0.2.7", "a@example.org", "b@example.net").retry_in_s == 180
    clock.advance(180)
    # The retry may come from another host of the sender's pool (same /24).
    assert grey.check("192.0.2.8", "A@Example.org", "<b@example.net>") == GreyDecision(
        "pass", "retried", "192.0.2.0/24"
    )
    # Now the whole network passes, whatever the sender and recipient.
    assert grey.check("192.0.2.200", "", "someone@example.net").reason == "whitelisted"
    assert grey.check("192.0.3.1", "a@example.org", "b@example.net").reason == "new"
    entries = grey.entries()
    assert [(t.network, t.sender, t.state, t.attempts) for t in entries.triplets] == [
        ("192.0.2.0/24", "a@example.org", "passed", 3),
        ("192.0.3.0/24", "a@example.org", "deferred", 1),
    ]
    assert [(n.network, n.expires) for n in entries.networks] == [("192.0.2.0/24", clock.now + 35 * 86400)]


def test_the_state_is_durable(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "greylist.db"
    with Greylist(path, POLICY, clock=clock) as first:
        first.check("192.0.2.7", "a@x.example", "b@y.example")
    clock.advance(301)
    with Greylist(path, POLICY, clock=clock) as second:
        assert second.check("192.0.2.7", "a@x.example", "b@y.example").reason == "retried"
    with Greylist(path, POLICY, clock=clock) as third:
        assert third.check("192.0.2.1", "c@x.example", "d@y.example").reason == "whitelisted"


def test_ipv6_clients_are_grouped_by_64(grey: Greylist, clock: Clock) -> None:
    assert grey.check("2001:db8::1", "<>", "postmaster@example.net").network == "2001:db8::/64"
    clock.advance(300)
    assert grey.check("2001:db8::ffff:1", "", "postmaster@example.net").reason == "retried"
    assert grey.check("2001:db8::2", "x@example.org", "y@example.net").reason == "whitelisted"
    assert grey.check("2001:db8:0:1::1", "x@example.org", "y@example.net").reason == "new"
    assert grey.entries().triplets[0].sender == "<>"


def test_a_client_without_an_ip_address_is_not_greylisted(tmp_path: Path) -> None:
    store = Greylist(tmp_path / "none" / "greylist.db")  # never opened: its directory does not exist
    assert store.check("unknown", "a@b.example", "c@d.example") == GreyDecision("pass", "no_ip", "")


def test_entries_expire(grey: Greylist, clock: Clock) -> None:
    grey.check("192.0.2.1", "a@x.example", "b@y.example")  # never retried
    grey.check("198.51.100.1", "c@x.example", "d@y.example")
    clock.advance(300)
    grey.check("198.51.100.1", "c@x.example", "d@y.example")  # passes: 198.51.100.0/24 whitelisted
    clock.advance(2 * 86400 - 300)  # the first triplet's retry window is over
    assert [t.network for t in grey.entries().triplets] == ["198.51.100.0/24"]
    assert grey.check("192.0.2.1", "a@x.example", "b@y.example").reason == "new"
    clock.advance(35 * 86400)  # no message from 198.51.100.0/24 for whitelist_expiry
    assert grey.check("198.51.100.1", "c@x.example", "d@y.example").reason == "new"
    # The sweeps (at most once a minute, inside checks) deleted the rows, not only hid them.
    clock.advance(greylist.EXPIRY_INTERVAL_S)
    grey.check("203.0.113.1", "e@x.example", "f@y.example")
    with sqlite3.connect(grey.path) as raw:
        assert raw.execute("SELECT count(*) FROM networks").fetchone() == (0,)
        assert sorted(r[0] for r in raw.execute("SELECT network FROM triplets")) == [
            "198.51.100.0/24",
            "203.0.113.0/24",
        ]


def test_each_message_renews_the_whitelisting(grey: Greylist, clock: Clock) -> None:
    grey.check("192.0.2.1", "a@x.example", "b@y.example")
    clock.advance(300)
    grey.check("192.0.2.1", "a@x.example", "b@y.example")
    for _ in range(3):
        clock.advance(30 * 86400)
        assert grey.check("192.0.2.9", "z@x.example", "b@y.example").reason == "whitelisted"
    assert grey.entries().networks[0].expires == clock.now + 35 * 86400


def test_a_backlog_of_expired_rows_is_swept_in_batches(
    grey: Greylist, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        grey.check(f"192.0.{i}.1", "a@x.example", "b@y.example")
    monkeypatch.setattr(greylist, "EXPIRY_BATCH", 2)
    clock.advance(3 * 86400)

    def rows() -> int:
        with sqlite3.connect(grey.path) as raw:
            count: int = raw.execute("SELECT count(*) FROM triplets").fetchone()[0]
            return count

    grey.check("203.0.113.1", "a@x.example", "b@y.example")
    assert rows() == 4  # 5 expired - 2 swept + 1 new
    grey.check("203.0.113.1", "a@x.example", "b@y.example")  # a full batch: swept again at once
    assert rows() == 2
    grey.check("203.0.113.1", "a@x.example", "b@y.example")
    assert rows() == 1


def test_the_database_file_wal_mode_and_version_row(grey: Greylist) -> None:
    grey.check("192.0.2.1", "a@x.example", "b@y.example")
    assert stat.S_IMODE(grey.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{grey.path}-wal").stat().st_mode) == 0o600
    with sqlite3.connect(grey.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        version = raw.execute("SELECT value FROM greylist_meta WHERE name = 'schema_version'").fetchone()
        assert version == (str(greylist.SCHEMA_VERSION),)


def test_calls_from_several_threads_take_turns(grey: Greylist, clock: Clock) -> None:
    barrier = threading.Barrier(8)
    results: list[GreyDecision] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(10):
                results.append(grey.check("192.0.2.1", "a@x.example", "b@y.example"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 80
    assert sorted(d.reason for d in results) == ["early"] * 79 + ["new"]
    assert grey.entries().triplets[0].attempts == 80


# -- meta1 grey's part ------------------------------------------------------------------------


def test_remove_by_address_network_and_addresses(grey: Greylist, clock: Clock) -> None:
    for client, sender in (
        ("192.0.2.1", "a@x.example"),
        ("192.0.2.2", "c@x.example"),
        ("10.1.2.3", "a@x.example"),
    ):
        grey.check(client, sender, "b@y.example")
    clock.advance(300)
    grey.check("192.0.2.1", "a@x.example", "b@y.example")  # 192.0.2.0/24 whitelisted
    removed = grey.remove("192.0.2.99", sender="A@x.example")
    assert (removed.triplets, removed.networks) == (1, 0)  # a sender filter leaves the network
    assert grey.remove("192.0.2.0/16") == greylist.Removed(1, 1)  # overlaps the stored /24
    assert [t.network for t in grey.entries().triplets] == ["10.1.2.0/24"]
    assert grey.remove("10.1.2.3/32", recipient="other@y.example") == greylist.Removed(0, 0)
    assert grey.remove("::ffff:10.1.2.3") == greylist.Removed(1, 0)
    with pytest.raises(ValueError, match="not an IP address or network"):
        grey.remove("mail.example.com")
    assert str(target_network("2001:db8::1")) == "2001:db8::1/128"


def test_a_read_only_store_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "greylist.db"
    with Greylist(path, readonly=True) as store:
        assert store.entries() == greylist.GreyEntries((), ())
    assert list(tmp_path.iterdir()) == []


# -- broken databases: GreylistUnavailableError, never another exception ----------------------


def test_a_locked_database_fails_within_the_busy_timeout(grey: Greylist) -> None:
    grey.check("192.0.2.1", "a@x.example", "b@y.example")
    holder = sqlite3.connect(grey.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(GreylistUnavailableError) as info:
            grey.check("192.0.2.1", "a@x.example", "b@y.example")
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert info.value.kind == "locked" and "locked" in str(info.value) and str(grey.path) in str(info.value)
    assert BUSY_TIMEOUT_S <= elapsed < BUSY_TIMEOUT_S + 0.5
    # Released: the next check works on the same object.
    assert grey.check("192.0.2.1", "a@x.example", "b@y.example").reason == "early"


def test_a_call_stuck_behind_another_fails_instead_of_queueing(
    grey: Greylist, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(greylist, "LOCK_WAIT_S", 0.05)
    with grey._lock:  # another thread's call, still running
        with pytest.raises(GreylistUnavailableError) as info:
            grey.check("192.0.2.1", "a@x.example", "b@y.example")
    assert info.value.kind == "locked" and "has not finished" in str(info.value)
    assert grey.check("192.0.2.1", "a@x.example", "b@y.example").reason == "new"


def test_a_corrupt_file_is_unavailable_until_it_is_moved_away(grey: Greylist) -> None:
    grey.path.write_bytes(os.urandom(8192))
    for _ in range(2):  # and again: the object is still usable, not wedged
        with pytest.raises(GreylistUnavailableError) as info:
            grey.check("192.0.2.1", "a@x.example", "b@y.example")
        assert info.value.kind == "corrupt" and "move it away" in str(info.value)
    with pytest.raises(GreylistUnavailableError):
        grey.entries()
    grey.path.rename(grey.path.with_suffix(".broken"))
    assert grey.check("192.0.2.1", "a@x.example", "b@y.example").reason == "new"


def test_a_damaged_page(grey: Greylist) -> None:
    grey.check("192.0.2.1", "a@x.example", "b@y.example")
    grey.close()
    assert not Path(f"{grey.path}-wal").exists()  # the last connection to close checkpointed it
    data = bytearray(grey.path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the first page's b-tree header and cells
    grey.path.write_bytes(bytes(data))
    with pytest.raises(GreylistUnavailableError) as info:
        grey.check("192.0.2.1", "a@x.example", "b@y.example")
    assert info.value.kind in ("corrupt", "io")


def test_a_foreign_database_or_version_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE messages (x)")
    with pytest.raises(GreylistUnavailableError, match="not a greylist database") as info:
        Greylist(foreign).check("192.0.2.1", "a@x.example", "b@y.example")
    assert info.value.kind == "corrupt"
    newer = tmp_path / "newer.db"
    Greylist(newer).check("192.0.2.1", "a@x.example", "b@y.example")
    with sqlite3.connect(newer) as raw:
        raw.execute("UPDATE greylist_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(GreylistUnavailableError, match="schema version 99"):
        Greylist(newer).check("192.0.2.1", "a@x.example", "b@y.example")


def test_a_missing_or_unwritable_directory(tmp_path: Path) -> None:
    with pytest.raises(GreylistUnavailableError) as info:
        Greylist(tmp_path / "missing" / "greylist.db").check("192.0.2.1", "a@x.example", "b@y.example")
    assert info.value.kind == "io" and "No such file or directory" in str(info.value)


def test_a_full_disk(mount_tmpfs: Callable[[str], Path]) -> None:
    point = mount_tmpfs("size=512k")
    grey = Greylist(point / "greylist.db", POLICY, clock=Clock())
    grey.check("192.0.2.1", "a@x.example", "b@y.example")
    with pytest.raises(OSError), open(point / "filler", "wb", buffering=0) as filler:
        while True:
            filler.write(b"\0" * 4096)
    with pytest.raises(GreylistUnavailableError) as info:
        for i in range(2000):  # until the WAL needs a page the disk does not have
            grey.check(f"10.{i // 250}.{i % 250}.1", f"s{i}@x.example", "b@y.example")
    assert info.value.kind == "io"


def test_peek_tells_what_check_would_do_and_writes_nothing(
    tmp_path: Path, grey: Greylist, clock: Clock
) -> None:
    # meta1 explain: read-only, even before the database exists.
    with Greylist(tmp_path / "greylist.db", POLICY, clock=clock, readonly=True) as reader:
        assert reader.peek("192.0.2.7", "a@x.test", "b@y.test").action == "defer"
        assert not (tmp_path / "greylist.db").exists()
        assert grey.check("192.0.2.7", "a@x.test", "b@y.test").reason == "new"
        clock.advance(POLICY.delay_s)
        assert reader.peek("192.0.2.7", "a@x.test", "b@y.test").reason == "retried"
        assert reader.peek("192.0.2.7", "a@x.test", "b@y.test").reason == "retried"  # nothing written
    assert grey.check("192.0.2.9", "c@x.test", "d@y.test").reason == "new"  # not whitelisted yet


def test_a_replaced_database_file_is_opened_afresh(tmp_path: Path, grey: Greylist) -> None:
    assert grey.check("192.0.2.7", "a@x.test", "b@y.test").action == "defer"
    path = tmp_path / "greylist.db"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a database\n" * 500)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(garbage, path)
    with pytest.raises(GreylistUnavailableError) as broken:
        grey.check("192.0.2.7", "a@x.test", "b@y.test")
    assert broken.value.kind == "corrupt"
    path.rename(tmp_path / "greylist.db.broken")  # the operator moves it away: a new database
    assert grey.check("192.0.2.7", "a@x.test", "b@y.test").reason == "new"
