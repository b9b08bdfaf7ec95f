"""smtps sessions against slow and hostile clients, a full queue and a refused commit (in memory).

Each test runs one :class:`~meta1py.smtps.session.Session` over a trio memory stream with fake
smar and qmgr peers, on the autojump clock: minutes of dripping clients take milliseconds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meta1py.conf import Config, SmtpsConfig
from meta1py.rpc.messages import (
    QueueEnvelopeCommitReply,
    QueueEnvelopeCommitRequest,
    SmarClientCheckReply,
    SmarClientCheckRequest,
    SmarRecipientCheckReply,
    SmtpReplyValue,
)
from meta1py.smtps.limits import QueueSpace, SessionLimits
from meta1py.smtps.session import Session, SmtpsContext

OK = SmtpReplyValue(code=250, enhanced="2.0.0", text="ok")


class FakeSmar:
    async def call(self, msg: Any, timeout: float) -> SmarRecipientCheckReply | SmarClientCheckReply:
        if isinstance(msg, SmarClientCheckRequest):
            return SmarClientCheckReply(action="accept", reply=OK, client_name="client.example")
        return SmarRecipientCheckReply(action="accept", reply=OK, expanded=())


class FakeQmgr:
    def __init__(self) -> None:
        self.answers: list[QueueEnvelopeCommitReply] = []
        self.commits: list[QueueEnvelopeCommitRequest] = []

    async def call(self, msg: QueueEnvelopeCommitRequest, timeout: float) -> QueueEnvelopeCommitReply:
        self.commits.append(msg)
        if self.answers:
            return self.answers.pop(0)
        return QueueEnvelopeCommitReply(ok=True, reply=OK)


class Client:
    """The client end of a memory stream: send lines, read replies."""

    def __init__(self, stream: trio.testing.MemoryStapledStream[Any, Any]) -> None:
        self.stream = stream
        self.buf = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> bytes:
        """The next complete reply (all its lines), or b"" at EOF."""
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    reply = b"\r\n".join(lines[: i + 1])
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return reply
            data = await self.stream.receive_some(65536)
            if not data:
                return b""
            self.buf += data

    async def command(self, line: bytes) -> bytes:
        await self.send(line + b"\r\n")
        return await self.reply()


def make_ctx(tmp_path: Path, **smtps: Any) -> tuple[SmtpsContext, SmtpsConfig, FakeQmgr]:
    service = dataclasses.replace(SmtpsConfig(), **smtps)
    config = dataclasses.replace(Config(), queue_directory=tmp_path, smtps=(service,))
    qmgr = FakeQmgr()
    ctx = SmtpsContext(
        config=config, smar=FakeSmar(), qmgr=qmgr, limits=SessionLimits(), shutdown=trio.Event()
    )
    return ctx, service, qmgr


async def start(
    nursery: trio.Nursery, ctx: SmtpsContext, service: SmtpsConfig, background: bool = False
) -> Client:
    """A session on a memory stream; with ``background`` its connect checks may run beside the
    greeting (as smtps's listener runs them)."""
    server_end, client_end = trio.testing.memory_stream_pair()
    session = Session(
        ctx, service, server_end, "192.0.2.1", "t.1", background=nursery if background else None
    )

    async def run() -> None:
        await session.run()
        await server_end.aclose()

    nursery.start_soon(run)
    client = Client(client_end)
    assert (await client.reply()).startswith(b"220 ")
    return client


async def test_a_dripping_command_line_is_cut_at_command_time_limit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Issue 16: one byte every 5 s of an endless EHLO line was never cut off (each byte reset
    # the 5-minute idle timeout).
    ctx, service, _ = make_ctx(tmp_path, command_time_limit=60.0)
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service)
        began = trio.current_time()
        await client.send(b"EHLO ")
        reply = b""
        with trio.move_on_after(600):
            async with trio.open_nursery() as drip:

                async def dripping() -> None:
                    while True:
                        await trio.sleep(5)
                        try:
                            await client.send(b"x")
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return

                drip.start_soon(dripping)
                reply = await client.reply()
                drip.cancel_scope.cancel()
        assert reply == b"421 4.4.2 Command line took too long, closing connection"
        assert 59 <= trio.current_time() - began <= 61
        assert await client.reply() == b""


async def test_idle_between_commands_is_io_timeout_not_the_line_limit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ctx, service, _ = make_ctx(tmp_path, command_time_limit=10.0, io_timeout=120.0)
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service)
        await trio.sleep(100)  # idle, no partial line: only io_timeout counts
        assert (await client.command(b"EHLO c.example")).startswith(b"250-")
        began = trio.current_time()
        assert await client.reply() == b"421 4.4.2 Timeout exceeded, closing connection"
        assert 119 <= trio.current_time() - began <= 121


