"""smtpc in test mode: every SMTP and LMTP delivery goes to a captured destination (issue 21).

smtpc's real delivery agents run against the captured server; the hosts smar named are never
connected to (the route points at 127.0.0.1:9, where nothing listens). Each test checks what
qmgr would get back (the per-recipient results) and what the capture store holds.
"""

from __future__ import annotations

import email
import json
from pathlib import Path

import trio

from meta1py import contract
from meta1py.conf import Config, parse_config
from meta1py.contract import TEST_SCRIPTS_NAME
from meta1py.queue.content import ContentWriter
from meta1py.rpc.messages import SmarRouteValue, SmtpcDeliveryReply
from meta1py.smtpc.delivery import DeliveryAgents
from meta1py.testmode.capture import CaptureStore
from meta1py_testing.jobs import delivery_request, smtp_route

NOWHERE = smtp_route("smtp:example.net", ("mx.example.net", "127.0.0.1", 9))
MESSAGE = b"From: a@example.org\r\nSubject: captured\r\n\r\nline one\r\n.starts with a dot\r\n..two dots\r\n"


def _config(tmp_path: Path, extra: str = "") -> Config:
    return parse_config(f"queue_directory = {tmp_path};\ntest_mode {{ enable = yes; }}\n{extra}")


def _queue(tmp_path: Path, message: bytes = MESSAGE) -> str:
    writer = ContentWriter(tmp_path)
    writer.write(message)
    writer.close_unsynced()
    return writer.qid


def _script(tmp_path: Path, *rules: dict[str, object]) -> None:
    test = contract.test_directory(tmp_path)
    test.mkdir(parents=True, exist_ok=True)
    (test / TEST_SCRIPTS_NAME).write_text(json.dumps({"rules": list(rules)}))


def _store(tmp_path: Path) -> CaptureStore:
    return CaptureStore(contract.test_directory(tmp_path) / "messages")


async def _deliver(
    agents: DeliveryAgents,
    qid: str,
    rcpts: list[str],
    route: SmarRouteValue = NOWHERE,
    sender: str = "a@example.org",
) -> SmtpcDeliveryReply:
    with trio.fail_after(20):
        return await agents.deliver(delivery_request(qid, route, rcpts, size=len(MESSAGE), sender=sender))


async def test_a_delivery_is_captured_with_its_transcript_and_the_message_as_sent(tmp_path: Path) -> None:
    agents = DeliveryAgents(_config(tmp_path))
    qid = _queue(tmp_path)
    reply = await _deliver(agents, qid, ["b@example.net", "c@example.net"])
    assert [r.status for r in reply.results] == ["ok", "ok"]
    assert reply.results[0].reply.code == 250
    assert reply.results[0].remote_mta == "mx.example.net"
    store = _store(tmp_path)
    (record,) = store.records()
    assert store.message(record["id"]) == MESSAGE  # dot-unstuffed: exactly the queued content
    assert record["qid"] == qid
    assert record["mail_from"] == "a@example.org"
    assert record["rcpt_to"] == ["b@example.net", "c@example.net"]
    assert record["destination"] == "smtp:example.net"
    assert record["transport"] == "smtp"
    assert record["kind"] == "message"
    assert [r["status"] for r in record["recipients"]] == ["delivered", "delivered"]
    lines = [tuple(t) for t in record["transcript"]]
    assert lines[0][0] == "S" and lines[0][1].startswith("220 ")
    assert ("C", "EHLO localhost") in lines or any(w == "C" and t.startswith("EHLO ") for w, t in lines)
    assert ("S", "250-PIPELINING") in lines
    assert not any("STARTTLS" in t for _w, t in lines)
    assert ("C", "MAIL FROM:<a@example.org> SIZE=" + str(len(MESSAGE))) in lines
    assert ("C", "RCPT TO:<c@example.net>") in lines
    assert ("C", "DATA") in lines
    assert ("C", f"[message: {len(MESSAGE)} octets]") in lines
    assert lines[-1] == ("S", "250 2.0.0 Ok: captured")


async def test_out_rules_defer_a_domain_once_then_let_it_through(tmp_path: Path) -> None:
    _script(
        tmp_path,
        {"direction": "out", "phase": "rcpt", "domain": "slow.test", "times": 1, "reply": "451 4.4.1 Slow"},
    )
    agents = DeliveryAgents(_config(tmp_path))
    qid = _queue(tmp_path)
    first = await _deliver(agents, qid, ["x@slow.test", "y@fast.test"])
    assert [(r.status, r.reply.code, r.reply.text) for r in first.results] == [
        ("temp", 451, "Slow"),
        ("ok", 250, "Ok: captured"),
    ]
    (record,) = _store(tmp_path).records()
    assert record["rcpt_to"] == ["y@fast.test"]
    assert {r["address"]: r["status"] for r in record["recipients"]} == {
        "x@slow.test": "deferred",
        "y@fast.test": "delivered",
    }
    again = await _deliver(agents, qid, ["x@slow.test"])
    assert [r.status for r in again.results] == ["ok"]
    assert len(list(_store(tmp_path).records())) == 2


