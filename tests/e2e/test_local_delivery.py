"""aliases(5) commands and files end to end, in production mode (issue 20).

The real daemon runs as root with its four worker users; an aliases file as a Debian host has
one (root-owned) pipes mail to a command and appends it to a file, and an ``:include:`` list
owned by an ordinary user names a command of its own. The commands write ``id -u`` and the
message where the test reads them: the alias's command runs as ``nobody`` (``default_privs``, as
Postfix runs the targets of a root-owned aliases file), the include file's as its owner; the file
is appended in mbox form and belongs to ``nobody``. Without ``allow_mail_to_commands`` and
``allow_mail_to_files`` the same aliases bounce with Postfix's "mail to command is restricted",
and an SMTP client that names a command as a recipient is refused at RCPT TO; in neither case
does anything run.
"""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll, proc_ids
from meta1py_testing.users import local_user, public_directory

pytestmark = pytest.mark.e2e

NOBODY = pwd.getpwnam("nobody")
ROOT = os.geteuid() == 0
ALIASES = """\
# as on a Debian host, plus deliveries to a command, a file and an include list
mailer-daemon: postmaster
postmaster:    root
root:          admin
admin:         admin
sender:        sender
pipe:          "|id -u > {out}/pipe.uid; cat > {out}/pipe.msg"
archive:       {out}/archive.mbox
staff:         :include:{top}/staff.list
"""


@pytest.fixture
def top() -> Iterator[Path]:
    with public_directory() as directory:
        out = directory / "out"
        out.mkdir()
        out.chmod(0o1777)
        yield directory


def message(subject: str) -> bytes:
    return (
        b"From: sender@localhost\r\nTo: someone@localhost\r\nSubject: " + subject.encode() + b"\r\n\r\n"
        b"From the first line of the body\r\nsecond line\r\n"
    )


