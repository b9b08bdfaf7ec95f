"""smar's expansion and routing of commands, files, :include: lists and .forward files.

Real files on disk, read the way smar reads them; as root, real accounts (a throw-away user owns
an include file and has a .forward), so that the account each route names is the one Postfix's
local(8) would use.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from meta1py.conf import Config, parse_config
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import (
    Delivery,
    PermanentFailure,
    RecipientAccepted,
    RecipientRejected,
    Router,
    TemporaryFailure,
)
from meta1py_testing.users import local_user, public_directory

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="accounts and file owners need root")

ALIASES = """\
postmaster: root
root:       admin
tickets:    "|/usr/local/bin/ticket --new", /var/spool/tickets.mbox, \\tickets
staff:      :include:{include}
info@example.org: sales
sales:      bob
"""


@pytest.fixture
def top() -> Iterator[Path]:
    with public_directory() as directory:
        yield directory


def config(top: Path, extra: str = "", include: str = "/nonexistent/staff.list") -> Config:
    (top / "aliases").write_text(ALIASES.format(include=include))
    return parse_config(
        f"""
        queue_directory = "{top / "queue"}";
        mail_directory = "{top / "mail"}";
        local_domains = {{ example.com, example.org }};
        smar {{ aliases = "{top / "aliases"}"; nameserver = {{ 127.0.0.1:9 }}; }}
        {extra}
        """
    )


def router(cfg: Config) -> Router:
    return Router(cfg, Resolver.from_config(cfg.smar))


def test_commands_and_files_from_smtp_clients_are_refused(top: Path) -> None:
    r = router(config(top))
    for address in (
        '"|/bin/sh"@example.com',
        "|/bin/sh@example.com",
        "/etc/passwd@example.com",
        '":include:/x"@example.org',
    ):
        verdict = r.check_recipient(address)
        assert verdict == RecipientRejected(
            550, "5.1.3", f"<{address}>: a command or file name is not a mail address"
        ), address
    # A remote domain is the remote server's business (smar routes it over SMTP, as written).
    assert r.check_recipient('"|/bin/sh"@remote.test') == RecipientAccepted(local=False)


async def test_an_alias_expands_to_its_commands_and_files(top: Path) -> None:
    r = router(config(top))
    verdict = r.check_recipient("Tickets@Example.com")
    assert verdict == RecipientAccepted(local=True)
    assert verdict.expanded == (
        "tickets@example.com:|/usr/local/bin/ticket --new",
        "tickets@example.com:/var/spool/tickets.mbox",
        "tickets@example.com",
    )
    assert r.expand_local("info@example.org") == ["bob@example.org"]
    # Not allowed (the default): they bounce with Postfix's words.
    command = await r.route("tickets@example.com:|/usr/local/bin/ticket --new")
    assert command == PermanentFailure(550, "5.7.1", "mail to command is restricted")
    file = await r.route("tickets@example.com:/var/spool/tickets.mbox")
    assert file == PermanentFailure(550, "5.7.1", "mail to file is restricted")


async def test_allowed_targets_of_a_root_owned_aliases_file_run_as_default_privs(top: Path) -> None:
    r = router(config(top, "allow_mail_to_commands = { alias }; allow_mail_to_files = { alias };"))
    owner = (top / "aliases").stat().st_uid
    expected = NOBODY if owner == 0 else pwd.getpwuid(owner)
    command = await r.route("tickets@example.com:|/usr/local/bin/ticket --new")
    assert isinstance(command, Delivery)
    assert (command.transport, command.destination, command.target, command.source) == (
        "pipe",
        f"pipe:{expected.pw_name}",
        "/usr/local/bin/ticket --new",
        "alias",
    )
    assert command.account is not None and command.account.uid == expected.pw_uid
    file = await r.route("tickets@example.com:/var/spool/tickets.mbox")
    assert (
        isinstance(file, Delivery) and file.transport == "file" and file.target == "/var/spool/tickets.mbox"
    )


async def test_a_target_the_aliases_do_not_name_is_never_routed(top: Path) -> None:
    r = router(config(top, "allow_mail_to_commands = { alias };"))
    # What only a forged queue entry could hold: root's entry names no such command.
    forged = await r.route("root@example.com:|/bin/sh -c 'rm -rf /'")
    assert forged == PermanentFailure(
        550, "5.1.1", "<root@example.com>: no command \"/bin/sh -c 'rm -rf /'\" among its targets"
    )
    assert isinstance(await r.route("root@remote.test:|/bin/sh"), PermanentFailure)


@needs_root
async def test_include_files_run_as_their_owner(top: Path) -> None:
    with local_user(top) as owner:
        listing = top / "staff.list"
        listing.write_text("# the staff\ndave, |/usr/bin/staff-log\n")
        os.chown(listing, owner.pw_uid, owner.pw_gid)
        cfg = config(top, "allow_mail_to_commands = { include };", include=str(listing))
        r = router(cfg)
        assert r.expand_local("staff@example.com") == [
            "dave@example.com",
            "staff@example.com:|/usr/bin/staff-log",
        ]
        route = await r.route("staff@example.com:|/usr/bin/staff-log")
        assert isinstance(route, Delivery) and route.account is not None
        assert (route.account.user, route.account.uid, route.source) == (
            owner.pw_name,
            owner.pw_uid,
            "include",
        )
        # Alias commands are still not allowed: only include files were named.
        assert await r.route("tickets@example.com:|/usr/local/bin/ticket --new") == PermanentFailure(
            550, "5.7.1", "mail to command is restricted"
        )
        # An include file smar cannot read defers the alias's mail (smar runs as meta1r).
        listing.chmod(0o600)
        listing.parent.chmod(0o700)
        try:
            os.seteuid(NOBODY.pw_uid)
            try:
                failure = r.expand_local("staff@example.com")
            finally:
                os.seteuid(0)
        finally:
            listing.parent.chmod(0o755)
        assert isinstance(failure, TemporaryFailure) and (failure.code, failure.enhanced) == (451, "4.3.0")
        assert "cannot read it: Permission denied" in failure.text


async def test_a_missing_include_file_defers(top: Path) -> None:
    r = router(config(top))
    failure = r.check_recipient("staff@example.com")
    assert isinstance(failure, RecipientRejected) and (failure.code, failure.enhanced) == (451, "4.3.0")
    assert "/nonexistent/staff.list" in failure.text


@needs_root
async def test_forward_files_of_local_users(top: Path) -> None:
    with local_user(top) as user:
        home = Path(user.pw_dir)
        forward = home / ".forward"
        forward.write_text(f'\\{user.pw_name}, "|/usr/bin/vacation {user.pw_name}", away@remote.test\n')
        os.chown(forward, user.pw_uid, user.pw_gid)
        extra = 'forward_path = { "$home/.forward" }; allow_mail_to_commands = { forward };'
        # No aliases map: every local part is a mailbox, and a user's .forward is read.
        cfg = parse_config(
            f"""
            queue_directory = "{top / "queue"}";
            local_domains = {{ example.com }};
            smar {{ nameserver = {{ 127.0.0.1:9 }}; }}
            {extra}
            """
        )
        r = router(cfg)
        name = user.pw_name
        assert r.expand_local(f"{name}@example.com") == [
            f"{name}@example.com",
            f"{name}@example.com:|/usr/bin/vacation {name}",
            "away@remote.test",
        ]
        route = await r.route(f"{name}@example.com:|/usr/bin/vacation {name}")
        assert isinstance(route, Delivery) and route.account is not None
        assert (route.account.uid, route.account.home, route.source) == (user.pw_uid, str(home), "forward")
        # A .forward others may write is not trusted (sendmail's and Postfix's rule): ignored.
        forward.chmod(0o666)
        assert r.expand_local(f"{name}@example.com") == [f"{name}@example.com"]
        forward.chmod(0o644)
        # Users without a .forward, and names that are no user, get their mailbox.
        assert r.expand_local("nobody-here@example.com") == ["nobody-here@example.com"]
