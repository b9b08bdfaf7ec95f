"""smtps's stage checks in the process tier: a real Session, in memory, with in-process peers.

Each test runs one :class:`~meta1py.smtps.session.Session` over a trio memory stream. smar is
the real :class:`~meta1py.smar.service.SmarService` (default configuration: ``localhost`` is
local, 127.0.0.0/8 may relay) and qmgr the real :class:`~meta1py.qmgr.manager.QueueManager` on
a queue in ``tmp_path`` (dispatching stopped: nothing is delivered), both reached over
``open_channel_pair``. A check added at one stage returns each kind of decision; the tests read
the replies, the queue and the content files as a client and an operator would.

Timeouts and peers that fail use small in-process peers on the autojump clock (qmgr's store works
in a thread, which the autojump clock cannot wait for).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meta1py.conf import Config, SmtpsConfig
from meta1py.qmgr.manager import QueueManager
from meta1py.queue.envelopes import EnvelopeStore, envelope_store_path
from meta1py.rpc import RpcChannel, open_channel_pair
from meta1py.rpc.messages import (
    QueueEnvelopeCommitReply,
    QueueEnvelopeCommitRequest,
    SmarClientCheckReply,
    SmarClientCheckRequest,
    SmarRecipientCheckReply,
    SmtpReplyValue,
)
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import Router
from meta1py.smar.service import SmarService
from meta1py.smtp.replies import Reply
from meta1py.smtps.limits import SessionLimits
from meta1py.smtps.session import Session, SmtpsContext
from meta1py.smtps.stages import (
    ACCEPT,
    CONTINUE,
    Check,
    Checks,
    Decision,
    Discard,
    Quarantine,
    Refuse,
    Stage,
    StageContext,
    TempFail,
)

# Real-clock tests: a session that hangs fails its test in seconds, not at the default limit.
pytestmark = pytest.mark.deadline(30)

CLIENT = "192.0.2.1"  # not in relay_clients
NO_CHECKS = Checks()


class Client:
    """The client end of a memory stream: send lines, read whole replies."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def reply(self) -> bytes:
        """The next complete reply (all its lines, without the last CRLF), or b"" at EOF."""
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return b"\r\n".join(lines[: i + 1])
            data = await self.stream.receive_some(65536)
            if not data:
                return b""
            self.buf += data

    async def command(self, line: bytes) -> bytes:
        await self.stream.send_all(line + b"\r\n")
        return await self.reply()


async def start_session(nursery: trio.Nursery, ctx: SmtpsContext, client: str = CLIENT) -> Client:
    server_end, client_end = trio.testing.memory_stream_pair()
    session = Session(ctx, ctx.config.smtps[0], server_end, client, "t.1")

    async def run() -> None:
        await session.run()
        await server_end.aclose()

    nursery.start_soon(run)
    return Client(client_end)


def make_config(queue_dir: Path, **smtps: Any) -> Config:
    service = dataclasses.replace(SmtpsConfig(), **smtps)
    return dataclasses.replace(Config(), queue_directory=queue_dir, smtps=(service,))


class NoAgent:
    """smtpc for a qmgr that never dispatches (stop_dispatching): never called."""

    connected = False

    async def call(self, msg: Any, *, timeout: float | None = None) -> Any:
        raise AssertionError(f"qmgr dispatched {msg!r}")


@dataclasses.dataclass
class Mta:
    ctx: SmtpsContext
    queue_dir: Path
    manager: QueueManager

    def content_files(self) -> list[Path]:
        return sorted(self.queue_dir.glob("content/*/*"))

    def queued(self) -> list[str]:
        return sorted(self.manager.messages)


