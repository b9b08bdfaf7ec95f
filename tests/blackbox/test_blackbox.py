"""What takes hours on a real MTA, in seconds: meta1py in test mode, driven over SMTP and HTTP only.

See tests/blackbox/conftest.py for the MTA under test; nothing here imports meta1py.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from typing import Any

import pytest
from blackbox_client import Mta

pytestmark = pytest.mark.e2e

SENDER = "sender@blackbox.test"  # a local domain: bounces and warnings come back to a Maildir


def _poll(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _queued(mta: Mta, address: str) -> dict[str, Any] | None:
    for message in mta.api.queue():
        for rcpt in message["recipients"]:
            if rcpt["address"] == address:
                return rcpt  # type: ignore[no-any-return]
    return None


def _report(raw: bytes) -> tuple[email.message.EmailMessage, str]:
    """The message and its delivery-status part's text (RFC 3464)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    status = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    assert status, "no message/delivery-status part"
    return msg, status[0].as_string()


def test_a_message_deferred_three_times_is_then_delivered(clean: Mta) -> None:
    api = clean.api
    api.script(
        {
            "direction": "out",
            "phase": "rcpt",
            "domain": "slow.test",
            "times": 3,
            "reply": "451 4.4.1 Try again later",
        }
    )
    assert clean.send(SENDER, ["x@slow.test"], subject="slow") == {}
    first = _poll(lambda: _queued(clean, "x@slow.test"), 30, "the first attempt")
    _poll(lambda: (_queued(clean, "x@slow.test") or {}).get("attempts", 0) >= 1, 30, "a deferral")
    attempts = [first.get("attempts", 0)]
    for _ in range(12):  # retries double from 5 minutes: three of them fit in a few hours
        api.advance(900)
        rcpt = _queued(clean, "x@slow.test")
        if rcpt is None:
            break
        attempts.append(rcpt["attempts"])
        assert "451 4.4.1" in rcpt["last_reply"]
    else:
        raise AssertionError(f"still queued after 3 hours: {attempts}")
    assert max(attempts) == 3, attempts
    delivered = api.wait(to="x@slow.test")
    assert delivered["subject"] == "slow" and delivered["kind"] == "message"
    assert any(who == "S" and line.startswith("250") for who, line in delivered["transcript"])


def test_a_message_that_expires_bounces_with_an_rfc3464_report(clean: Mta) -> None:
    api = clean.api
    api.script({"direction": "out", "phase": "rcpt", "domain": "dead.test", "reply": "451 4.4.1 Not now"})
    assert clean.send(SENDER, ["gone@dead.test"], subject="doomed") == {}
    _poll(lambda: (_queued(clean, "gone@dead.test") or {}).get("attempts", 0) >= 1, 30, "a deferral")
    api.advance(5 * 86400 + 3600)  # queue_lifetime = 5d
    bounce = api.wait(to=SENDER, kind="bounce")
    assert (
        bounce["from"] in ("", "<>", "MAILER-DAEMON@mx.blackbox.test")
        or bounce["envelope"]["mail_from"] == ""
    )
    status, raw = api.call("GET", f"/messages/{bounce['id']}/raw")
    assert status == 200
    _msg, report = _report(raw)
    assert "Action: failed" in report and "gone@dead.test" in report
    assert _queued(clean, "gone@dead.test") is None


def test_a_delay_warning_is_sent_after_delay_warning_time(clean: Mta) -> None:
    api = clean.api
    api.script({"direction": "out", "phase": "rcpt", "domain": "later.test", "reply": "451 4.4.1 Not now"})
    assert clean.send(SENDER, ["wait@later.test"], subject="patience") == {}
    _poll(lambda: (_queued(clean, "wait@later.test") or {}).get("attempts", 0) >= 1, 30, "a deferral")
    api.advance(5 * 3600)  # delay_warning_time = 4h
    warning = api.wait(to=SENDER, kind="delay")
    _status, raw = api.call("GET", f"/messages/{warning['id']}/raw")
    _msg, report = _report(raw)
    assert "Action: delayed" in report and "wait@later.test" in report
    assert _queued(clean, "wait@later.test") is not None  # still trying


def test_greylisting_defers_a_new_client_then_lets_its_retry_in(clean: Mta) -> None:
    """127.0.0.2 is not a relay client, so it is greylisted (greylisting { delay = 5m })."""
    message = b"From: g@elsewhere.test\r\nSubject: grey\r\n\r\nbody\r\n"
    with clean.smtp(source="127.0.0.2") as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("g@elsewhere.test", ["postmaster@blackbox.test"], message)
    code, text = refused.value.recipients["postmaster@blackbox.test"]
    assert code == 450 and text.startswith(b"4.7.1")
    clean.api.advance(6 * 60)
    with clean.smtp(source="127.0.0.2") as client:
        assert client.sendmail("g@elsewhere.test", ["postmaster@blackbox.test"], message) == {}
    assert clean.api.wait(to="postmaster@blackbox.test")["subject"] == "grey"


def test_one_of_three_recipients_gets_550_the_others_their_mail(clean: Mta) -> None:
    clean.api.script(
        {"direction": "in", "phase": "rcpt", "to": "bad@remote.test", "reply": "550 5.1.1 No such user"}
    )
    refused = clean.send(SENDER, ["ok1@remote.test", "bad@remote.test", "ok2@remote.test"], subject="three")
    assert list(refused) == ["bad@remote.test"]
    assert refused["bad@remote.test"][0] == 550 and refused["bad@remote.test"][1].startswith(b"5.1.1")
    got = clean.api.wait(to="ok1@remote.test")
    assert got["subject"] == "three"
    everyone = {to for m in clean.api.ok("GET", "/messages?subject=three")["messages"] for to in m["to"]}
    assert everyone == {"ok1@remote.test", "ok2@remote.test"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/no/such/route", None, 404),
        ("PUT", "/scripts", b"{not json", 400),
        (
            "PUT",
            "/scripts",
            b'{"rules": [{"direction": "in", "phase": "rcpt", "reply": "999 nonsense"}]}',
            400,
        ),
        ("POST", "/clock/advance?s=-60", None, 400),
        ("POST", "/clock/advance", None, 400),
        ("GET", "/messages/0000000000000000-2222222222ZZ-abcdef", None, 404),
        ("DELETE", "/clock", None, 405),
    ],
)
def test_bad_input_gets_a_4xx_json_error_and_the_mta_keeps_running(
    clean: Mta, method: str, path: str, body: bytes | None, status: int
) -> None:
    got, payload = clean.api.call(method, path, raw=body)
    assert got == status, payload
    assert isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"]
    assert clean.api.ok("GET", "/clock")["offset"] == 0
    with clean.smtp() as client:
        assert client.noop()[0] == 250


def test_waiting_for_a_message_that_never_comes_times_out(clean: Mta) -> None:
    status, payload = clean.api.call("GET", "/messages/wait?to=nobody@never.test&timeout=0.5")
    assert status == 408 and payload == {"error": "timeout"}
