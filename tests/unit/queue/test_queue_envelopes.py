"""The envelope store: round trips, updates, filters, read-only access, failures."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meta1py.queue.envelopes import (
    DeleteMessage,
    DuplicateMessageError,
    Envelope,
    EnvelopeStore,
    InsertEnvelope,
    Recipient,
    RecipientUpdate,
    SetHold,
    UnknownMessageError,
    UpdateRecipients,
    envelope_store_path,
)
from meta1py.queue.errors import QueueStorageError
from meta1py.queue.ids import new_queue_id

_used: set[str] = set()


def fresh_id() -> str:
    # Ids drawn in the same second can collide; in production the content file claims them.
    while (qid := new_queue_id()) in _used:
        pass
    _used.add(qid)
    return qid


def make_envelope(
    *rcpts: str, sender: str = "alice@example.org", hold: bool = False, padding: str = ""
) -> Envelope:
    return Envelope(
        qid=fresh_id(),
        sender=sender,
        arrival_time=time.time(),
        size=1234,
        client_address="127.0.0.1",
        client_helo="client.example.org" + padding,
        hold=hold,
        recipients=tuple(
            Recipient(idx=i, address=a, next_attempt=1000.0 + i)
            for i, a in enumerate(rcpts or ("bob@example.net",))
        ),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EnvelopeStore]:
    with EnvelopeStore(envelope_store_path(tmp_path)) as s:
        yield s


def test_full_round_trip(tmp_path: Path) -> None:
    env = Envelope(
        qid=fresh_id(),
        sender="",
        arrival_time=1_700_000_000.25,
        size=42,
        envid="QQ314159",
        ret="HDRS",
        body="8BITMIME",
        smtputf8=True,
        client_address="::1",
        client_helo="[IPv6:::1]",
        kind="bounce",
        hold=True,
        recipients=(
            Recipient(
                idx=0,
                address="dörte@bücher.example",
                orcpt="utf-8;d\\x{F6}rte@b\\x{FC}cher.example",
                notify=frozenset({"SUCCESS", "DELAY"}),
                status="deferred",
                attempts=3,
                next_attempt=1_700_000_600.5,
                last_attempt=1_700_000_300.0,
                last_reply="451 4.7.1 greylisted",
                destination="smtp:mx.bücher.example",
                dsn_sent=True,
            ),
            Recipient(idx=1, address="x@example.com", notify=frozenset({"NEVER"})),
        ),
    )
    path = envelope_store_path(tmp_path)
    with EnvelopeStore(path) as s:
        s.insert_envelopes([env])
        assert s.get(env.qid) == env
    with EnvelopeStore(path) as s:
        assert s.get(env.qid) == env
        assert list(s) == [env]


def test_get_unknown_and_bad_ids(store: EnvelopeStore) -> None:
    assert store.get(new_queue_id()) is None
    with pytest.raises(ValueError):
        store.get("../etc")


def test_envelope_validation() -> None:
    with pytest.raises(ValueError):
        make_envelope().__class__(qid="bad", sender="", arrival_time=0, size=0)
    with pytest.raises(ValueError):
        Envelope(qid=fresh_id(), sender="", arrival_time=0, size=0)  # no recipients
    with pytest.raises(ValueError):
        Recipient(idx=0, address="a@b", status="lost")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Recipient(idx=0, address="a@b", notify=frozenset({"NEVER", "DELAY"}))
    with pytest.raises(ValueError):
        Envelope(
            qid=fresh_id(),
            sender="",
            arrival_time=0,
            size=0,
            recipients=(Recipient(idx=0, address="a@b"), Recipient(idx=0, address="c@d")),
        )


def test_update_recipients(store: EnvelopeStore) -> None:
    env = make_envelope("a@x.example", "b@y.example")
    store.insert_envelopes([env])
    store.update_recipients(
        env.qid,
        [
            (0, "deferred", 1, 2000.0, "451 try later", "smtp:x.example"),
            RecipientUpdate(1, "delivered", 1, 0.0, "250 ok", "smtp:y.example", last_attempt=5.0),
        ],
    )
    got = store.get(env.qid)
    assert got is not None
    a, b = got.recipients
    assert (a.status, a.attempts, a.next_attempt, a.last_reply, a.destination) == (
        "deferred",
        1,
        2000.0,
        "451 try later",
        "smtp:x.example",
    )
    assert a.last_attempt is None and not a.dsn_sent
    assert b.status == "delivered" and b.last_attempt == 5.0 and b.is_final
    assert not got.is_final
    store.update_recipients(env.qid, [RecipientUpdate(0, "deferred", 1, 2000.0, None, None, dsn_sent=True)])
    got = store.get(env.qid)
    assert got is not None and got.recipients[0].dsn_sent
    assert got.recipients[1].last_attempt == 5.0  # untouched


def test_update_unknown_changes_nothing(store: EnvelopeStore) -> None:
    env = make_envelope("a@x.example")
    store.insert_envelopes([env])
    with pytest.raises(UnknownMessageError):
        store.update_recipients(
            env.qid, [(0, "delivered", 1, 0.0, "250", None), (7, "delivered", 1, 0.0, "250", None)]
        )
    assert store.get(env.qid) == env
    with pytest.raises(UnknownMessageError):
        store.update_recipients(fresh_id(), [(0, "delivered", 1, 0.0, None, None)])
    with pytest.raises(ValueError):
        store.update_recipients(env.qid, [(0, "gone", 1, 0.0, None, None)])


def test_duplicate_insert_is_all_or_nothing(store: EnvelopeStore) -> None:
    first = make_envelope()
    store.insert_envelopes([first])
    other = make_envelope()
    with pytest.raises(DuplicateMessageError):
        store.insert_envelopes([other, first])
    assert store.get(other.qid) is None
    assert store.all_ids() == {first.qid}


def test_apply_isolates_failing_operations(store: EnvelopeStore) -> None:
    kept = make_envelope()
    store.insert_envelopes([kept])
    new = make_envelope()
    outcomes = store.apply(
        [
            InsertEnvelope(kept),
            InsertEnvelope(new),
            UpdateRecipients(fresh_id(), (RecipientUpdate(0, "delivered", 1, 0, None, None),)),
            SetHold(new.qid, True),
            SetHold(fresh_id(), True),
            DeleteMessage(fresh_id()),
        ]
    )
    assert isinstance(outcomes[0], DuplicateMessageError)
    assert outcomes[1] is None
    assert isinstance(outcomes[2], UnknownMessageError)
    assert outcomes[3:] == [True, False, False]
    got = store.get(new.qid)
    assert got is not None and got.hold


def test_hold_delete_and_recovery_queries(store: EnvelopeStore) -> None:
    done, live, gone = make_envelope(), make_envelope(), make_envelope()
    store.insert_envelopes([done, live, gone])
    store.update_recipients(done.qid, [(0, "delivered", 1, 0.0, "250 ok", "smtp:x")])
    assert store.set_hold(live.qid, True)
    assert not store.set_hold(fresh_id(), True)
    assert store.delete_messages([gone.qid, fresh_id()]) == 1
    assert [e.qid for e in store.load_unfinished()] == [live.qid]
    assert store.finished_ids() == [done.qid]
    assert store.all_ids() == {done.qid, live.qid}


def test_list_filters(store: EnvelopeStore) -> None:
    active = make_envelope("a@Example.NET", sender="Alice@Example.org")
    deferred = make_envelope("b@other.example", "c@example.net", sender="")
    held = make_envelope("d@example.net", sender="carol@example.org", hold=True)
    store.insert_envelopes([active, deferred, held])
    store.update_recipients(deferred.qid, [(1, "deferred", 1, 9.0, "421 busy", "smtp:x")])

    def ids(**kw: object) -> list[str]:
        return [e.qid for e in store.list_envelopes(**kw)]  # type: ignore[arg-type]

    assert ids() == [active.qid, deferred.qid, held.qid]
    assert ids(state="active") == [active.qid]
    assert ids(state="deferred") == [deferred.qid]
    assert ids(state="hold") == [held.qid]
    assert ids(domain="example.net") == [active.qid, deferred.qid, held.qid]
    assert ids(domain="OTHER.example.") == [deferred.qid]
    assert ids(domain="net") == []
    assert ids(sender="alice@example.ORG") == [active.qid]
    assert ids(sender="<>") == [deferred.qid] == ids(sender="")
    assert ids(state="deferred", domain="example.net", sender="") == [deferred.qid]
    assert ids(state="active", sender="") == []
    with pytest.raises(ValueError):
        store.list_envelopes(state="frozen")  # type: ignore[arg-type]


def test_readonly_while_writer_is_open(tmp_path: Path) -> None:
    path = envelope_store_path(tmp_path)
    with pytest.raises(FileNotFoundError):
        EnvelopeStore(path, readonly=True)
    writer = EnvelopeStore(path)
    first = make_envelope()
    writer.insert_envelopes([first])
    with EnvelopeStore(path, readonly=True) as reader:
        assert reader.get(first.qid) == first
        second = make_envelope()
        writer.insert_envelopes([second])
        assert reader.all_ids() == {first.qid, second.qid}
        with pytest.raises(QueueStorageError):
            reader.insert_envelopes([make_envelope()])
        with pytest.raises(QueueStorageError):
            reader.set_hold(first.qid, True)
    writer.close()
    with EnvelopeStore(path, readonly=True) as reader:
        assert len(reader.all_ids()) == 2


def test_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QueueStorageError):
        EnvelopeStore(path)


def _fill_until_full(store: EnvelopeStore) -> list[Envelope]:
    stored: list[Envelope] = []
    for _ in range(10_000):
        batch = [make_envelope(padding="x" * 2000) for _ in range(5)]
        try:
            store.insert_envelopes(batch)
        except QueueStorageError as exc:
            assert exc.disk_full, exc
            return stored
        stored.extend(batch)
    raise AssertionError("the store never filled up")


def _check_consistent(store: EnvelopeStore, stored: list[Envelope]) -> None:
    assert store.all_ids() == {e.qid for e in stored}
    assert store.load_unfinished() == sorted(stored, key=lambda e: (e.arrival_time, e.qid))
    assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_database_full_fails_whole_batch(store: EnvelopeStore) -> None:
    # max_page_count makes SQLite report SQLITE_FULL exactly as a full disk would.
    pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
    store.connection.execute(f"PRAGMA max_page_count = {pages + 20}")
    stored = _fill_until_full(store)
    assert stored
    _check_consistent(store, stored)
    store.connection.execute("PRAGMA max_page_count = 1000000")
    extra = make_envelope()
    store.insert_envelopes([extra])
    _check_consistent(store, [*stored, extra])


@pytest.fixture
def tiny_tmpfs(mount_tmpfs: Callable[[str], Path]) -> Path:
    """A 512 KiB tmpfs (root only)."""
    return mount_tmpfs("size=512k")


def test_disk_full_on_a_real_filesystem(tiny_tmpfs: Path) -> None:
    path = envelope_store_path(tiny_tmpfs)
    store = EnvelopeStore(path)
    stored = _fill_until_full(store)
    assert stored
    _check_consistent(store, stored)
    store.close()
    with EnvelopeStore(path, readonly=True) as reader:
        _check_consistent(reader, stored)