@asynccontextmanager
async def real_peers(tmp_path: Path, checks: Checks = NO_CHECKS, **smtps: Any) -> AsyncIterator[Mta]:
    """An SmtpsContext whose smar and qmgr are the real services, in process (a new queue each)."""
    queue_dir = Path(tempfile.mkdtemp(prefix="queue", dir=tmp_path))
    config = make_config(queue_dir, **smtps)
    smar = SmarService(config, Router(config, Resolver.from_config(config.smar)))
    store = EnvelopeStore(envelope_store_path(queue_dir))
    try:
        async with open_channel_pair(None, smar.handle) as (to_smar, _):
            manager = QueueManager(config, store, to_smar, NoAgent())
            manager.stop_dispatching()
            async with open_channel_pair(None, manager.handle) as (to_qmgr, _):
                ctx = SmtpsContext(
                    config=config,
                    smar=to_smar,
                    qmgr=to_qmgr,
                    limits=SessionLimits(),
                    shutdown=trio.Event(),
                    added_checks=checks,
                )
                yield Mta(ctx, queue_dir, manager)
    finally:
        store.close()


def at(stage: Stage, *checks: Check) -> Checks:
    """Checks for one stage only."""
    return dataclasses.replace(Checks(), **{stage: checks})


def returning(decision: Decision, seen: list[StageContext] | None = None) -> Check:
    async def check(context: StageContext) -> Decision:
        if seen is not None:
            seen.append(context)
        return decision

    return check


REFUSED = Reply(550, "5.7.1", ("Refused by test",))
REFUSED_WIRE = b"550 5.7.1 Refused by test"
OWN_TEMPFAIL = Reply(450, "4.7.1", ("Try later, says the test",))
DECISIONS: dict[str, Decision] = {
    "continue": CONTINUE,
    "accept": ACCEPT,
    "refuse": Refuse(REFUSED),
    "tempfail": TempFail(),
    "tempfail-own": TempFail(OWN_TEMPFAIL),
    "discard": Discard(),
    "quarantine": Quarantine(),
}
TEMPFAIL = b"451 4.7.1 Temporarily refused by policy, try again later"
MESSAGE = b"Subject: stages\r\nX-Test: yes\r\n\r\nbody\r\n."


async def transaction(client: Client) -> list[bytes]:
    """Greeting, EHLO, MAIL, RCPT, DATA, the message: each reply, as far as the session lets it go."""
    answers = [await client.reply()]
    if not answers[0].startswith(b"220"):
        return answers
    for line in (b"EHLO c.example", b"MAIL FROM:<alice@example.net>", b"RCPT TO:<bob@localhost>", b"DATA"):
        answers.append(await client.command(line))
        if answers[-1][:1] not in (b"2", b"3"):
            return answers
    answers.append(await client.command(MESSAGE))
    return answers


USUAL = [b"220 ", b"250-localhost", b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"354 ", b"250 2.0.0 Ok: queued as "]
STEP = {"connect": 0, "helo": 1, "mail": 2, "rcpt": 3, "data": 4, "eoh": 5, "eom": 5}


def prefixes(answers: list[bytes]) -> list[bytes]:
    return [a[: len(u)] for a, u in zip(answers, USUAL, strict=False)]


@pytest.mark.parametrize("kind", list(DECISIONS))
@pytest.mark.parametrize("stage", list(STEP))
async def test_each_decision_at_each_stage(tmp_path: Path, stage: Stage, kind: str) -> None:
    seen: list[StageContext] = []
    async with real_peers(tmp_path, at(stage, returning(DECISIONS[kind], seen))) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            answers = await transaction(client)
            assert len(seen) == 1 and seen[0].stage == stage
            step = STEP[stage]
            if kind in ("continue", "accept", "discard", "quarantine"):
                # The stage is answered as usual; the transaction goes on to its end.
                assert prefixes(answers[:-1]) == USUAL[:-1] and len(answers) == len(USUAL)
            else:
                # Refused at its stage: everything before went as usual, and nothing after.
                assert prefixes(answers[:step]) == USUAL[:step] and len(answers) == step + 1
            last = answers[-1]
            if kind in ("continue", "accept", "discard"):
                assert last.startswith(b"250 2.0.0 Ok: queued as ")
            elif kind == "quarantine":  # no hold at commit: refused, the client keeps the message
                assert last == b"451 4.7.1 Message held by policy, try again later"
            elif kind == "refuse":
                assert last == (b"550 5.7.1 Refused by test")
            elif kind == "tempfail-own":
                # At connect a 4xx can only be a 421 (RFC 5321 §3.1).
                assert last == (b"421" if stage == "connect" else b"450") + b" 4.7.1 Try later, says the test"
            else:
                expected = b"421 4.7.0 localhost Service temporarily unavailable, closing connection"
                assert last == (expected if stage == "connect" else TEMPFAIL)
            if kind in ("continue", "accept"):
                qid = last.rsplit(b" ", 1)[1].decode()
                assert mta.queued() == [qid]
                assert [p.name for p in mta.content_files()] == [qid]
            else:
                # Refused, discarded or quarantined: nothing queued, no content left behind.
                assert mta.queued() == [] and mta.content_files() == []
            if last.startswith(b"421"):
                assert await client.reply() == b""  # the session ended
            else:
                assert await client.command(b"QUIT") == b"221 2.0.0 localhost Bye"


