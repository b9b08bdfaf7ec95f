"""Fuzz-style: garbage and mutated samples raise nothing but ConfigErrors."""

from __future__ import annotations

from conf_testdata import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meta1py.conf import ConfigErrors, parse_config

SAMPLE = (ROOT / "etc" / "meta1.conf").read_text()
_PIECES = ["{", "}", ";", "=", ",", '"', "\\", "#", "\n", " ", "include", "smtps", "x", "::1", "10M"]


def _parse_quietly(text: str) -> None:
    try:
        parse_config(text, "fuzz.conf")
    except ConfigErrors as e:
        assert e.errors
        for err in e.errors:
            assert err.line >= 0 and err.message
            str(err)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _parse_quietly(data.decode("utf-8", errors="replace"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    _parse_quietly(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(SAMPLE)), st.integers(0, 8), st.sampled_from(_PIECES)),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_sample(edits: list[tuple[int, int, str]]) -> None:
    text = SAMPLE
    for pos, cut, piece in edits:
        pos = min(pos, len(text))
        text = text[:pos] + piece + text[pos + cut :]
    _parse_quietly(text)
