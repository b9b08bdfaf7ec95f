"""smtpc's home Maildir deliveries (``home_mailbox``) through the real root helper.

Each test starts the helper as smtpc's prepare does and hands smtpc the ``maildir`` route smar
gives a local user (``route.local`` with source ``home_mailbox``). As root a throw-away user
stands for the host's real user: the file must land in ``~user/Maildir/new`` owned by the user,
mode 0600, with the same name and headers as our virtual Maildirs; a home that is missing or not
the user's, and a Maildir that is a symbolic link, bounce as Postfix's local(8) bounces them.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meta1py.conf import Config, parse_config
from meta1py.queue.content import ContentWriter
from meta1py.rpc.messages import SmarLocalDeliveryValue, SmarRouteValue, SmtpcRecipientResult
from meta1py.smtpc.delivery import DeliveryAgents
from meta1py.smtpc.local import LocalHelper
from meta1py_testing.jobs import delivery_request
from meta1py_testing.users import local_user, public_directory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="deliveries as another user need root")

LIMIT_S = 30
MESSAGE = b"Subject: home\r\n\r\nbody line\r\n"
#: maildir_unique_name: <sec>.M<usec>P<pid>Q<n>.<host>
NAME = re.compile(r"\d+\.M\d+P\d+Q\d+\.mx\.example\.org")


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    with public_directory() as top, local_user(top) as account:
        yield account


def config(queue: Path) -> Config:
    return parse_config(f"queue_directory = {queue};\nhostname = mx.example.org;\nhome_mailbox = Maildir/;\n")


def queued(queue: Path, message: bytes = MESSAGE) -> str:
    writer = ContentWriter(queue)
    writer.write(message)
    writer.close_unsynced()
    return writer.qid


def route(account: pwd.struct_passwd) -> SmarRouteValue:
    return SmarRouteValue(
        status="ok",
        transport="maildir",
        destination=f"maildir:{account.pw_name}",
        hosts=(),
        path=f"{account.pw_dir}/Maildir",  # as smar writes it
        reply=None,
        local=SmarLocalDeliveryValue(
            user=account.pw_name,
            uid=account.pw_uid,
            gid=account.pw_gid,
            home=account.pw_dir,
            shell=account.pw_shell,
            source="home_mailbox",
        ),
    )


async def deliver(cfg: Config, qid: str, rt: SmarRouteValue, rcpt: str) -> SmtpcRecipientResult:
    helper = LocalHelper.start(cfg)
    try:
        agents = DeliveryAgents(cfg, local_helper=helper)
        with trio.fail_after(LIMIT_S):
            reply = await agents.deliver(delivery_request(qid, rt, [rcpt], sender="alice@example.org"))
    finally:
        helper.close()
    (result,) = reply.results
    return result


async def test_the_message_lands_in_the_home_maildir_as_the_user(
    tmp_path: Path, user: pwd.struct_passwd
) -> None:
    rcpt = f"{user.pw_name}@localhost"
    result = await deliver(config(tmp_path), queued(tmp_path), route(user), rcpt)
    assert (result.status, result.reply.code, result.reply.enhanced) == ("ok", 250, "2.0.0")
    maildir = Path(user.pw_dir) / "Maildir"
    (delivered,) = (maildir / "new").iterdir()
    assert result.reply.text == f"delivered to maildir as {delivered.name}"
    assert NAME.fullmatch(delivered.name)
    st = delivered.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (user.pw_uid, user.pw_gid, 0o600)
    for d in (maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
        st = d.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (user.pw_uid, 0o700), d
    assert list((maildir / "tmp").iterdir()) == []
    assert delivered.read_bytes() == (
        f"Return-Path: <alice@example.org>\nDelivered-To: {rcpt}\nSubject: home\n\nbody line\n".encode()
    )
    # A second message goes into the Maildir that is now there.
    result = await deliver(config(tmp_path), queued(tmp_path), route(user), rcpt)
    assert result.status == "ok"
    assert len(list((maildir / "new").iterdir())) == 2


async def test_a_maildir_that_is_a_symbolic_link_bounces(tmp_path: Path, user: pwd.struct_passwd) -> None:
    elsewhere = Path(user.pw_dir).parent / "elsewhere"
    for sub in ("tmp", "new", "cur"):
        (elsewhere / sub).mkdir(parents=True)
    shutil.chown(elsewhere, user.pw_uid, user.pw_gid)
    for sub in ("tmp", "new", "cur"):
        shutil.chown(elsewhere / sub, user.pw_uid, user.pw_gid)
    (Path(user.pw_dir) / "Maildir").symlink_to(elsewhere)
    result = await deliver(config(tmp_path), queued(tmp_path), route(user), f"{user.pw_name}@localhost")
    assert (result.status, result.reply.code, result.reply.enhanced) == ("perm", 550, "5.2.0")
    assert result.reply.text.startswith(f"maildir delivery failed: {user.pw_dir}/Maildir: ")
    assert list((elsewhere / "new").iterdir()) == []


async def test_a_home_that_is_missing_or_not_the_users_bounces(
    tmp_path: Path, user: pwd.struct_passwd
) -> None:
    home = Path(user.pw_dir)
    os.chown(home, 0, 0)
    result = await deliver(config(tmp_path), queued(tmp_path), route(user), f"{user.pw_name}@localhost")
    assert (result.status, result.reply.code, result.reply.enhanced) == ("perm", 550, "5.2.0")
    assert result.reply.text == (
        f"maildir delivery failed: {home}/Maildir: home directory {home} is not the user's"
    )
    assert not (home / "Maildir").exists()
    home.rmdir()
    result = await deliver(config(tmp_path), queued(tmp_path), route(user), f"{user.pw_name}@localhost")
    assert (result.status, result.reply.code, result.reply.enhanced) == ("perm", 550, "5.2.0")
    assert result.reply.text.endswith("No such file or directory")


async def test_a_looping_message_is_refused(tmp_path: Path, user: pwd.struct_passwd) -> None:
    rcpt = f"{user.pw_name}@localhost"
    qid = queued(tmp_path, f"Delivered-To: {rcpt}\r\n".encode() + MESSAGE)
    result = await deliver(config(tmp_path), qid, route(user), rcpt)
    assert (result.status, result.reply.code, result.reply.enhanced) == ("perm", 554, "5.4.6")
    assert not (Path(user.pw_dir) / "Maildir").exists()


async def test_the_helper_checks_the_account_against_the_password_file(
    tmp_path: Path, user: pwd.struct_passwd
) -> None:
    root = pwd.getpwnam("root")
    nobody = pwd.getpwnam("nobody")
    # The user's uid with another home: the helper believes the password file, not smtpc.
    forged_home = pwd.struct_passwd((*user[:5], "/etc", user.pw_shell))
    for account, why in (
        (root, "no home Maildir delivery as uid 0 gid 0"),
        (nobody, f"no home Maildir delivery as uid {nobody.pw_uid} gid {nobody.pw_gid}"),
        (forged_home, f"gid {user.pw_gid} or home '/etc' is not uid {user.pw_uid}'s"),
    ):
        result = await deliver(config(tmp_path), queued(tmp_path), route(account), "x@localhost")
        assert (result.status, result.reply.code, result.reply.enhanced) == ("temp", 451, "4.3.5"), account
        assert result.reply.text == f"local delivery refused: {why}"
    assert not Path("/etc/Maildir").exists()