async def test_a_5xx_greeting_leaves_only_quit(tmp_path: Path) -> None:
    async with real_peers(tmp_path, at("connect", returning(Refuse(REFUSED)))) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            assert await client.reply() == b"550 5.7.1 Refused by test"
            assert (await client.command(b"EHLO c.example")).startswith(b"503 ")  # RFC 5321 §3.1
            assert await client.command(b"QUIT") == b"221 2.0.0 localhost Bye"


async def test_a_refused_helo_leaves_the_session_as_it_was(tmp_path: Path) -> None:
    async def no_bad_names(context: StageContext) -> Decision:
        return Refuse(REFUSED) if context.helo == "bad.example" else CONTINUE

    async with real_peers(tmp_path, at("helo", no_bad_names)) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            await client.reply()
            assert (await client.command(b"EHLO good.example")).startswith(b"250-localhost")
            assert (await client.command(b"MAIL FROM:<a@example.net>")).startswith(b"250")
            assert await client.command(b"EHLO bad.example") == b"550 5.7.1 Refused by test"
            # The transaction begun after the good EHLO goes on.
            assert (await client.command(b"RCPT TO:<bob@localhost>")).startswith(b"250")
            await client.command(b"DATA")
            answer = await client.command(MESSAGE)
            assert answer.startswith(b"250 2.0.0 Ok: queued as ")
            qid = answer.rsplit(b" ", 1)[1].decode()
            content = next(p for p in mta.content_files() if p.name == qid).read_bytes()
            assert content.startswith(b"Received: from good.example (unknown [192.0.2.1])\r\n")
            await client.command(b"QUIT")


async def test_the_checks_see_what_is_known_at_each_stage(tmp_path: Path) -> None:
    seen: list[StageContext] = []
    files: list[bytes] = []

    async def record(context: StageContext) -> Decision:
        seen.append(dataclasses.replace(context))
        if context.message is not None:
            files.append(context.message.path.read_bytes())
        return CONTINUE

    everywhere = Checks(*([(record,)] * 7))
    async with real_peers(tmp_path, everywhere) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            answers = await transaction(client)
            assert answers[-1].startswith(b"250 2.0.0 Ok: queued as ")
            await client.command(b"QUIT")
    assert [c.stage for c in seen] == ["connect", "helo", "mail", "rcpt", "data", "eoh", "eom"]
    connect, helo, mail, rcpt, data, eoh, eom = seen
    assert (connect.client_address, connect.helo, connect.tls, connect.authenticated) == (
        CLIENT,
        None,
        None,
        None,
    )
    assert (helo.helo, helo.esmtp, helo.sender) == ("c.example", True, None)
    assert str(mail.sender) == "alice@example.net" and mail.mail_params is not None
    assert str(rcpt.recipient) == "bob@localhost" and rcpt.recipients == ()
    assert rcpt.expanded == ("bob@localhost",)  # smar's answer, set by the recipient check
    assert data.recipients == ("bob@localhost",) and data.headers is None
    assert eoh.headers == b"Subject: stages\r\nX-Test: yes"
    assert eom.headers == eoh.headers and eom.message is not None
    assert eom.message.qid == answers[-1].rsplit(b" ", 1)[1].decode()
    assert files[0].startswith(b"Received: from c.example (unknown [192.0.2.1])\r\n")
    assert files[0].endswith(b"\r\n\r\nbody\r\n") and eom.message.size == len(files[0])