async def test_slow_data_is_cut_by_min_data_rate_after_the_grace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ctx, service, qmgr = make_ctx(tmp_path, min_data_rate=500, data_rate_grace=30.0)
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service)
        await client.command(b"EHLO c.example")
        assert (await client.command(b"MAIL FROM:<a@example.org>")).startswith(b"250")
        assert (await client.command(b"RCPT TO:<b@example.net>")).startswith(b"250")
        assert (await client.command(b"DATA")).startswith(b"354")
        began = trio.current_time()
        reply = b""
        async with trio.open_nursery() as drip:

            async def dripping() -> None:
                # 100 bytes every 2 s (50 bytes/s): each read is well within io_timeout.
                while True:
                    try:
                        await client.send(b"y" * 98 + b"\r\n")
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    await trio.sleep(2)

            drip.start_soon(dripping)
            reply = await client.reply()
            drip.cancel_scope.cancel()
        assert reply == b"421 4.4.2 Data rate too low, closing connection"
        # The grace (30 s) plus what ~1,700 bytes buy at 500 bytes/s: cut near 33-34 s.
        assert 30 <= trio.current_time() - began <= 40
        assert not qmgr.commits


async def test_data_at_a_fair_rate_is_accepted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ctx, service, qmgr = make_ctx(tmp_path, min_data_rate=500, data_rate_grace=30.0)
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service)
        await client.command(b"EHLO c.example")
        await client.command(b"MAIL FROM:<a@example.org>")
        await client.command(b"RCPT TO:<b@example.net>")
        assert (await client.command(b"DATA")).startswith(b"354")
        for _ in range(120):  # 1,000 bytes/s for two minutes
            await client.send(b"z" * 998 + b"\r\n")
            await trio.sleep(1)
        assert (await client.command(b".")).startswith(b"250 2.0.0 Ok: queued as ")
        assert len(qmgr.commits) == 1
        assert (await client.command(b"QUIT")).startswith(b"221")


async def test_an_endless_line_gets_421_at_the_hard_cap(tmp_path: Path) -> None:
    ctx, service, _ = make_ctx(tmp_path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client = await start(nursery, ctx, service)
            sent = 0
            reply = b""
            async with trio.open_nursery() as flood:

                async def flooding() -> None:
                    nonlocal sent
                    while sent < 10 * 1024 * 1024:
                        try:
                            await client.send(b"A" * 4096)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
                        sent += 4096

                flood.start_soon(flooding)
                reply = await client.reply()
                flood.cancel_scope.cancel()
            assert reply == b"421 4.7.0 Line too long, closing connection"
            assert sent < 200 * 1024


class FakeDisk:
    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self) -> int:
        return self.free


