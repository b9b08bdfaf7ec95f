"""The life of a message in qmgr: commit, route, deliver, defer, bounce, operator commands.

:class:`~meta1py.qmgr.manager.QueueManager` runs in-process on a real queue directory (envelope
store and content files under ``tmp_path``). Its peers are in-process too, behind real RPC: smtps
and the ``meta1 queue`` command call qmgr over a channel pair (``manager.handle`` serves it), smar
answers over another channel pair, and smtpc serves a Unix socket that qmgr's own ``RpcClient``
connects to, as in production. Each peer is a small scripted handler.

Retry times are wall-clock times in the store: the tests give the manager a wall clock of their
own (:class:`WallClock`) and move it forward instead of waiting, so a ten-minute retry costs
nothing and a test can check that nothing happens before it is due.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import meta1py.qmgr.manager as manager_module
from meta1py.conf import parse_config
from meta1py.qmgr.manager import QueueManager
from meta1py.queue.content import ContentWriter, content_path
from meta1py.queue.envelopes import Envelope, EnvelopeStore, envelope_store_path
from meta1py.queue.listing import format_list
from meta1py.rpc import RpcClient, open_channel_pair, serve_unix
from meta1py.rpc.channel import RpcChannel
from meta1py.rpc.messages import (
    DeliveryStatus,
    QueueControlReply,
    QueueControlRequest,
    QueueEnvelopeCommitRequest,
    QueueRecipientValue,
    SmarHostValue,
    SmarRouteReply,
    SmarRouteRequest,
    SmarRouteValue,
    SmtpcDeliveryReply,
    SmtpcDeliveryRequest,
    SmtpcRecipientResult,
    SmtpReplyValue,
)

RETRY_MIN_S = 600.0
SENDER = "alice@example.org"
DESTINATION = "smtp:remote.test"


def route_for(address: str) -> SmarRouteValue:
    domain = address.rpartition("@")[2]
    return SmarRouteValue(
        status="ok",
        transport="smtp",
        destination=f"smtp:{domain}",
        hosts=(SmarHostValue(name=domain, address="127.0.0.1", port=25),),
        path=None,
        reply=None,
    )


class WallClock:
    """The manager's ``time`` module: real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def time(self) -> float:
        return time.time() + self.offset_s

    def monotonic(self) -> float:
        return time.monotonic() + self.offset_s

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


@dataclass
class Smar:
    """smar's side of qmgr->smar: routes every address by its domain, or as scripted."""

    requests: list[SmarRouteRequest] = field(default_factory=list)
    hang: bool = False

    async def handle(self, msg: Any) -> Any:
        assert isinstance(msg, SmarRouteRequest)
        self.requests.append(msg)
        if self.hang:
            await trio.sleep_forever()
        return SmarRouteReply(routes=tuple(route_for(a) for a in msg.addresses))


Answer = Callable[[SmtpcDeliveryRequest], Awaitable[SmtpcDeliveryReply]]


def results(
    request: SmtpcDeliveryRequest, status: DeliveryStatus, code: int, enhanced: str, text: str
) -> SmtpcDeliveryReply:
    reply = SmtpReplyValue(code=code, enhanced=enhanced, text=text)
    return SmtpcDeliveryReply(
        results=tuple(
            SmtpcRecipientResult(idx=r.idx, status=status, reply=reply, remote_mta="mx.remote.test")
            for r in request.recipients
        ),
        session_failed=False,
    )