async def test_builtin_checks_come_first_and_accept_ends_a_chain(tmp_path: Path) -> None:
    mail_seen: list[StageContext] = []
    rcpt_seen: list[StageContext] = []
    checks = Checks(
        mail=(returning(CONTINUE, mail_seen),),
        rcpt=(returning(ACCEPT), returning(Refuse(REFUSED), rcpt_seen)),
    )
    async with real_peers(tmp_path, checks, require_auth=True) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            await client.reply()
            await client.command(b"EHLO c.example")
            # require_auth (the sender check) answers before any added check is asked.
            assert await client.command(b"MAIL FROM:<a@example.net>") == (
                b"530 5.7.0 Authentication required"
            )
            assert mail_seen == []
            await client.command(b"QUIT")
    async with real_peers(tmp_path, checks) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            await client.reply()
            await client.command(b"EHLO c.example")
            assert (await client.command(b"MAIL FROM:<a@example.net>")).startswith(b"250")
            assert len(mail_seen) == 1
            # smar (the first RCPT check) refuses relaying before the added checks are asked...
            assert await client.command(b"RCPT TO:<x@remote.example>") == (
                b"554 5.7.1 <x@remote.example>: Relay access denied"
            )
            # ...and Accept ends the chain: the Refuse after it is never asked.
            assert await client.command(b"RCPT TO:<bob@localhost>") == b"250 2.1.5 Ok"
            assert rcpt_seen == []
            await client.command(b"QUIT")


async def test_discard_and_quarantine_decided_early_take_effect_at_the_end(tmp_path: Path) -> None:
    """Discard at HELO covers every message until the next EHLO; quarantine at RCPT one message."""

    async def discard_marked(context: StageContext) -> Decision:
        return Discard() if context.helo == "discard.example" else CONTINUE

    async def quarantine_carol(context: StageContext) -> Decision:
        return Quarantine("test") if str(context.recipient).startswith("carol") else CONTINUE

    checks = Checks(helo=(discard_marked,), rcpt=(quarantine_carol,))
    async with real_peers(tmp_path, checks) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            await client.reply()

            async def send(rcpt: bytes) -> bytes:
                assert (await client.command(b"MAIL FROM:<a@example.net>")).startswith(b"250")
                assert await client.command(b"RCPT TO:<" + rcpt + b">") == b"250 2.1.5 Ok"
                assert (await client.command(b"DATA")).startswith(b"354")
                return await client.command(MESSAGE)

            await client.command(b"EHLO discard.example")
            for _ in range(2):
                assert (await send(b"bob@localhost")).startswith(b"250 2.0.0 Ok: queued as ")
            assert mta.queued() == [] and mta.content_files() == []
            await client.command(b"EHLO c.example")
            assert await send(b"carol@localhost") == b"451 4.7.1 Message held by policy, try again later"
            assert mta.queued() == [] and mta.content_files() == []
            assert (await send(b"bob@localhost")).startswith(b"250 2.0.0 Ok: queued as ")
            assert len(mta.queued()) == 1
            await client.command(b"QUIT")