async def test_mail_gets_452_when_the_queue_is_below_queue_minfree(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ctx, service, _ = make_ctx(tmp_path)
    disk = FakeDisk(10_000_000)
    ctx.space = QueueSpace(3_000_000, disk)
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service)
        await client.command(b"EHLO c.example")
        # SIZE larger than free minus queue_minfree: 452 at once.
        assert await client.command(b"MAIL FROM:<a@example.org> SIZE=8000000") == (
            b"452 4.3.1 Insufficient system storage"
        )
        assert (await client.command(b"MAIL FROM:<a@example.org> SIZE=7000000")).startswith(b"250")
        assert (await client.command(b"RSET")).startswith(b"250")
        disk.free = 2_000_000
        await trio.sleep(1.1)  # the cached reading expires
        assert await client.command(b"MAIL FROM:<a@example.org>") == b"452 4.3.1 Insufficient system storage"
        disk.free = 50_000_000
        await trio.sleep(1.1)
        assert (await client.command(b"MAIL FROM:<a@example.org>")).startswith(b"250")
        await client.command(b"QUIT")


async def test_bdat_chunk_gets_452_when_space_runs_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ctx, service, qmgr = make_ctx(tmp_path)
    disk = FakeDisk(10_000_000)
    ctx.space = QueueSpace(3_000_000, disk)
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service)
        await client.command(b"EHLO c.example")
        await client.command(b"MAIL FROM:<a@example.org>")
        await client.command(b"RCPT TO:<b@example.net>")
        assert (await client.command(b"BDAT 10\r\n0123456789"[:-2])).startswith(b"250")
        disk.free = 1_000
        await trio.sleep(1.1)
        assert await client.command(b"BDAT 10 LAST\r\n0123456789"[:-2]) == (
            b"452 4.3.1 Insufficient system storage"
        )
        assert not qmgr.commits
        assert not list(tmp_path.glob("content/*/*"))  # nothing left behind
        await client.command(b"QUIT")


@pytest.mark.parametrize(
    ("refusal", "expected"),
    [
        (SmtpReplyValue(code=452, enhanced="4.3.1", text="queue store full"), b"452 4.3.1 "),
        (SmtpReplyValue(code=451, enhanced="4.3.1", text="database is locked"), b"452 4.3.1 "),
        (SmtpReplyValue(code=451, enhanced="4.3.0", text="Local error in processing"), b"451 4.3.0 "),
        (SmtpReplyValue(code=554, enhanced="5.5.0", text="bad envelope"), b"554 5.5.0 bad envelope"),
    ],
)
async def test_a_commit_refused_by_qmgr(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, refusal: SmtpReplyValue, expected: bytes
) -> None:
    ctx, service, qmgr = make_ctx(tmp_path)
    ctx.space = QueueSpace(1, FakeDisk(10**12))
    qmgr.answers.append(QueueEnvelopeCommitReply(ok=False, reply=refusal))
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service)
        await client.command(b"EHLO c.example")
        await client.command(b"MAIL FROM:<a@example.org>")
        await client.command(b"RCPT TO:<b@example.net>")
        await client.command(b"DATA")
        assert (await client.command(b"Subject: x\r\n\r\nbody\r\n.")).startswith(expected)
        assert not list(tmp_path.glob("content/*/*"))  # the refused content is gone
        store_full = expected.startswith(b"452")
        # "The store cannot be written": new messages are refused at MAIL for a few seconds.
        mail = await client.command(b"MAIL FROM:<a@example.org>")
        assert mail.startswith(b"452 4.3.1") == store_full, mail
        if store_full:
            await trio.sleep(5)
            assert (await client.command(b"MAIL FROM:<a@example.org>")).startswith(b"250")
        await client.command(b"QUIT")


async def test_stress_mode_shrinks_the_idle_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ctx, service, _ = make_ctx(
        tmp_path, max_sessions=10, stress_threshold=80, io_timeout=300.0, stress_io_timeout=10.0
    )
    for i in range(9):  # 9 of 10 sessions open: past 80 %
        assert ctx.limits.admit(f"198.51.{i}.1", service, 0.0).admitted
    assert ctx.limits.stressed
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service)
        began = trio.current_time()
        assert await client.reply() == b"421 4.4.2 Timeout exceeded, closing connection"
        assert 9 <= trio.current_time() - began <= 11


