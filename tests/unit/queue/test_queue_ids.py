"""Queue ids: format, strict validation, time order, randomness."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meta1py.queue.ids import ALPHABET, SUFFIXES, is_queue_id, new_queue_id, queue_id_time


def test_format() -> None:
    qid = new_queue_id()
    assert len(qid) == 12
    assert set(qid) <= set(ALPHABET)
    assert not set("0O1IL") & set(ALPHABET)
    assert is_queue_id(qid)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "2GY87QZKPFZ",  # 11
        "2GY87QZKPFZEE",  # 13
        "2gy87qzkpfze",  # lower case
        "2GY87QZKPFZ0",  # lookalike 0
        "2GY87QZKPFZO",
        "2GY87QZKPFZ1",
        "2GY87QZKPFZI",
        "2GY87QZKPFZL",
        "2GY87QZKPFZE\n",
        "../../etc/pas",
        "2GY87Q/KPFZE",
        "2GY87Q.KPFZE",
        "2GY87Q\x00KPFZE",
        "２GY87QZKPFZE",  # full-width digit
        None,
        123456789012,
        b"2GY87QZKPFZE",
    ],
)
def test_rejects(value: object) -> None:
    assert not is_queue_id(value)


@given(st.text(alphabet=ALPHABET, min_size=12, max_size=12))
def test_every_alphabet_string_is_an_id(value: str) -> None:
    assert is_queue_id(value)


@given(st.text(min_size=12, max_size=12).filter(lambda s: not set(s) <= set(ALPHABET)))
def test_any_foreign_character_is_rejected(value: str) -> None:
    assert not is_queue_id(value)


def test_ids_sort_by_arrival_second() -> None:
    now = time.time()
    earlier = [new_queue_id(now + i) for i in range(0, 50)]
    for a, b in itertools.pairwise(earlier):
        assert a < b
    assert queue_id_time(new_queue_id(now)) == float(int(now))


def test_not_sequential_within_a_second() -> None:
    now = time.time()
    ids = [new_queue_id(now) for _ in range(1000)]
    # 27 random bits per second: a handful of collisions at most among 1,000 draws.
    assert len(set(ids)) >= 990
    assert ids != sorted(ids)


def test_clock_out_of_range_is_clamped() -> None:
    assert is_queue_id(new_queue_id(0))
    assert is_queue_id(new_queue_id(1e13))


def test_queue_id_time_rejects_bad_ids() -> None:
    with pytest.raises(ValueError):
        queue_id_time("nope")


@given(
    st.integers(min_value=0, max_value=SUFFIXES - 1),
    st.integers(min_value=1_704_067_200, max_value=1_704_067_200 + 5 * 10**9),  # within 185 years
)
def test_a_fixed_suffix_keeps_the_second_and_sets_the_last_two_symbols(suffix: int, now: int) -> None:
    qid = new_queue_id(now + 0.5, suffix=suffix)
    assert is_queue_id(qid)
    assert qid[-2:] == ALPHABET[suffix // 31] + ALPHABET[suffix % 31]
    assert queue_id_time(qid) == float(now)


def test_ids_with_one_suffix_stay_random() -> None:
    now = time.time()
    ids = [new_queue_id(now, suffix=5) for _ in range(200)]
    # About 17 random bits are left: a collision among 200 draws is rare, several are a bug.
    assert len(set(ids)) >= 198
    assert {qid[-2:] for qid in ids} == {ALPHABET[0] + ALPHABET[5]}


@pytest.mark.parametrize("suffix", [-1, SUFFIXES])
def test_suffix_out_of_range_is_refused(suffix: int) -> None:
    with pytest.raises(ValueError):
        new_queue_id(suffix=suffix)
