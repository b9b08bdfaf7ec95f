"""smtpc never sends a recipient twice when qmgr goes away mid-delivery and asks again (issue 16).

qmgr's call is cancelled (its connection is gone) while the remote server holds the reply to the
final dot; the delivery goes on in smtpc's own nursery, the server says 250, and the result is
remembered: the new qmgr's identical request is answered without a second transaction.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from meta1py.conf import parse_config
from meta1py.queue.content import ContentWriter
from meta1py.rpc.messages import (
    SmarRouteValue,
    SmtpcDeliveryReply,
    SmtpcDeliveryRequest,
    SmtpcRecipientResult,
    SmtpcRecipientValue,
    SmtpReplyValue,
)
from meta1py.smtpc.delivery import DeliveryAgents, RecentResults
from meta1py_testing.jobs import delivery_request, serve_on_loopback, smtp_route


class _Server:
    """Accepts every command; holds the reply to the end of data until ``release`` is set."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.data_done = trio.Event()
        self.transactions = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 sink.test ESMTP\r\n")
            buffer = b""
            in_data = False
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buffer += data
                while True:
                    if in_data:
                        end = buffer.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        buffer = buffer[end + 5 :]
                        in_data = False
                        self.data_done.set()
                        await self.release.wait()
                        self.transactions += 1
                        await stream.send_all(b"250 2.0.0 queued\r\n")
                        continue
                    if b"\r\n" not in buffer:
                        break
                    line, buffer = buffer.split(b"\r\n", 1)
                    verb = line.split(b" ", 1)[0].upper()
                    if verb == b"DATA":
                        in_data = True
                        await stream.send_all(b"354 go on\r\n")
                    elif verb == b"QUIT":
                        await stream.send_all(b"221 bye\r\n")
                        return
                    elif verb in (b"EHLO", b"HELO"):
                        await stream.send_all(b"250 sink.test\r\n")
                    else:
                        await stream.send_all(b"250 2.0.0 ok\r\n")


async def test_a_repeated_request_after_qmgr_went_away_is_not_sent_again(tmp_path: Path) -> None:
    cfg = parse_config(f"queue_directory = {tmp_path};\n")
    writer = ContentWriter(tmp_path)
    writer.write(b"Subject: once\r\n\r\nonly once\r\n")
    writer.close_unsynced()
    agents = DeliveryAgents(cfg)
    server = _Server()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            agents.nursery = nursery
            port = await serve_on_loopback(nursery, server.serve)
            route = smtp_route("smtp:sink.test", ("sink.test", "127.0.0.1", port))
            req = delivery_request(writer.qid, route, ["x@sink.test"], size=30)
            # The first qmgr asks, and goes away once the message is on its way.
            with trio.CancelScope() as qmgr_call:
                nursery.start_soon(_cancel_when, server.data_done, qmgr_call)
                await agents.handle(req)
            assert qmgr_call.cancelled_caught
            server.release.set()
            # The new qmgr asks again: answered from what smtpc remembers.
            while len(agents.recent) == 0:
                await trio.sleep(0.01)
            reply = await agents.handle(req)
            assert [(r.idx, r.status, r.reply.code) for r in reply.results] == [(0, "ok", 250)]
            assert server.transactions == 1
            nursery.cancel_scope.cancel()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def test_recent_results_keep_final_results_only_and_are_bounded() -> None:
    recent = RecentResults(max_entries=4, ttl_s=10.0)
    rcpts = tuple(
        SmtpcRecipientValue(idx=i, address=f"r{i}@x.test", orcpt=None, notify=None) for i in range(3)
    )
    req = SmtpcDeliveryRequest(
        qid="2H55Q93H3U7F", sender="", envid=None, ret=None, body="7BIT", smtputf8=False, size=1,
        recipients=rcpts,
        route=SmarRouteValue(status="ok", transport="smtp", destination="d", hosts=(), path=None, reply=None),
    )  # fmt: skip
    ok = SmtpReplyValue(code=250, enhanced="2.0.0", text="ok")
    temp = SmtpReplyValue(code=451, enhanced="4.3.0", text="later")
    reply = SmtpcDeliveryReply(
        results=(
            SmtpcRecipientResult(idx=0, status="ok", reply=ok, remote_mta=None),
            SmtpcRecipientResult(idx=1, status="temp", reply=temp, remote_mta=None),
            SmtpcRecipientResult(idx=2, status="perm", reply=ok, remote_mta=None),
        ),
        session_failed=False,
    )
    recent.record(req, reply, stamp=7, now=0.0)
    known, todo = recent.split(req, stamp=7, now=1.0)
    assert [r.idx for r in known] == [0, 2] and [r.idx for r in todo] == [1]
    # The same queue id on a new content file (a new message that drew the id again): unknown.
    assert recent.split(req, stamp=8, now=1.0)[0] == []
    assert recent.split(req, stamp=None, now=1.0)[0] == []
    assert recent.split(req, stamp=7, now=11.0)[0] == []  # expired
    other = dataclasses.replace(req, qid="2H55Q94U2R7F")
    for _ in range(3):
        recent.record(other, reply, stamp=9, now=2.0)
    assert len(recent) <= 4