async def test_bdat_data_and_eoh_refusals_answer_the_chunk(tmp_path: Path) -> None:
    async def refuse_spam(context: StageContext) -> Decision:
        assert context.headers is not None
        return Refuse(REFUSED) if b"spam" in context.headers else CONTINUE

    checks = Checks(data=(returning(TempFail()),), eoh=(refuse_spam,))
    async with real_peers(tmp_path, checks) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            await client.reply()
            await client.command(b"EHLO c.example")
            await client.command(b"MAIL FROM:<a@example.net>")
            await client.command(b"RCPT TO:<bob@localhost>")
            # The first chunk is the DATA stage: its refusal is this chunk's reply, the
            # transaction ends.
            await client.stream.send_all(b"BDAT 5\r\nabcde")
            assert await client.reply() == TEMPFAIL
            assert mta.queued() == [] and mta.content_files() == []
            assert (await client.command(b"MAIL FROM:<a@example.net>")).startswith(b"250")
            await client.command(b"QUIT")
    async with real_peers(tmp_path, Checks(eoh=(refuse_spam,))) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            await client.reply()
            await client.command(b"EHLO c.example")
            await client.command(b"MAIL FROM:<a@example.net>")
            await client.command(b"RCPT TO:<bob@localhost>")
            head = b"Subject: spam\r\n\r\n"
            await client.stream.send_all(b"BDAT %d\r\n" % len(head) + head)
            # The header block ended in this (not last) chunk: refused now, transaction over.
            assert await client.reply() == b"550 5.7.1 Refused by test"
            assert mta.queued() == [] and mta.content_files() == []
            assert (await client.command(b"MAIL FROM:<a@example.net>")).startswith(b"250")
            await client.command(b"QUIT")


async def test_a_message_of_headers_only_still_reaches_the_end_of_headers(tmp_path: Path) -> None:
    # No empty line: the end of the data ends the header block too (and its checks are asked).
    seen: list[StageContext] = []
    async with real_peers(tmp_path, at("eoh", returning(Refuse(REFUSED), seen))) as mta:
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, mta.ctx)
            await client.reply()
            for line in (b"EHLO c.example", b"MAIL FROM:<a@example.net>", b"RCPT TO:<bob@localhost>"):
                await client.command(line)
            assert (await client.command(b"DATA")).startswith(b"354")
            assert await client.command(b"Subject: only headers\r\nX-Test: yes\r\n.") == REFUSED_WIRE
            assert mta.queued() == [] and mta.content_files() == []
            await client.command(b"QUIT")
    assert [c.headers for c in seen] == [b"Subject: only headers\r\nX-Test: yes\r\n"]


# -- peers that fail, and timeouts (autojump clock, small in-process peers) --------------------


class FakeQmgr:
    """qmgr's commit answered ok, or never (``hang``)."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.commits: list[QueueEnvelopeCommitRequest] = []

    async def handle(self, msg: Any) -> Any:
        assert isinstance(msg, QueueEnvelopeCommitRequest)
        self.commits.append(msg)
        if self.hang:
            await trio.sleep_forever()
        return QueueEnvelopeCommitReply(ok=True, reply=SmtpReplyValue(code=250, enhanced="2.0.0", text="ok"))


async def smar_accepting(msg: Any) -> Any:
    if isinstance(msg, SmarClientCheckRequest):
        return SmarClientCheckReply(
            action="accept", reply=SmtpReplyValue(code=250, enhanced="2.0.0", text="ok")
        )
    return SmarRecipientCheckReply(
        action="accept", reply=SmtpReplyValue(code=250, enhanced="2.1.5", text="ok"), expanded=()
    )


async def smar_hanging(msg: Any) -> Any:
    await trio.sleep_forever()


@asynccontextmanager
async def fake_peers(
    tmp_path: Path,
    smar: Callable[[Any], Awaitable[Any]],
    qmgr: FakeQmgr,
    checks: Checks = NO_CHECKS,
    **smtps: Any,
) -> AsyncIterator[tuple[SmtpsContext, RpcChannel, RpcChannel]]:
    """Fake peers over real channels; yields the context and the peers' own channel ends."""
    config = make_config(tmp_path, **smtps)
    async with open_channel_pair(None, smar) as (to_smar, smar_end):
        async with open_channel_pair(None, qmgr.handle) as (to_qmgr, qmgr_end):
            ctx = SmtpsContext(
                config=config,
                smar=to_smar,
                qmgr=to_qmgr,
                limits=SessionLimits(),
                shutdown=trio.Event(),
                added_checks=checks,
            )
            yield ctx, smar_end, qmgr_end


