"""The captured destination (meta1py.smtpc.captured) and smtps's scripted check, in memory.

The captured server is driven with the client core (meta1py.smtp.client) the way smtpc drives it;
trio.run with no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from meta1py import contract
from meta1py.conf import parse_config
from meta1py.smtp.client import ClientConnection
from meta1py.smtp.events import ReplyReceived
from meta1py.smtpc.captured import CapturedDestinations, CapturedJob, CapturedStream, message_kind
from meta1py.smtps.stages import CONTINUE, Refuse, StageContext, may_follow_greeting, scripted_checks

JOB = CapturedJob("2H5DB836BY2S", "smtp:example.net", "smtp", "example.net")


def _script(queue: Path, *rules: dict[str, object]) -> None:
    test = contract.test_directory(queue)
    test.mkdir(parents=True, exist_ok=True)
    (test / contract.TEST_SCRIPTS_NAME).write_text(json.dumps({"rules": list(rules)}))


async def _reply(stream: CapturedStream, conn: ClientConnection) -> ReplyReceived:
    while True:
        event = conn.next_event()
        if isinstance(event, ReplyReceived):
            return event
        conn.receive_data(await stream.receive_some(65536))


def test_a_scripted_greeting_refuses_the_session(tmp_path: Path) -> None:
    _script(
        tmp_path,
        {"direction": "out", "phase": "connect", "domain": "example.net", "reply": "554 5.7.1 Go away"},
    )

    async def main() -> None:
        stream = CapturedDestinations(tmp_path, "localhost").open(JOB, lmtp=False)
        conn = ClientConnection()
        greeting = await _reply(stream, conn)
        assert (greeting.reply.code, greeting.reply.enhanced, greeting.reply.lines) == (
            554,
            "5.7.1",
            ("Go away",),
        )
        assert stream.transcript == [("S", "554 5.7.1 Go away")]

    trio.run(main)


def test_a_4xx_greeting_is_sent_as_421(tmp_path: Path) -> None:
    _script(tmp_path, {"direction": "out", "phase": "connect", "reply": "450 4.3.2 Busy"})

    async def main() -> None:
        stream = CapturedDestinations(tmp_path, "localhost").open(JOB, lmtp=False)
        assert (await _reply(stream, ClientConnection())).reply.code == 421  # RFC 5321 §3.1

    trio.run(main)


def test_pipelined_commands_get_their_replies_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        stream = CapturedDestinations(tmp_path, "localhost").open(JOB, lmtp=False)
        conn = ClientConnection()
        await _reply(stream, conn)
        await stream.send_all(conn.ehlo("client.test"))
        ehlo = await _reply(stream, conn)
        assert "PIPELINING" in ehlo.reply.lines and "STARTTLS" not in ehlo.reply.lines
        await stream.send_all(conn.mail("a@example.org") + conn.rcpt("b@example.net") + conn.data())
        codes = [(await _reply(stream, conn)).reply.code for _ in range(3)]
        assert codes == [250, 250, 354]
        await stream.send_all(conn.send_data(b"Subject: x\r\n\r\n.hi\r\n") + conn.end_data())
        end = await _reply(stream, conn)
        assert (end.reply.code, end.reply.lines) == (250, ("Ok: captured",))
        assert len(stream.captures) == 1

    trio.run(main)


def test_message_kind_tells_bounces_and_delay_reports_from_messages() -> None:
    def report(action: str) -> bytes:
        return (
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
            b"Final-Recipient: rfc822; a@b.test\r\nAction: "
            + action.encode()
            + b"\r\nStatus: 4.4.1\r\n\r\n--B--\r\n"
        )

    assert message_kind("", report("failed")) == "bounce"
    assert message_kind("", report("delayed")) == "delay"
    assert message_kind("", report("delivered")) == "message"
    assert message_kind("someone@example.org", report("failed")) == "message"  # not from the null sender
    assert message_kind("", b"Subject: plain\r\n\r\nhi\r\n") == "message"


def _context(stage: str, **facts: object) -> StageContext:
    cfg = parse_config("queue_directory = /nonexistent;\n")
    return StageContext(
        stage=stage,  # type: ignore[arg-type]
        session_id="1",
        service=cfg.smtps[0],
        client_address="127.0.0.1",
        helo="client.test",
        esmtp=True,
        tls=None,
        authenticated=None,
        **facts,  # type: ignore[arg-type]
    )


def test_smtps_in_rules_refuse_and_leave_the_greeting_shortcut_alone(tmp_path: Path) -> None:
    from meta1py.smtp.address import parse_path

    checks = scripted_checks(tmp_path)
    (connect,) = checks.connect
    assert may_follow_greeting(connect) is True  # no rule: the greeting need not wait
    _script(
        tmp_path,
        {"direction": "in", "phase": "rcpt", "to": "fail@x.test", "reply": "550 5.1.1 No such user"},
        {"direction": "in", "phase": "data", "to": "big@x.test", "reply": "552 5.3.4 Too big"},
    )
    assert may_follow_greeting(connect) is True
    (rcpt,) = checks.rcpt
    (eom,) = checks.eom

    async def main() -> None:
        refused = await rcpt(_context("rcpt", recipient=parse_path("<fail@x.test>")))
        assert isinstance(refused, Refuse) and str(refused.reply) == "550 5.1.1 No such user"
        assert await rcpt(_context("rcpt", recipient=parse_path("<ok@x.test>"))) is CONTINUE
        at_eom = await eom(_context("eom", recipients=("ok@x.test", "big@x.test")))
        assert isinstance(at_eom, Refuse) and at_eom.reply.code == 552

    trio.run(main)
    _script(tmp_path, {"direction": "in", "phase": "connect", "client": "127.0.0.1", "reply": "554 5.7.1 No"})
    assert may_follow_greeting(connect) is False
