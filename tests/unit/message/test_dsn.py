"""RFC 3464 reports as Python's email package (a real MIME parser) reads them."""

import email
import email.policy
import io
from typing import Any

from meta1py.message.dsn import DsnRecipient, build_dsn

ORIGINAL = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody line\r\n.dot\r\n"


def build(ret: str | None = None, limit: int = 50_000) -> email.message.EmailMessage:
    data = build_dsn(
        reporting_mta="mx.example.org",
        postmaster="MAILER-DAEMON@mx.example.org",
        to="a@example.org",
        qid="ABCDEFGHJKMN",
        arrival_time=1_700_000_000,
        now=1_700_000_100,
        envid="env-1",
        ret=ret,
        recipients=[
            DsnRecipient(
                "b@example.net",
                "failed",
                "5.1.1",
                orcpt="rfc822;B@example.net",
                remote_mta="mx.example.net",
                diagnostic="550 5.1.1 <b@example.net>: no such user\r\n",
            ),
            DsnRecipient("c@example.net", "failed", "4.4.7", diagnostic="expired"),
        ],
        original=io.BytesIO(ORIGINAL),
        max_full_bytes=limit,
    )
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_multipart_report_structure() -> None:
    msg = build()
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert "b@example.net" in parts[0].get_content()
    blocks: Any = parts[1].get_payload()
    per_message, rcpt1, rcpt2 = blocks
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_message["Original-Envelope-Id"] == "env-1"
    assert rcpt1["Final-Recipient"] == "rfc822; b@example.net"
    assert rcpt1["Original-Recipient"] == "rfc822;B@example.net"
    assert rcpt1["Action"] == "failed" and rcpt1["Status"] == "5.1.1"
    assert rcpt1["Remote-MTA"] == "dns; mx.example.net"
    assert rcpt1["Diagnostic-Code"] == "smtp; 550 5.1.1 <b@example.net>: no such user"
    assert rcpt2["Status"] == "4.4.7"
    returned: Any = parts[2].get_payload()
    returned = returned[0]
    assert returned["Subject"] == "hi"
    assert msg["To"].addresses[0].addr_spec == "a@example.org"


def test_ret_hdrs_and_size_limit_return_headers_only() -> None:
    for msg in (build(ret="HDRS"), build(limit=10)):
        parts = list(msg.iter_parts())
        assert parts[2].get_content_type() == "text/rfc822-headers"
        text = parts[2].get_content()
        assert "Subject: hi" in text and "body line" not in text


def _report(actions: list[str]) -> email.message.EmailMessage:
    status = {"failed": "5.1.1", "delivered": "2.0.0", "delayed": "4.4.1"}
    data = build_dsn(
        reporting_mta="mx.example.org",
        postmaster="MAILER-DAEMON@mx.example.org",
        to="a@example.org",
        qid="ABCDEFGHJKMN",
        arrival_time=1_700_000_000,
        now=1_700_000_100,
        envid=None,
        ret="HDRS",
        recipients=[
            DsnRecipient(f"r{i}@example.net", action, status[action])  # type: ignore[arg-type]
            for i, action in enumerate(actions)
        ],
        original=io.BytesIO(ORIGINAL),
    )
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_success_only_report_does_not_say_undelivered() -> None:
    msg = _report(["delivered", "delivered"])
    assert msg["Subject"] == "Successful Mail Delivery Report"
    human, status, original = msg.iter_parts()
    text = human.get_content()
    assert "successfully delivered" in text and "could not" not in text
    blocks: Any = status.get_payload()
    assert [b["Action"] for b in blocks[1:]] == ["delivered", "delivered"]
    assert original.get_content_type() == "text/rfc822-headers"
    assert "Undelivered" not in original["Content-Description"]


def test_mixed_failed_and_delivered_report_leads_with_the_failure() -> None:
    msg = _report(["delivered", "failed"])
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    text = next(msg.iter_parts()).get_content()
    assert "could not" in text and "delivered to the other recipients" in text


def test_delayed_only_report_subject() -> None:
    msg = _report(["delayed"])
    assert msg["Subject"].startswith("Delayed Mail")
    assert "still being retried" in next(msg.iter_parts()).get_content()


def test_empty_report_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError):
        _report([])
