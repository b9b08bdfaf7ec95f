"""A bounced command or file is reported under the address whose alias named it, as Postfix does."""

from __future__ import annotations

import email
import email.policy

from meta1py.message.dsn import DsnRecipient, build_dsn


def test_a_command_is_reported_under_its_alias() -> None:
    report = build_dsn(
        reporting_mta="mx.example.org",
        postmaster="MAILER-DAEMON@mx.example.org",
        to="sender@example.net",
        qid="3Q8W4K2XF7TA",
        arrival_time=1_700_000_000.0,
        now=1_700_000_060.0,
        envid=None,
        ret=None,
        recipients=[
            DsnRecipient(
                address="tickets@example.org:|/usr/local/bin/ticket --new",
                action="failed",
                status="5.7.1",
                orcpt="rfc822;tickets@example.org",
                diagnostic="550 5.7.1 mail to command is restricted",
            ),
            DsnRecipient(address="tickets@example.org:/var/spool/t.mbox", action="failed", status="5.2.0"),
        ],
        original=None,
    )
    text = report.decode()
    assert (
        '<tickets@example.org> ("|/usr/local/bin/ticket --new"): 550 5.7.1 mail to command is restricted'
        in text
    )
    assert '<tickets@example.org> ("/var/spool/t.mbox"): status 5.2.0' in text
    status = next(
        part
        for part in email.message_from_bytes(report, policy=email.policy.default).walk()
        if part.get_content_type() == "message/delivery-status"
    )
    blocks = status.as_string()
    assert blocks.count("Final-Recipient: rfc822; tickets@example.org\n") == 2
    assert ":|" not in blocks
