"""qmgr's side of ``meta1 queue`` commands sent in batches: ``QueueSelectRequest`` pages through
the messages a command would touch, and ``QueueControlRequest.among`` does to a batch of them
what one request for the whole selection would have done (the harness of test_qmgr_life: a real
queue directory, in-process peers behind real RPC)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from test_qmgr_life import Harness, accept, refuse_4xx, running_qmgr, until

from meta1py.queue.content import content_path
from meta1py.rpc.messages import (
    QUEUE_SELECT_MAX_IDS,
    QueueControlReply,
    QueueControlRequest,
    QueueSelectRequest,
    SmtpcDeliveryReply,
    SmtpcDeliveryRequest,
    SmtpcRecipientResult,
    SmtpReplyValue,
)


async def select(
    h: Harness, *, to: str | None = None, all_deferred: bool = False, limit: int = 1000
) -> list[str]:
    """Every id of a selection, page by page, as meta1 queue asks for it; checks the pages."""
    found: list[str] = []
    after = ""
    while True:
        page = await h.qmgr.call(
            QueueSelectRequest(to_domain=to, all_deferred=all_deferred, after=after, limit=limit), timeout=10
        )
        assert list(page.qids) == sorted(page.qids) and all(q > after for q in page.qids)
        assert len(page.qids) <= limit
        found += page.qids
        if not page.more:
            return found
        assert len(page.qids) == limit
        after = page.qids[-1]


async def control(
    h: Harness, action: str, among: tuple[str, ...], *, to: str | None = None, all_deferred: bool = False
) -> QueueControlReply:
    request = QueueControlRequest(
        action=action,  # type: ignore[arg-type]
        qids=(),
        to_domain=to,
        all_deferred=all_deferred,
        among=among,
    )
    return await h.qmgr.call(request, timeout=10)


async def by_domain(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
    """smtpc: done.test accepts, slow.test never answers (its message stays in delivery),
    every other domain answers 451."""
    if any(r.address.endswith("@slow.test") for r in request.recipients):
        await trio.sleep_forever()
    results = []
    for r in request.recipients:
        ok = r.address.endswith("@done.test")
        results.append(
            SmtpcRecipientResult(
                idx=r.idx,
                status="ok" if ok else "temp",
                reply=SmtpReplyValue(code=250 if ok else 451, enhanced="2.0.0" if ok else "4.2.1", text="x"),
                remote_mta="mx.remote.test",
            )
        )
    return SmtpcDeliveryReply(results=tuple(results), session_failed=False)


@pytest.mark.deadline(60)
async def test_selection_pages_match_what_one_request_would_touch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, by_domain) as h:
        remote = {await h.submit((f"u{i}@remote.test",)) for i in range(5)}
        mixed = await h.submit(("x@done.test", "y@other.test"))  # x delivered, y deferred
        busy = await h.submit(("z@slow.test",))  # in delivery: queued, not deferred
        await until(lambda: len(maillog("deferred")) == 6, "six deferred recipients")
        await until(lambda: len(maillog("delivered")) == 1, "one delivered recipient")

        every = await select(h, limit=2)  # four pages of two
        assert sorted(every) == every and set(every) == remote | {mixed, busy}
        assert set(await select(h, all_deferred=True, limit=3)) == remote | {mixed}
        # The domain as qmgr compares it: case-insensitive, pending recipients only.
        assert await select(h, to="REMOTE.test") == sorted(remote)
        assert await select(h, to="other.test") == [mixed]
        assert await select(h, to="done.test") == []
        assert await select(h, to="slow.test") == [busy]
        assert await select(h, to="slow.test", all_deferred=True) == []
        # A limit beyond the cap is the cap; below one, one.
        capped = await h.qmgr.call(
            QueueSelectRequest(to_domain=None, all_deferred=False, after="", limit=10**9), timeout=10
        )
        assert len(capped.qids) == 7 and not capped.more and QUEUE_SELECT_MAX_IDS == 20_000
        one = await h.qmgr.call(
            QueueSelectRequest(to_domain=None, all_deferred=False, after="", limit=0), timeout=10
        )
        assert len(one.qids) == 1 and one.more


@pytest.mark.deadline(60)
async def test_a_batch_touches_only_its_ids_that_still_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_4xx) as h:
        a, b, c = [await h.submit((f"u{i}@remote.test",)) for i in range(3)]
        other = await h.submit(("v@other.test",))
        await until(lambda: len(maillog("deferred")) == 4, "four deferred messages")
        gone = "AAAAAAAAAAAA"  # selected once, deleted since: skipped, not "missing"

        # Only a and b of this batch are deferred for remote.test; c is in a later batch.
        reply = await control(h, "delete", (a, other, gone, b, a), to="remote.test", all_deferred=True)
        assert (reply.count, reply.missing) == (2, ())
        assert set(h.manager.messages) == {c, other}
        assert not content_path(h.queue_dir, a).exists() and content_path(h.queue_dir, c).exists()
        assert len(maillog("removed")) == 2

        # A batch with the same test as one whole request: flush c and other, not a deleted one.
        h.smtpc.answer = accept
        reply = await control(h, "flush", (a, c, other))
        assert (reply.count, reply.missing) == (2, ())
        await until(lambda: not h.manager.messages, "the flushed messages to be delivered")


@pytest.mark.deadline(60)
async def test_named_ids_are_still_reported_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_4xx) as h:
        qid = await h.submit(("u@remote.test",))
        await until(lambda: len(maillog("deferred")) == 1, "the message to be deferred")
        # qids win over among, as they win over to_domain and all_deferred.
        request = QueueControlRequest(
            action="hold", qids=(qid, "AAAAAAAAAAAA"), to_domain=None, all_deferred=False, among=(qid,)
        )
        reply = await h.qmgr.call(request, timeout=10)
        assert (reply.count, reply.missing) == (1, ("AAAAAAAAAAAA",))