async def accept(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
    return results(request, "ok", 250, "2.0.0", "queued as R1")


async def refuse_4xx(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
    return results(request, "temp", 451, "4.2.1", "mailbox busy, try later")


async def refuse_5xx(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
    return results(request, "perm", 550, "5.1.1", "no such user")


@dataclass
class Smtpc:
    """smtpc: answers each delivery with the current script and keeps the requests."""

    answer: Answer
    requests: list[SmtpcDeliveryRequest] = field(default_factory=list)

    async def handle(self, msg: Any) -> Any:
        assert isinstance(msg, SmtpcDeliveryRequest)
        self.requests.append(msg)
        return await self.answer(msg)


@dataclass
class Harness:
    manager: QueueManager
    clock: WallClock
    smar: Smar
    smar_channel: RpcChannel
    smtpc: Smtpc
    qmgr: RpcChannel  # the caller's end of qmgr.sock (smtps, meta1 queue)
    queue_dir: Path
    store_path: Path

    async def submit(self, recipients: tuple[str, ...], sender: str = SENDER) -> str:
        """What smtps does: write the content file, then commit the envelope over RPC."""
        writer = ContentWriter(self.queue_dir)
        data = b"From: alice@example.org\r\nSubject: hello\r\n\r\nbody line\r\n"
        writer.write(data)
        writer.close_unsynced()
        answer = await self.qmgr.call(
            QueueEnvelopeCommitRequest(
                qid=writer.qid,
                sender=sender,
                recipients=tuple(QueueRecipientValue(address=a, orcpt=None, notify=None) for a in recipients),
                size=len(data),
                envid=None,
                ret=None,
                body="8BITMIME",
                smtputf8=False,
                client_address="127.0.0.1",
                client_helo="client.test",
                arrival_time=time.time(),
            ),
            timeout=10,
        )
        assert answer.ok and (answer.reply.code, answer.reply.enhanced) == (250, "2.0.0"), answer
        return writer.qid

    async def control(self, action: str, *qids: str, all_deferred: bool = False) -> QueueControlReply:
        """What ``meta1 queue <action>`` sends to qmgr."""
        request = QueueControlRequest(
            action=action,  # type: ignore[arg-type]
            qids=qids,
            to_domain=None,
            all_deferred=all_deferred,
        )
        return await self.qmgr.call(request, timeout=10)

    async def stored(self, qid: str) -> Envelope | None:
        return await self.manager.committer.read(lambda store: store.get(qid))

    def listing(self, state: str | None = None) -> tuple[list[Envelope], str]:
        """What ``meta1 queue list`` reads: the store, opened read-only, and its text."""
        with EnvelopeStore(self.store_path, readonly=True) as store:
            envs = store.list_envelopes(state=state)  # type: ignore[arg-type]
        return envs, format_list(envs, self.clock.time())

    def later(self, seconds: float) -> None:
        """Let ``seconds`` of wall-clock time pass for the manager."""
        self.clock.advance(seconds)
        self.manager.wake()


async def until(condition: Callable[[], object], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``condition`` until it is true; fail with ``what`` after ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


@asynccontextmanager
async def running_qmgr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: Answer
) -> AsyncIterator[Harness]:
    queue_dir = tmp_path / "q"
    queue_dir.mkdir()
    config = parse_config(
        f"hostname = mx.example.test; local_domains = {{ example.test }}; queue_directory = {queue_dir};"
        f" qmgr {{ retry_min = {RETRY_MIN_S:g}s; retry_max = 1h; }}"
    )
    clock = WallClock()
    monkeypatch.setattr(manager_module, "time", clock)
    # The manager reads the mail system's time through meta1py.clock (test mode's virtual clock).
    monkeypatch.setattr(manager_module.clock, "now", clock.time)
    smtpc_path = tmp_path / "smtpc.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(smtpc_path))
    listener.listen(16)
    smar = Smar()
    smtpc = Smtpc(answer)
    store = EnvelopeStore(envelope_store_path(queue_dir))
    smtpc_client = RpcClient(smtpc_path, name="qmgr->smtpc")
    try:
        async with (
            trio.open_nursery() as nursery,
            open_channel_pair(None, smar.handle) as (to_smar, smar_end),
        ):
            await nursery.start(serve_unix, trio.SocketListener(listener), smtpc.handle)
            await nursery.start(smtpc_client.run)
            manager = QueueManager(config, store, to_smar, smtpc_client)
            manager.recover()
            await nursery.start(manager.run)
            async with open_channel_pair(None, manager.handle) as (to_qmgr, _qmgr_end):
                await until(lambda: smtpc_client.connected, "qmgr to connect to smtpc")
                yield Harness(
                    manager,
                    clock,
                    smar,
                    smar_end,
                    smtpc,
                    to_qmgr,
                    queue_dir,
                    envelope_store_path(queue_dir),
                )
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def content_of(h: Harness, qid: str) -> str:
    return content_path(h.queue_dir, qid).read_bytes().decode()


# -- the ordinary life -------------------------------------------------------------------------


@pytest.mark.deadline(60)
async def test_a_committed_message_is_routed_delivered_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, accept) as h:
        qid = await h.submit(("bob@remote.test", "carol@remote.test"))
        await until(lambda: not h.manager.messages, "the message to be delivered and finished")
        await until(lambda: not content_path(h.queue_dir, qid).exists(), "the content file to go")

        # One routing question for both recipients, one delivery to their destination.
        assert [r.addresses for r in h.smar.requests] == [("bob@remote.test", "carol@remote.test")]
        (request,) = h.smtpc.requests
        assert (request.qid, request.sender) == (qid, SENDER)
        assert [r.address for r in request.recipients] == ["bob@remote.test", "carol@remote.test"]
        assert request.route == route_for("bob@remote.test")
        assert await h.stored(qid) is None
        assert h.listing() == ([], "Mail queue is empty\n")
        delivered = maillog("delivered")
        assert len(delivered) == 2 and all("status=sent" in line for line in delivered), delivered
        assert 'reply="250 2.0.0 queued as R1"' in delivered[0]
        assert len(maillog("removed")) == 1 and maillog("deferred") == []


@pytest.mark.deadline(60)
async def test_a_finished_message_content_goes_with_the_next_durable_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The removal loop's own fsync comes only after an hour here: what removes the content is
    # the next new message's commit, whose fsync covers the earlier, unsynced deletion.
    monkeypatch.setattr(manager_module, "_REMOVAL_WAIT_S", 3600.0)
    async with running_qmgr(tmp_path, monkeypatch, accept) as h:
        first = await h.submit(("bob@remote.test",))
        await until(lambda: not h.manager.messages, "the first message to be delivered and finished")
        assert await h.stored(first) is None
        # Deleted from the store, but not durably yet: its content must stay.
        assert content_path(h.queue_dir, first).exists()
        second = await h.submit(("carol@remote.test",))
        assert not content_path(h.queue_dir, first).exists()
        await until(lambda: second not in h.manager.messages, "the second message to be finished")
        assert content_path(h.queue_dir, second).exists()


@pytest.mark.deadline(60)
async def test_a_4xx_defers_the_message_until_its_retry_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_4xx) as h:
        qid = await h.submit(("bob@remote.test",))
        await until(lambda: len(maillog("deferred")) == 1, "the recipient to be deferred")
        env = await h.stored(qid)
        assert env is not None
        (rcpt,) = env.recipients
        assert (rcpt.status, rcpt.attempts) == ("deferred", 1)
        assert rcpt.last_reply == "451 4.2.1 mailbox busy, try later"
        # The first retry waits retry_min, with up to 20 % jitter on top.
        wait_s = rcpt.next_attempt - h.clock.time()
        assert RETRY_MIN_S * 0.95 <= wait_s <= RETRY_MIN_S * 1.2, wait_s
        envs, text = h.listing(state="deferred")
        assert [e.qid for e in envs] == [qid]
        assert "(451 4.2.1 mailbox busy, try later)" in text and "bob@remote.test" in text

        # Just before the retry time nothing is tried again.
        h.later(wait_s - 5)
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)
        assert len(h.smtpc.requests) == 1

        h.smtpc.answer = accept
        h.later(10)
        await until(lambda: not h.manager.messages, "the retry to deliver the message")
        assert len(h.smtpc.requests) == 2
        assert len(maillog("delivered")) == 1
        assert await h.stored(qid) is None
        # The lines name the host that answered, and Postfix's delays=a/b/c/d: b is the time
        # in the queue before the attempt (the retry waited wait_s and more).
        (deferred,) = maillog("deferred")
        (delivered,) = maillog("delivered")
        assert "relay=mx.remote.test" in deferred, deferred
        assert re.search(r" delays=0/[\d.]+/0/[\d.]+ ", deferred), deferred
        in_queue = re.search(r" delays=0/([\d.]+)/0/[\d.]+ ", delivered)
        assert in_queue is not None and float(in_queue[1]) >= wait_s, delivered