async def test_replies_to_a_pipelining_client_are_flushed_past_the_cap(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ctx, service, _ = make_ctx(tmp_path)
    async with trio.open_nursery() as nursery:
        # Lockstep: a write blocks until the other side reads, like a full socket buffer.
        server_end, client_end = trio.testing.lockstep_stream_pair()
        session = Session(ctx, service, server_end, "192.0.2.1", "t.2")
        nursery.start_soon(session.run)
        client = Client(client_end)  # type: ignore[arg-type]
        await client.reply()
        # 2,000 pipelined EHLOs (~300 bytes of reply each) in one write.
        await client.send(b"EHLO c.example\r\n" * 2000)
        await trio.testing.wait_all_tasks_blocked()
        # The client reads nothing: the session stopped at the cap and waits to write it, with
        # the rest of the commands unread (without the cap it would hold ~600 KB of replies).
        assert len(session.out) == 0 and session.core.pending_input > 16 * 1000
        data = b""
        while data.count(b"\r\n250 ") < 2000:
            data += await client_end.receive_some(1 << 20)
        await client.command(b"QUIT")


class HangingSmar(FakeSmar):
    """smar that never answers the client check (its reverse lookup hangs)."""

    async def call(self, msg: Any, timeout: float) -> SmarRecipientCheckReply | SmarClientCheckReply:
        if isinstance(msg, SmarClientCheckRequest):
            await trio.sleep_forever()
        return await super().call(msg, timeout)


def _delay_checks(ctx: SmtpsContext, on: bool) -> None:
    ctx.config = dataclasses.replace(ctx.config, smar=dataclasses.replace(ctx.config.smar, delay_checks=on))


def _session_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "meta1py.maillog"]


@pytest.mark.parametrize("delay_checks", [True, False])
async def test_the_connect_line_names_the_client_as_smar_found_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, delay_checks: bool
) -> None:
    # Postfix's smtpd writes "connect from NAME[ADDR]" after its reverse lookup; so does smtps,
    # also when it greets before smar's answer (delay_checks = yes).
    caplog.set_level("INFO", logger="meta1py.maillog")
    ctx, service, _ = make_ctx(tmp_path)
    _delay_checks(ctx, delay_checks)
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service, background=True)
        assert (await client.command(b"EHLO c.example")).startswith(b"250-")
        assert (await client.command(b"QUIT")).startswith(b"221 ")
        assert await client.reply() == b""
    lines = _session_lines(caplog)
    assert [line.split()[0] for line in lines] == ["connect", "disconnect"]
    assert "client=192.0.2.1 client_name=client.example" in lines[0]
    assert "client=192.0.2.1 client_name=client.example" in lines[1]
    assert lines[1].endswith('commands="ehlo=1 quit=1 commands=2"'), lines[1]


async def test_a_client_that_goes_away_is_logged_after_its_last_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="meta1py.maillog")
    ctx, service, _ = make_ctx(tmp_path)
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service, background=True)
        assert (await client.command(b"EHLO c.example")).startswith(b"250-")
        assert (await client.command(b"MAIL FROM:<a@example.org>")).startswith(b"250 ")
        assert (await client.command(b"RCPT TO:<x@elsewhere.test>")).startswith(b"250 ")
        await client.stream.aclose()
    lines = _session_lines(caplog)
    assert [line.split()[0] for line in lines] == ["connect", "lost", "disconnect"], lines
    assert lines[1].endswith("after=RCPT"), lines[1]
    assert lines[2].endswith('commands="ehlo=1 mail=1 rcpt=1 commands=3"'), lines[2]


async def test_a_client_gone_before_its_name_is_known_is_logged_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="meta1py.maillog")
    ctx, service, _ = make_ctx(tmp_path)
    _delay_checks(ctx, True)
    ctx.smar = HangingSmar()
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, service, background=True)
        assert (await client.command(b"QUIT")).startswith(b"221 ")
        assert await client.reply() == b""
    lines = _session_lines(caplog)
    assert [line.split()[0] for line in lines] == ["connect", "disconnect"]
    assert "client_name" not in lines[0]
