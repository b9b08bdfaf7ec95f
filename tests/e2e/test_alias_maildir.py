"""aliases(5) Maildir targets (``/path/``, Postfix's Maildir form) end to end, in production mode.

The real daemon runs as root with its four worker users; a root-owned aliases file names
``archive: /<tmp>/out/archive/``. With ``allow_mail_to_files = { alias }`` a message sent over
SMTP lands in ``archive/new/`` as a Maildir file, written as ``nobody`` (``default_privs``, as
for an mbox file target of a root-owned aliases file), mode 0600, with ``Return-Path:`` and
``Delivered-To:`` and no mbox ``From`` line. Without it the recipient bounces with Postfix's
"mail to file is restricted" and nothing is written.
"""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.users import public_directory

pytestmark = pytest.mark.e2e

NOBODY = pwd.getpwnam("nobody")
ROOT = os.geteuid() == 0
ALIASES = """\
postmaster: root
root:       admin
admin:      admin
sender:     sender
archive:    {out}/archive/
"""
MESSAGE = (
    b"From: sender@localhost\r\nTo: archive@localhost\r\nSubject: to the Maildir\r\n"
    b"Return-Path: <forged@evil.test>\r\n\r\n"
    b"From the first line of the body\r\nsecond line\r\n"
)


@pytest.fixture
def out() -> Iterator[Path]:
    with public_directory() as top:
        directory = top / "out"
        directory.mkdir()
        directory.chmod(0o1777)
        yield directory


def start(make_daemon: Callable[..., Meta1Daemon], out: Path, options: str) -> Meta1Daemon:
    daemon = make_daemon(options, sections={"smar": "aliases = ../aliases;"})
    aliases = daemon.dir / "aliases"
    aliases.write_text(ALIASES.format(out=out))
    aliases.chmod(0o644)
    return daemon


def send(daemon: Meta1Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        client.sendmail("sender@localhost", ["archive@localhost"], MESSAGE)


def files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def test_a_maildir_alias_gets_the_message_as_default_privs(
    make_daemon: Callable[..., Meta1Daemon], out: Path
) -> None:
    daemon = start(make_daemon, out, "allow_mail_to_files = { alias };\n")
    archive = out / "archive"
    with daemon:
        send(daemon)
        (delivered,) = poll(lambda: files(archive / "new") or None, 60, "the Maildir alias's file")
        log = poll(
            lambda: text if "delivered to maildir as" in (text := daemon.log_text()) else None,
            30,
            "the delivery logged",
        )
    # The aliases file is root's: the Maildir is written as default_privs (nobody).
    expected_uid = NOBODY.pw_uid if ROOT else os.getuid()
    st = delivered.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (expected_uid, 0o600)
    for d in (archive, archive / "tmp", archive / "new", archive / "cur"):
        assert (d.stat().st_uid, d.stat().st_mode & 0o777) == (expected_uid, 0o700), d
    assert files(archive / "tmp") == []
    assert f"delivered to maildir as {delivered.name}" in log
    data = delivered.read_bytes()
    assert not data.startswith(b"From ")
    assert b"\r" not in data
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed.get_all("Return-Path") == ["<sender@localhost>"]  # the envelope's, not the client's
    assert parsed["Delivered-To"] == "archive@localhost"
    assert parsed["Subject"] == "to the Maildir"
    assert parsed.get_content() == "From the first line of the body\nsecond line\n"


def test_a_maildir_alias_bounces_unless_files_are_allowed(
    make_daemon: Callable[..., Meta1Daemon], out: Path
) -> None:
    daemon = start(make_daemon, out, "")
    sender_new = daemon.mail_directory / "localhost" / "sender" / "new"
    with daemon:
        send(daemon)
        (bounce,) = poll(lambda: files(sender_new) or None, 60, "the bounce")
        report = bounce.read_bytes()
    assert b"Status: 5.7.1" in report
    assert f'<archive@localhost> ("{out}/archive/"): 550 5.7.1 mail to file is restricted'.encode() in report
    assert files(out) == []