# -- bounces -----------------------------------------------------------------------------------


@pytest.mark.deadline(60)
async def test_a_5xx_bounces_the_message_to_its_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    bounces: dict[str, str] = {}

    async with running_qmgr(tmp_path, monkeypatch, refuse_5xx) as h:

        async def bounce_back(request: SmtpcDeliveryRequest) -> SmtpcDeliveryReply:
            """Refuse the original with 5xx; take the bounce (mail from <>) as smtpc would read it."""
            if request.sender != "":
                return await refuse_5xx(request)
            bounces[request.qid] = content_of(h, request.qid)
            return await accept(request)

        h.smtpc.answer = bounce_back
        qid = await h.submit(("bob@remote.test",))
        await until(
            lambda: len(h.smtpc.requests) == 2 and not h.manager.messages, "the bounce to be delivered"
        )
        first, bounce = h.smtpc.requests
        assert (first.qid, first.sender) == (qid, SENDER)
        # The bounce goes out like any message, from <> to the sender.
        assert bounce.sender == "" and [r.address for r in bounce.recipients] == [SENDER]
        dsn = bounces[bounce.qid]
        assert "To: <alice@example.org>" in dsn
        assert "report-type=delivery-status" in dsn
        assert "Final-Recipient: rfc822; bob@remote.test" in dsn
        assert "Action: failed" in dsn and "Status: 5.1.1" in dsn
        assert "Diagnostic-Code: smtp; 550 5.1.1 no such user" in dsn
        assert "Subject: hello" in dsn  # the original's header goes back with it
        (bounced,) = maillog("bounced")
        assert "to=bob@remote.test" in bounced and "status=bounced" in bounced
        (queued,) = maillog("queued")
        assert f"qid={bounce.qid}" in queued and f"origin={qid}" in queued and "kind=bounce" in queued
        assert len(maillog("delivered")) == 1
        assert await h.stored(qid) is None and await h.stored(bounce.qid) is None
        await until(lambda: not content_path(h.queue_dir, bounce.qid).exists(), "the bounce's content to go")


