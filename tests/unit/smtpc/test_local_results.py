"""What smtpc makes of a command's or a file's outcome (Postfix's statuses), and the
environment a command gets."""

from __future__ import annotations

import errno

import pytest

from meta1py.rpc.messages import SmtpReplyValue
from meta1py.smtpc.local import _environment, command_result, file_result


def status(reply: SmtpReplyValue) -> tuple[int, str]:
    return reply.code, reply.enhanced


@pytest.mark.parametrize(
    ("result", "expected", "text"),
    [
        ({"exit": 0, "output": ""}, (250, "2.0.0"), "delivered to command: /bin/x"),
        (
            {"exit": 1, "output": "no\nway"},
            (550, "5.3.0"),
            'Command died with status 1: "/bin/x". Command output: no way',
        ),
        ({"exit": 75, "output": ""}, (451, "4.3.0"), 'temporary failure: "/bin/x"'),
        ({"exit": 67, "output": ""}, (550, "5.1.1"), 'user unknown: "/bin/x"'),
        ({"exit": 77, "output": ""}, (550, "5.7.0"), 'permission denied: "/bin/x"'),
        ({"exit": None, "signal": 9, "output": ""}, (451, "4.3.0"), 'Command died with signal 9: "/bin/x"'),
        (
            {"exit": None, "timeout": True, "output": "slow"},
            (550, "5.3.0"),
            'Command time limit exceeded: "/bin/x". Command output: slow',
        ),
        ({"refused": "bad uid"}, (451, "4.3.5"), "local delivery refused: bad uid"),
        ({"error": "PermissionError: x"}, (451, "4.3.0"), "local delivery failed: PermissionError: x"),
    ],
)
def test_command_statuses_follow_postfix(
    result: dict[str, object], expected: tuple[int, str], text: str
) -> None:
    reply = command_result("/bin/x", result)
    assert status(reply) == expected
    assert reply.text == text


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (errno.ENOSPC, (452, "4.2.2")),
        (errno.EDQUOT, (452, "4.2.2")),
        (errno.EAGAIN, (451, "4.3.0")),
        (errno.EACCES, (550, "5.2.0")),
        (errno.ELOOP, (550, "5.2.0")),
    ],
)
def test_file_statuses(err: int, expected: tuple[int, str]) -> None:
    reply = file_result("/var/mail/x", {"errno": err, "error": "why", "stage": "open"})
    assert status(reply) == expected
    assert reply.text == "cannot append message to file /var/mail/x: why"
    assert status(file_result("/var/mail/x", {"ok": True})) == (250, "2.0.0")


def test_maildir_file_statuses_use_postfixs_maildir_words() -> None:
    # A file target ending in "/" is a Maildir: local(8)'s texts, the same statuses as a file.
    reply = file_result("/var/mail/archive/", {"ok": True, "name": "1.M2P3Q4.mx"})
    assert (status(reply), reply.text) == ((250, "2.0.0"), "delivered to maildir as 1.M2P3Q4.mx")
    reply = file_result("/var/mail/archive/", {"errno": errno.ELOOP, "error": "why", "stage": "mkdir"})
    assert (status(reply), reply.text) == ((550, "5.2.0"), "maildir delivery failed: /var/mail/archive/: why")
    reply = file_result("/var/mail/archive/", {"errno": errno.ENOSPC, "error": "full", "stage": "write"})
    assert status(reply) == (452, "4.2.2")


def test_environment_is_postfixs_and_censored() -> None:
    env = _environment(
        "tickets+urgent@example.org",
        "eve$(reboot)@evil.test",
        "rfc822;Tickets+Urgent@Example.org",
        "/home/t",
        "t",
        "",
    )
    assert env == {
        "HOME": "/home/t",
        "LOGNAME": "t",
        "USER": "t",
        "SHELL": "/bin/sh",
        "PATH": "/usr/bin:/bin",
        "SENDER": "eve__reboot_@evil.test",
        "RECIPIENT": "tickets+urgent@example.org",
        "LOCAL": "tickets+urgent",
        "DOMAIN": "example.org",
        "EXTENSION": "urgent",
        "ORIGINAL_RECIPIENT": "Tickets+Urgent@Example.org",
    }
