"""The decisions of stage checks and the replies they become (meta1py.smtps.stages), without a session."""

from __future__ import annotations

import pytest

from meta1py.smtp.replies import Reply
from meta1py.smtps.stages import (
    ACCEPT,
    CONTINUE,
    STAGES,
    Checks,
    Decision,
    Discard,
    Quarantine,
    Refuse,
    StageContext,
    TempFail,
    mark_of,
    refusal,
    stronger,
)

R550 = Reply(550, "5.7.1", ("No",))
R450 = Reply(450, "4.7.1", ("Later",))


@pytest.mark.parametrize("code", [200, 250, 354, 399])
def test_a_check_cannot_answer_with_a_success(code: int) -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Refuse(Reply(code, None, ("x",)))


def test_tempfail_takes_only_a_4xx() -> None:
    with pytest.raises(ValueError, match="4xx"):
        TempFail(R550)
    assert TempFail(R450).reply is R450


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "connect"])
def test_refusing_replies_after_the_greeting(stage: str) -> None:
    assert refusal(stage, Refuse(R550), "mx") is R550  # type: ignore[arg-type]
    assert refusal(stage, Refuse(R450), "mx") is R450  # type: ignore[arg-type]
    assert refusal(stage, TempFail(R450), "mx") is R450  # type: ignore[arg-type]
    assert str(refusal(stage, TempFail(), "mx")) == (  # type: ignore[arg-type]
        "451 4.7.1 Temporarily refused by policy, try again later"
    )


def test_at_connect_a_temporary_refusal_is_421() -> None:
    # RFC 5321 §3.1: the greeting is 220, 554 (then only QUIT) or 421 (then the session ends).
    assert refusal("connect", Refuse(R550), "mx") is R550
    assert refusal("connect", Refuse(R450), "mx") == Reply(421, "4.7.1", ("Later",))
    assert refusal("connect", TempFail(), "mx") == Reply(
        421, "4.7.0", ("mx Service temporarily unavailable, closing connection",)
    )


@pytest.mark.parametrize("decision", [CONTINUE, ACCEPT, Discard(), Quarantine()])
def test_decisions_that_do_not_refuse(decision: Decision) -> None:
    for stage in STAGES:
        assert refusal(stage, decision, "mx") is None


def test_marks_discard_wins() -> None:
    d, q = Discard("d"), Quarantine("q")
    assert mark_of(d) is d and mark_of(q) is q and mark_of(ACCEPT) is None and mark_of(Refuse(R550)) is None
    assert stronger(None, None) is None
    assert stronger(q, None) is q and stronger(None, q) is q
    assert stronger(q, d) is d and stronger(d, q) is d
    assert stronger(q, Quarantine("later")) is q  # the first reason is kept


def test_checks_then_keeps_each_stage_in_order() -> None:
    async def a(context: StageContext) -> Decision:
        return CONTINUE

    async def b(context: StageContext) -> Decision:
        return CONTINUE

    both = Checks(mail=(a,), eom=(a,)).then(Checks(mail=(b,), connect=(b,)))
    assert both == Checks(connect=(b,), mail=(a, b), eom=(a,))
