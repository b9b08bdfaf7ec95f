"""The store of captured deliveries (meta1py.testmode.capture) and the virtual clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from meta1py import clock
from meta1py.queue.ids import new_queue_id
from meta1py.testmode.capture import CaptureRecord, CaptureStore, is_capture_id


def _record(to: str = "b@example.net") -> CaptureRecord:
    return CaptureRecord(
        qid=new_queue_id(),
        mail_from="a@example.test",
        rcpt_to=[to],
        destination="smtp:example.net",
        transport="smtp",
        recipients=[{"address": to, "status": "delivered", "reply": "250 2.0.0 OK"}],
        transcript=[("S", "220 example.net ESMTP"), ("C", "EHLO mx.test")],
    )


def test_a_capture_is_stored_listed_read_and_cleared(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "messages")
    assert store.ids() == []
    first = store.add(_record(), b"Subject: one\r\n\r\nbody\r\n")
    second = store.add(_record("c@example.net"), b"Subject: two\r\n\r\nbody\r\n")
    assert store.ids() == sorted([first, second])
    record = store.record(first)
    assert record is not None and record["rcpt_to"] == ["b@example.net"]
    assert record["size"] == len(b"Subject: one\r\n\r\nbody\r\n")
    assert record["transcript"][0] == ["S", "220 example.net ESMTP"]
    assert store.message(second) == b"Subject: two\r\n\r\nbody\r\n"
    assert [r["id"] for r in store.records()] == store.ids()
    assert store.clear() == 2
    assert store.ids() == [] and store.record(first) is None


@pytest.mark.parametrize("bad", ["../etc/passwd", "", "1-2-3", "0001-NOTAQUEUEID-abc", "x" * 100, None])
def test_ids_that_could_name_another_file_are_refused(tmp_path: Path, bad: object) -> None:
    store = CaptureStore(tmp_path)
    assert not is_capture_id(bad)
    if isinstance(bad, str):
        assert store.record(bad) is None and store.message(bad) is None


def test_the_virtual_clock_moves_forward_only() -> None:
    try:
        before = clock.now()
        clock.set_offset(3600)
        assert clock.now() - before >= 3600 and clock.offset() == 3600
        with pytest.raises(ValueError):
            clock.set_offset(-1)
        with pytest.raises(ValueError):
            clock.set_offset(float("nan"))
    finally:
        clock.set_offset(0)