@pytest.mark.deadline(60)
async def test_mail_from_the_null_sender_is_not_bounced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_5xx) as h:
        qid = await h.submit(("bob@remote.test",), sender="")
        await until(lambda: not h.manager.messages, "the message to be finished")
        assert len(h.smtpc.requests) == 1
        assert len(maillog("bounced")) == 1
        assert maillog("queued") == []  # no bounce was queued
        assert await h.stored(qid) is None
        assert h.listing() == ([], "Mail queue is empty\n")


@pytest.mark.deadline(60)
async def test_a_failed_bounce_goes_to_the_postmaster_once_then_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_5xx) as h:
        qid = await h.submit(("bob@remote.test",))
        # Everything fails: the original, its bounce to the sender, the double bounce.
        await until(lambda: len(h.smtpc.requests) == 3 and not h.manager.messages, "all three to fail")
        first, bounce, double = h.smtpc.requests
        assert (first.qid, first.sender) == (qid, SENDER)
        assert (bounce.sender, [r.address for r in bounce.recipients]) == ("", [SENDER])
        # Never back to <>: the undeliverable bounce is reported to the postmaster.
        assert (double.sender, [r.address for r in double.recipients]) == ("", ["postmaster@example.test"])
        queued = maillog("queued")
        assert len(queued) == 2
        assert "kind=bounce" in queued[0] and "kind=double_bounce" in queued[1]
        assert h.listing() == ([], "Mail queue is empty\n")


# -- smar not answering -------------------------------------------------------------------------


@pytest.mark.deadline(60)
async def test_smar_gone_defers_the_recipients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, accept) as h:
        h.smar_channel.close()  # smar died: its end of qmgr->smar is closed
        qid = await h.submit(("bob@remote.test",))
        await until(lambda: len(maillog("deferred")) == 1, "the recipient to be deferred")
        env = await h.stored(qid)
        assert env is not None
        (rcpt,) = env.recipients
        assert (rcpt.status, rcpt.attempts) == ("deferred", 1)
        assert rcpt.last_reply is not None
        assert rcpt.last_reply.startswith("451 4.3.0 address resolver unavailable: "), rcpt.last_reply
        assert rcpt.next_attempt - h.clock.time() >= RETRY_MIN_S * 0.95
        assert h.smtpc.requests == []