async def test_smar_timing_out_at_rcpt_is_451(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with fake_peers(tmp_path, smar_hanging, FakeQmgr()) as (ctx, _, _):
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, ctx)
            await client.reply()
            await client.command(b"EHLO c.example")
            await client.command(b"MAIL FROM:<a@example.net>")
            began = trio.current_time()
            assert await client.command(b"RCPT TO:<bob@localhost>") == (
                b"451 4.4.3 Recipient check unavailable, try again later"
            )
            assert 30 <= trio.current_time() - began < 31  # the recipient check's own deadline
            await client.command(b"QUIT")


async def test_smar_gone_at_rcpt_is_451_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_peers(tmp_path, smar_accepting, FakeQmgr()) as (ctx, smar_end, _):
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, ctx)
            await client.reply()
            await client.command(b"EHLO c.example")
            await client.command(b"MAIL FROM:<a@example.net>")
            smar_end.close()
            began = trio.current_time()
            assert await client.command(b"RCPT TO:<bob@localhost>") == (
                b"451 4.4.3 Recipient check unavailable, try again later"
            )
            assert trio.current_time() - began < 1
            await client.command(b"QUIT")


async def test_qmgr_down_at_the_end_of_data_is_451_and_keeps_the_content(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    qmgr = FakeQmgr()
    async with fake_peers(tmp_path, smar_accepting, qmgr) as (ctx, _, qmgr_end):
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, ctx)
            await client.reply()
            for line in (b"EHLO c.example", b"MAIL FROM:<a@example.net>", b"RCPT TO:<bob@localhost>"):
                await client.command(line)
            assert (await client.command(b"DATA")).startswith(b"354")
            qmgr_end.close()
            assert await client.command(MESSAGE) == b"451 4.3.0 Local error in processing, try again later"
            # Whether qmgr committed is unknown: the file stays (qmgr's orphan sweep removes it).
            assert len(list(tmp_path.glob("content/*/*"))) == 1 and qmgr.commits == []
            await client.command(b"QUIT")


async def test_qmgr_not_answering_is_451_after_two_commit_deadlines(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    qmgr = FakeQmgr(hang=True)
    async with fake_peers(tmp_path, smar_accepting, qmgr) as (ctx, _, _):
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, ctx)
            await client.reply()
            for line in (
                b"EHLO c.example",
                b"MAIL FROM:<a@example.net>",
                b"RCPT TO:<bob@localhost>",
                b"DATA",
            ):
                await client.command(line)
            began = trio.current_time()
            assert await client.command(MESSAGE) == b"451 4.3.0 Local error in processing, try again later"
            assert 120 <= trio.current_time() - began < 121  # asked twice, 60 s each
            assert len(qmgr.commits) == 2 and qmgr.commits[0] == qmgr.commits[1]
            await client.command(b"QUIT")
            nursery.cancel_scope.cancel()  # the fake qmgr's handlers still sleep


async def test_a_check_that_never_decides_is_a_temporary_failure(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def hang(context: StageContext) -> Decision:
        await trio.sleep_forever()
        raise AssertionError("not reached")

    async with fake_peers(tmp_path, smar_accepting, FakeQmgr(), at("rcpt", hang)) as (ctx, _, _):
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, ctx)
            await client.reply()
            await client.command(b"EHLO c.example")
            await client.command(b"MAIL FROM:<a@example.net>")
            began = trio.current_time()
            assert await client.command(b"RCPT TO:<bob@localhost>") == TEMPFAIL
            assert 120 <= trio.current_time() - began < 121
            await client.command(b"QUIT")


async def test_an_idle_client_gets_421_after_io_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_peers(tmp_path, smar_accepting, FakeQmgr(), io_timeout=300.0) as (ctx, _, _):
        async with trio.open_nursery() as nursery:
            client = await start_session(nursery, ctx)
            await client.reply()
            await client.command(b"EHLO c.example")
            began = trio.current_time()
            assert await client.reply() == b"421 4.4.2 Timeout exceeded, closing connection"
            assert 300 <= trio.current_time() - began < 301
            assert await client.reply() == b""