def send(daemon: Meta1Daemon, rcpt: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        client.sendmail("sender@localhost", [rcpt], message(subject))


def maildir(daemon: Meta1Daemon, user: str) -> list[Path]:
    new = daemon.mail_directory / "localhost" / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def write_aliases(daemon: Meta1Daemon, top: Path) -> None:
    aliases = daemon.dir / "aliases"
    aliases.write_text(ALIASES.format(out=top / "out", top=top))
    aliases.chmod(0o644)


def test_pipe_file_and_include_aliases_run_as_their_owners(
    make_daemon: Callable[..., Meta1Daemon], top: Path
) -> None:
    out = top / "out"
    with local_user(top) if ROOT else _no_user() as owner:
        listing = top / "staff.list"
        listing.write_text(f'# kept by the staff\n"|id -u > {out}/staff.uid"\n')
        if owner is not None:
            os.chown(listing, owner.pw_uid, owner.pw_gid)
        daemon = make_daemon(
            "allow_mail_to_commands = { alias, include };\nallow_mail_to_files = { alias };\n",
            sections={"smar": "aliases = ../aliases;"},
        )
        write_aliases(daemon, top)
        with daemon:
            send(daemon, "pipe@localhost", "to the command")
            send(daemon, "archive@localhost", "to the file")
            send(daemon, "Staff@localhost", "to the list")
            # An SMTP client cannot name a command or a file, quoted or not.
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
                client.ehlo("client.example")
                client.mail("sender@localhost")
                for rcpt in (f'"|touch {out}/smtp"@localhost', f"{out}/smtp@localhost", "|/bin/sh@localhost"):
                    code, text = client.rcpt(rcpt)
                    assert (code, text[:5]) == (550, b"5.1.3"), (rcpt, code, text)
                    assert b"a command or file name is not a mail address" in text

            uid = poll(lambda: _complete(out / "pipe.uid"), 60, "the pipe alias's command")
            msg = poll(lambda: _complete(out / "pipe.msg"), 60, "the message the command read")
            mbox = poll(lambda: _complete(out / "archive.mbox", b"\n\n"), 60, "the file alias's mbox")
            staff_uid = poll(lambda: _complete(out / "staff.uid"), 60, "the include file's command")
            expected = ("delivered to command: id -u", f"delivered to file: {out}/archive.mbox")
            poll(lambda: _logged(daemon, expected), 30, "the command and file deliveries logged")
            # smtpc itself runs unprivileged; its helper, started before smtpc dropped, is root.
            smtpc = daemon.worker_pid("smtpc")
            (helper,) = _children(smtpc, b"meta1py.smtpc.runas")
            if ROOT:
                assert 0 not in proc_ids(smtpc)["Uid"]
                assert proc_ids(helper)["Uid"] == (0, 0, 0, 0)
        # The aliases file is root's: its targets ran as default_privs (nobody), the include
        # list's as the user who owns it.
        expected_uid = NOBODY.pw_uid if ROOT else os.getuid()
        assert int(uid) == expected_uid
        assert int(staff_uid) == (owner.pw_uid if owner is not None else os.getuid())
        assert (out / "archive.mbox").stat().st_uid == expected_uid
        assert msg.startswith(b"From sender@localhost  ")
        parsed = email.message_from_bytes(msg.split(b"\n", 1)[1], policy=email.policy.default)
        assert parsed["Return-Path"] == "<sender@localhost>"
        assert parsed["Delivered-To"] == "pipe@localhost"
        assert parsed["Subject"] == "to the command"
        assert parsed.get_content() == "From the first line of the body\nsecond line\n"
        assert mbox.startswith(b"From sender@localhost  ")
        assert b"\nDelivered-To: archive@localhost\n" in mbox
        assert b"\n\n>From the first line of the body\nsecond line\n\n" in mbox
        assert not (out / "smtp").exists()


@pytest.mark.skipif(not ROOT, reason=".forward files belong to local users: needs root")
def test_a_users_forward_file_runs_as_the_user(make_daemon: Callable[..., Meta1Daemon], top: Path) -> None:
    out = top / "out"
    with local_user(top) as user:
        name = user.pw_name
        forward = Path(user.pw_dir) / ".forward"
        forward.write_text(f'\\{name}, "|id -u > {out}/forward.uid"\n')
        os.chown(forward, user.pw_uid, user.pw_gid)
        daemon = make_daemon(
            'allow_mail_to_commands = { forward };\nforward_path = { "$home/.forward" };\n',
            sections={"smar": "aliases = ../aliases;"},
        )
        write_aliases(daemon, top)
        with (daemon.dir / "aliases").open("a") as aliases:
            aliases.write(f"{name}: {name}\n")
        with daemon:
            send(daemon, f"{name}@localhost", "to the user")
            uid = poll(lambda: _complete(out / "forward.uid"), 60, "the .forward command")
            # "\\user" in the .forward keeps a copy in the mailbox.
            (copy,) = poll(lambda: maildir(daemon, name) or None, 60, "the mailbox copy")
            assert b"Subject: to the user" in copy.read_bytes()
        assert int(uid) == user.pw_uid


def test_commands_and_files_bounce_unless_allowed(make_daemon: Callable[..., Meta1Daemon], top: Path) -> None:
    out = top / "out"
    daemon = make_daemon(sections={"smar": "aliases = cdb:../aliases;"})
    write_aliases(daemon, top)
    # newaliases compiles the aliases file as smar reads it (cdb here), quoted commands included.
    compiled = subprocess.run(
        [sys.executable, "-m", "meta1py", "newaliases", "-f", str(daemon.conf_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compiled.returncode == 0, compiled.stderr
    assert "8 aliases compiled" in compiled.stdout
    with daemon:
        send(daemon, "pipe@localhost", "to the command")
        send(daemon, "archive@localhost", "to the file")
        bounces = poll(lambda: m if len(m := maildir(daemon, "sender")) >= 2 else None, 60, "two bounces")
        reports = b"".join(path.read_bytes() for path in bounces)
    assert b"mail to command is restricted" in reports
    assert b"mail to file is restricted" in reports
    assert b"Status: 5.7.1" in reports
    # Reported under the alias, as Postfix does, with the target beside it.
    assert b"Final-Recipient: rfc822; pipe@localhost\n" in reports
    assert (
        f'<archive@localhost> ("{out}/archive.mbox"): 550 5.7.1 mail to file is restricted'.encode()
        in reports
    )
    assert not list(out.iterdir())


def _children(pid: int, marker: bytes) -> list[int]:
    """The child processes of ``pid`` whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and marker in cmdline:
            found.append(int(entry))
    return found


def _logged(daemon: Meta1Daemon, texts: tuple[str, ...]) -> bool:
    """Whether the log holds each of ``texts`` (smtpc writes its line after the helper's answer,
    so after the file the test saw)."""
    log = daemon.log_text()
    return all(text in log for text in texts)


def _complete(path: Path, end: bytes = b"\n") -> bytes | None:
    """The file's bytes once it ends with ``end`` (written whole), else None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return data if data.endswith(end) else None


class _no_user:
    """Without root there are no accounts to make: everything runs as the invoking user."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