@pytest.mark.deadline(60)
async def test_smar_not_answering_in_time_defers_the_recipients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    monkeypatch.setattr(manager_module, "_ROUTE_TIMEOUT_S", 0.5)
    async with running_qmgr(tmp_path, monkeypatch, accept) as h:
        h.smar.hang = True
        qid = await h.submit(("bob@remote.test",))
        await until(lambda: len(maillog("deferred")) == 1, "the recipient to be deferred")
        assert len(h.smar.requests) == 1
        env = await h.stored(qid)
        assert env is not None
        (rcpt,) = env.recipients
        assert (rcpt.status, rcpt.attempts) == ("deferred", 1)
        assert rcpt.last_reply is not None
        assert rcpt.last_reply.startswith("451 4.3.0 address resolver unavailable: "), rcpt.last_reply

        # smar answers again: the retry routes and delivers.
        h.smar.hang = False
        h.later(RETRY_MIN_S * 1.2 + 1)
        await until(lambda: not h.manager.messages, "the retry to deliver the message")
        assert len(h.smar.requests) == 2 and len(h.smtpc.requests) == 1


# -- operator commands (meta1 queue) ------------------------------------------------------------


@pytest.mark.deadline(60)
async def test_flush_retries_deferred_mail_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_4xx) as h:
        qid = await h.submit(("bob@remote.test",))
        await until(lambda: len(maillog("deferred")) == 1, "the recipient to be deferred")
        h.smtpc.answer = accept
        reply = await h.control("flush", all_deferred=True)
        assert (reply.count, reply.missing) == (1, ())
        await until(lambda: not h.manager.messages, "the flushed message to be delivered")
        assert [r.qid for r in h.smtpc.requests] == [qid, qid]


@pytest.mark.deadline(60)
async def test_hold_keeps_a_message_from_delivery_until_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_4xx) as h:
        qid = await h.submit(("bob@remote.test",))
        await until(lambda: len(maillog("deferred")) == 1, "the recipient to be deferred")
        reply = await h.control("hold", qid)
        assert (reply.count, reply.missing) == (1, ())
        envs, text = h.listing(state="hold")
        assert [e.qid for e in envs] == [qid] and envs[0].hold
        assert f"{qid}!" in text  # mailq's mark for a message on hold

        # Its retry time comes and goes: a message on hold is not tried.
        h.smtpc.answer = accept
        h.later(2 * 3600)
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)
        assert len(h.smtpc.requests) == 1 and qid in h.manager.messages

        reply = await h.control("release", qid)
        assert reply.count == 1
        await until(lambda: not h.manager.messages, "the released message to be delivered")
        assert len(h.smtpc.requests) == 2


@pytest.mark.deadline(60)
async def test_delete_removes_the_message_and_its_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_4xx) as h:
        keep = await h.submit(("bob@remote.test",))
        gone = await h.submit(("carol@remote.test",))
        await until(lambda: len(maillog("deferred")) == 2, "both to be deferred")
        reply = await h.control("delete", gone, "AAAAAAAAAAAA")
        assert reply.count == 1
        assert reply.missing == ("AAAAAAAAAAAA",)
        assert await h.stored(gone) is None
        assert not content_path(h.queue_dir, gone).exists()
        assert [e.qid for e in h.listing()[0]] == [keep]
        assert any('reason="deleted by operator"' in line for line in maillog("removed"))
        # A retry later delivers only what is left.
        h.smtpc.answer = accept
        h.later(2 * 3600)
        await until(lambda: not h.manager.messages, "the other message to be delivered")
        assert [r.qid for r in h.smtpc.requests[2:]] == [keep]


@pytest.mark.deadline(60)
async def test_bounce_by_the_operator_returns_the_message_to_its_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maillog: Callable[[str], list[str]]
) -> None:
    async with running_qmgr(tmp_path, monkeypatch, refuse_4xx) as h:
        qid = await h.submit(("bob@remote.test",))
        await until(lambda: len(maillog("deferred")) == 1, "the recipient to be deferred")
        reply = await h.control("bounce", qid)
        assert reply.count == 1
        await until(lambda: qid not in h.manager.messages, "the message to be bounced")
        (bounce,) = h.manager.messages.values()
        assert [r.address for r in bounce.env.recipients] == [SENDER]
        dsn = content_of(h, bounce.env.qid)
        assert "Diagnostic-Code: smtp; 550 5.0.0 message bounced by the administrator" in dsn
        assert "Status: 5.0.0" in dsn
