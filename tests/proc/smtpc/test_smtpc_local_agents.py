"""smtpc's command and file agents with the real root helper (meta1py.smtpc.runas).

Each test starts the helper as smtpc's prepare does, hands smtpc the request qmgr would send for a
``pipe`` or ``file`` route, and looks at what the command left behind or what the file holds, and
at the status smtpc reports. As root the helper runs them as ``nobody`` (or another account);
without root every delivery runs as the invoking user and the uid checks are skipped.
"""

from __future__ import annotations

import os
import pwd
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meta1py.conf import Config, parse_config
from meta1py.maps.aliases import local_target_address
from meta1py.queue.content import ContentWriter
from meta1py.rpc.messages import SmarLocalDeliveryValue, SmarRouteValue, SmtpcRecipientResult
from meta1py.smtpc.delivery import DeliveryAgents
from meta1py.smtpc.local import LocalHelper
from meta1py_testing.daemon import poll
from meta1py_testing.jobs import delivery_request
from meta1py_testing.users import public_directory

LIMIT_S = 30
ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody")
MESSAGE = b"Subject: to the helper\r\n\r\nFrom here on\r\nbody line\r\n"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user can write in (commands as nobody leave their output here)."""
    with public_directory() as top:
        out = top / "out"
        out.mkdir()
        out.chmod(0o1777)
        yield out


def config(queue: Path, extra: str = "") -> Config:
    return parse_config(
        f"queue_directory = {queue};\n"
        "allow_mail_to_commands = { alias, include };\n"
        "allow_mail_to_files = { alias };\n" + extra
    )


def queued(queue: Path, message: bytes = MESSAGE) -> str:
    writer = ContentWriter(queue)
    writer.write(message)
    writer.close_unsynced()
    return writer.qid


def route(
    transport: str, target: str, account: pwd.struct_passwd = NOBODY, source: str = "alias"
) -> SmarRouteValue:
    return SmarRouteValue(
        status="ok",
        transport=transport,  # type: ignore[arg-type]
        destination=f"{transport}:{account.pw_name}",
        hosts=(),
        path=target,
        reply=None,
        local=SmarLocalDeliveryValue(
            user=account.pw_name,
            uid=account.pw_uid,
            gid=account.pw_gid,
            home=account.pw_dir,
            shell=account.pw_shell,
            source=source,  # type: ignore[arg-type]
        ),
    )


async def deliver(
    cfg: Config, qid: str, rt: SmarRouteValue, origin: str = "tickets@localhost"
) -> SmtpcRecipientResult:
    kind = "command" if rt.transport == "pipe" else "file"
    assert rt.path is not None
    address = local_target_address(origin, kind, rt.path)
    helper = LocalHelper.start(cfg)
    try:
        agents = DeliveryAgents(cfg, local_helper=helper)
        with trio.fail_after(LIMIT_S):
            reply = await agents.deliver(delivery_request(qid, rt, [address], sender="alice@example.org"))
    finally:
        helper.close()
    (result,) = reply.results
    return result


async def test_a_command_runs_as_nobody_with_the_message_on_stdin(tmp_path: Path, shared: Path) -> None:
    cfg = config(tmp_path)
    qid = queued(tmp_path)
    command = f"id -u > {shared}/uid; echo $RECIPIENT $SENDER $EXTENSION > {shared}/env; cat > {shared}/msg"
    result = await deliver(cfg, qid, route("pipe", command), origin="tickets+new@localhost")
    assert (result.status, result.reply.code, result.reply.enhanced) == ("ok", 250, "2.0.0")
    assert result.reply.text == f"delivered to command: {command}"
    if ROOT:
        assert (shared / "uid").read_text().strip() == str(NOBODY.pw_uid)
        assert (shared / "msg").stat().st_uid == NOBODY.pw_uid
    assert (shared / "env").read_text().split() == ["tickets+new@localhost", "alice@example.org", "new"]
    lines = (shared / "msg").read_bytes().split(b"\n")
    assert lines[0].startswith(b"From alice@example.org  ")
    assert lines[1:] == [
        b"Return-Path: <alice@example.org>",
        b"Delivered-To: tickets+new@localhost",
        b"Subject: to the helper",
        b"",
        b"From here on",  # commands get the message unquoted
        b"body line",
        b"",
    ]


async def test_a_file_gets_the_message_in_mbox_form_as_its_user(tmp_path: Path, shared: Path) -> None:
    cfg = config(tmp_path)
    mbox = shared / "archive"
    for _ in range(2):
        result = await deliver(cfg, queued(tmp_path), route("file", str(mbox)))
        assert (result.status, result.reply.code) == ("ok", 250), result
        assert result.reply.text == f"delivered to file: {mbox}"
    st = mbox.stat()
    assert st.st_mode & 0o777 == 0o600
    if ROOT:
        assert st.st_uid == NOBODY.pw_uid
    text = mbox.read_bytes()
    messages = text.split(b"\nFrom alice@example.org  ")
    assert len(messages) == 2 and text.startswith(b"From alice@example.org  ")
    assert (
        b"\nDelivered-To: tickets@localhost\nSubject: to the helper\n\n>From here on\nbody line\n\n" in text
    )
    assert text.endswith(b"body line\n\n")


async def test_a_maildir_target_gets_the_message_as_a_maildir_file(tmp_path: Path, shared: Path) -> None:
    # "/path/" (Postfix's Maildir form of a file target): written into path/new as the account.
    cfg = config(tmp_path)
    maildir = shared / "archive"
    result = await deliver(cfg, queued(tmp_path), route("file", f"{maildir}/"))
    assert (result.status, result.reply.code, result.reply.enhanced) == ("ok", 250, "2.0.0"), result
    (delivered,) = (maildir / "new").iterdir()
    assert result.reply.text == f"delivered to maildir as {delivered.name}"
    st = delivered.stat()
    assert st.st_mode & 0o777 == 0o600
    if ROOT:
        assert (st.st_uid, maildir.stat().st_uid) == (NOBODY.pw_uid, NOBODY.pw_uid)
    assert list((maildir / "tmp").iterdir()) == []
    # No mbox "From " line, no ">From" quoting, no closing empty line: a Maildir file.
    assert delivered.read_bytes() == (
        b"Return-Path: <alice@example.org>\nDelivered-To: tickets@localhost\n"
        b"Subject: to the helper\n\nFrom here on\nbody line\n"
    )
    # A link planted as the Maildir leads nowhere: the delivery bounces, nothing is written.
    outside = shared / "outside"
    (outside / "new").mkdir(parents=True)
    (shared / "planted").symlink_to(outside)
    result = await deliver(cfg, queued(tmp_path), route("file", f"{shared}/planted/"))
    assert (result.status, result.reply.code, result.reply.enhanced) == ("perm", 550, "5.2.0")
    assert (
        result.reply.text == f"maildir delivery failed: {shared}/planted/: Too many levels of symbolic links"
    )
    assert list((outside / "new").iterdir()) == []


async def test_command_failures_have_postfixs_statuses(tmp_path: Path, shared: Path) -> None:
    cfg = config(tmp_path, "command_time_limit = 1s;\n")
    result = await deliver(cfg, queued(tmp_path), route("pipe", "echo no such user >&2; exit 67"))
    assert (result.status, result.reply.code, result.reply.enhanced) == ("perm", 550, "5.1.1")
    assert result.reply.text == 'user unknown: "echo no such user >&2; exit 67". Command output: no such user'
    result = await deliver(cfg, queued(tmp_path), route("pipe", "exit 75"))
    assert (result.status, result.reply.enhanced) == ("temp", "4.3.0")
    result = await deliver(cfg, queued(tmp_path), route("pipe", "exit 3"))
    assert (result.status, result.reply.text) == ("perm", 'Command died with status 3: "exit 3"')
    # Past command_time_limit the command and what it started are killed; the message bounces.
    started = time.monotonic()
    result = await deliver(cfg, queued(tmp_path), route("pipe", f"sleep 60 & echo $! > {shared}/pid; wait"))
    assert time.monotonic() - started < 20
    assert (result.status, result.reply.enhanced) == ("perm", "5.3.0")
    assert result.reply.text.startswith("Command time limit exceeded: ")
    pid = int((shared / "pid").read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return _zombie(pid)

    poll(lambda: gone() or None, LIMIT_S, "the command's background process to be killed")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_a_looping_message_is_refused_and_nothing_runs(tmp_path: Path, shared: Path) -> None:
    cfg = config(tmp_path)
    qid = queued(tmp_path, b"Delivered-To: tickets@localhost\r\n" + MESSAGE)
    result = await deliver(cfg, qid, route("pipe", f"touch {shared}/ran"))
    assert (result.status, result.reply.code, result.reply.enhanced) == ("perm", 554, "5.4.6")
    assert not (shared / "ran").exists()


async def test_files_that_are_links_or_not_writable_bounce(tmp_path: Path, shared: Path) -> None:
    cfg = config(tmp_path)
    target = shared / "elsewhere"
    target.write_bytes(b"")
    (shared / "link").symlink_to(target)
    result = await deliver(cfg, queued(tmp_path), route("file", str(shared / "link")))
    assert (result.status, result.reply.code, result.reply.enhanced) == ("perm", 550, "5.2.0")
    assert target.read_bytes() == b""
    if ROOT:
        closed = shared / "closed"
        closed.write_bytes(b"")
        closed.chmod(0o600)  # root's: nobody may not append
        result = await deliver(cfg, queued(tmp_path), route("file", str(closed)))
        assert result.reply.text == f"cannot append message to file {closed}: Permission denied"
        assert result.status == "perm"


async def test_the_helper_refuses_what_the_configuration_does_not_allow(tmp_path: Path, shared: Path) -> None:
    cfg = config(tmp_path)
    command = f"touch {shared}/ran"
    # A source the options do not allow: smtpc says no before the helper is asked.
    result = await deliver(cfg, queued(tmp_path), route("pipe", command, source="forward"))
    assert (result.status, result.reply.code, result.reply.enhanced) == ("perm", 550, "5.7.1")
    assert result.reply.text == "mail to command is restricted"
    result = await deliver(cfg, queued(tmp_path), route("file", str(shared / "x"), source="include"))
    assert result.reply.text == "mail to file is restricted"
    if ROOT:
        # Root and the worker accounts are refused by the helper itself.
        root = pwd.getpwnam("root")
        result = await deliver(cfg, queued(tmp_path), route("pipe", command, account=root))
        assert (result.status, result.reply.enhanced) == ("temp", "4.3.5")
        assert "refusing to run as uid 0" in result.reply.text
    assert not (shared / "ran").exists()


async def test_the_helper_ends_with_smtpc(tmp_path: Path) -> None:
    helper = LocalHelper.start(config(tmp_path))
    assert helper.process is not None
    helper.sock.close()  # what smtpc's exit does
    status = await trio.to_thread.run_sync(helper.process.wait, LIMIT_S)
    assert status in (0, -signal.SIGKILL)