async def test_a_refused_sender_bounces_every_recipient_and_captures_nothing(tmp_path: Path) -> None:
    _script(tmp_path, {"direction": "out", "phase": "mail", "from": "a@example.org", "reply": "550 5.7.1 No"})
    agents = DeliveryAgents(_config(tmp_path))
    reply = await _deliver(agents, _queue(tmp_path), ["b@example.net", "c@example.net"])
    assert [(r.status, r.reply.code) for r in reply.results] == [("perm", 550), ("perm", 550)]
    assert list(_store(tmp_path).records()) == []


async def test_a_data_rule_for_one_recipient_refuses_the_message(tmp_path: Path) -> None:
    _script(
        tmp_path, {"direction": "out", "phase": "data", "to": "c@example.net", "reply": "552 5.3.4 Too big"}
    )
    agents = DeliveryAgents(_config(tmp_path))
    reply = await _deliver(agents, _queue(tmp_path), ["b@example.net", "c@example.net"])
    assert [(r.status, r.reply.code) for r in reply.results] == [("perm", 552), ("perm", 552)]
    assert list(_store(tmp_path).records()) == []


async def test_a_greeting_that_hangs_past_io_timeout_defers(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    _script(
        tmp_path,
        {"direction": "out", "phase": "connect", "domain": "hang.test", "hang": 300, "reply": "220 ok"},
    )
    agents = DeliveryAgents(_config(tmp_path, "smtpc { io_timeout = 30s; }\n"))
    with trio.fail_after(100):
        reply = await agents.deliver(delivery_request(_queue(tmp_path), NOWHERE, ["z@hang.test"]))
    (result,) = reply.results
    assert (result.status, result.reply.code) == ("temp", 421)
    assert "timeout waiting for reply" in result.reply.text
    assert reply.session_failed


async def test_a_hang_without_reply_closes_the_connection(tmp_path: Path) -> None:
    _script(tmp_path, {"direction": "out", "phase": "rcpt", "to": "z@example.net", "hang": 0.05})
    agents = DeliveryAgents(_config(tmp_path))
    reply = await _deliver(agents, _queue(tmp_path), ["z@example.net"])
    (result,) = reply.results
    assert (result.status, result.reply.code) == ("temp", 421)
    assert "connection closed by server" in result.reply.text


async def test_lmtp_gets_one_reply_per_recipient_after_the_data(tmp_path: Path) -> None:
    _script(
        tmp_path,
        {"direction": "out", "phase": "data", "to": "x@lmtp.test", "reply": "452 4.2.2 Mailbox full"},
    )
    agents = DeliveryAgents(_config(tmp_path))
    route = SmarRouteValue(
        status="ok",
        transport="lmtp",
        destination="lmtp:unix:/nonexistent",
        hosts=(),
        path="/nonexistent",
        reply=None,
    )
    reply = await _deliver(agents, _queue(tmp_path), ["x@lmtp.test", "y@lmtp.test"], route=route)
    assert [(r.status, r.reply.code) for r in reply.results] == [("temp", 452), ("ok", 250)]
    (record,) = _store(tmp_path).records()
    assert record["transport"] == "lmtp"
    assert record["rcpt_to"] == ["y@lmtp.test"]
    assert any(w == "C" and t.startswith("LHLO ") for w, t in record["transcript"])


async def test_a_null_sender_delivery_status_report_is_a_bounce(tmp_path: Path) -> None:
    report = (
        b"From: MAILER-DAEMON@localhost\r\nTo: a@example.net\r\nSubject: Undelivered Mail\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nIt failed.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; localhost\r\n\r\n"
        b"Final-Recipient: rfc822; x@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--B--\r\n"
    )
    agents = DeliveryAgents(_config(tmp_path))
    reply = await _deliver(agents, _queue(tmp_path, report), ["a@example.net"], sender="")
    assert [r.status for r in reply.results] == ["ok"]
    (record,) = _store(tmp_path).records()
    assert record["kind"] == "bounce"
    assert record["mail_from"] == ""
    assert (
        email.message_from_bytes(_store(tmp_path).message(record["id"]) or b"")["Subject"]
        == "Undelivered Mail"
    )


async def test_maildir_deliveries_are_delivered_and_captured(tmp_path: Path) -> None:
    maildir = tmp_path / "mail" / "u"
    agents = DeliveryAgents(_config(tmp_path))
    route = SmarRouteValue(
        status="ok", transport="maildir", destination="maildir:u", hosts=(), path=str(maildir), reply=None
    )
    reply = await _deliver(agents, _queue(tmp_path), ["u@localhost"], route=route)
    assert [r.status for r in reply.results] == ["ok"]
    assert len(list((maildir / "new").iterdir())) == 1
    (record,) = _store(tmp_path).records()
    assert (record["transport"], record["rcpt_to"], record["transcript"]) == ("maildir", ["u@localhost"], [])
    assert _store(tmp_path).message(record["id"]) == MESSAGE


async def test_outside_test_mode_nothing_is_captured(tmp_path: Path) -> None:
    agents = DeliveryAgents(parse_config(f"queue_directory = {tmp_path};\n"))
    assert agents.captured is None
    reply = await _deliver(agents, _queue(tmp_path), ["b@example.net"])
    assert reply.results[0].status == "temp"  # 127.0.0.1:9 refuses: a real connection was tried
    assert not contract.test_directory(tmp_path).exists()
