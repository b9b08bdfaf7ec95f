"""``home_mailbox = Maildir/;`` end to end, in production mode (issue 20).

The real daemon runs as root with its four worker users. A throw-away user with a home under
/tmp stands for a real user of the host: mail to ``user@localhost`` must land in
``~user/Maildir/new``, owned by the user, mode 0600, while the virtual ``mail_directory`` gets
nothing; mail to root still goes to ``mail_directory`` (Postfix never delivers as root); without
``home_mailbox`` the same user's mail goes to ``mail_directory`` as before.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll
from meta1py_testing.users import local_user, public_directory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="a real user account and its home need root"),
]


@pytest.fixture
def top() -> Iterator[Path]:
    with public_directory() as directory:
        yield directory


def send(daemon: Meta1Daemon, rcpt: str, subject: str) -> None:
    message = f"From: sender@localhost\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        client.sendmail("sender@localhost", [rcpt], message)


def files(new: Path) -> list[Path]:
    return sorted(new.iterdir()) if new.is_dir() else []


def virtual(daemon: Meta1Daemon, user: str) -> list[Path]:
    return files(daemon.mail_directory / "localhost" / user / "new")


def test_a_users_mail_lands_in_the_home_maildir_as_the_user(
    make_daemon: Callable[..., Meta1Daemon], top: Path
) -> None:
    with local_user(top) as user:
        name = user.pw_name
        new = Path(user.pw_dir) / "Maildir" / "new"
        daemon = make_daemon("home_mailbox = Maildir/;\nlocal_domains = { localhost };\n")
        with daemon:
            send(daemon, f"{name}@localhost", "to the home")
            send(daemon, "root@localhost", "to root")
            (delivered,) = poll(lambda: files(new) or None, 60, "the message in ~user/Maildir/new")
            (root_copy,) = poll(lambda: virtual(daemon, "root") or None, 60, "root's virtual Maildir")
            # smtpc logs the delivery just after the file lands: wait for the line itself.
            line = f"maildir {user.pw_dir}/Maildir as {name} (uid {user.pw_uid}): 250"
            daemon.wait_for_log(re.escape(line), 30)
            assert virtual(daemon, name) == []
            # root's mail is the worker's, in mail_directory, as before.
            assert root_copy.stat().st_uid != 0 and b"Subject: to root" in root_copy.read_bytes()
        st = delivered.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (user.pw_uid, user.pw_gid, 0o600)
        assert (Path(user.pw_dir) / "Maildir").stat().st_mode & 0o777 == 0o700
        parsed = email.message_from_bytes(delivered.read_bytes(), policy=email.policy.default)
        assert parsed["Return-Path"] == "<sender@localhost>"
        assert parsed["Delivered-To"] == f"{name}@localhost"
        assert parsed["Subject"] == "to the home"


def test_without_home_mailbox_nothing_changes(make_daemon: Callable[..., Meta1Daemon], top: Path) -> None:
    with local_user(top) as user:
        name = user.pw_name
        daemon = make_daemon("local_domains = { localhost };\n")
        with daemon:
            send(daemon, f"{name}@localhost", "to the mailbox")
            (delivered,) = poll(lambda: virtual(daemon, name) or None, 60, "the virtual Maildir")
            assert b"Subject: to the mailbox" in delivered.read_bytes()
        assert not (Path(user.pw_dir) / "Maildir").exists()
