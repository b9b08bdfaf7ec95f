"""smar's routing with ``home_mailbox`` (Postfix's local(8) option): a local recipient whose local
part names a user with an account of its own goes to ``$HOME/Maildir/``, written as that user;
root, nobody, system accounts and names that are no account keep their Maildir in
``mail_directory``. As root, a throw-away user stands for the host's real user.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from meta1py.conf import Config, parse_config
from meta1py.smar.localfiles import Account
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import Delivery, RecipientAccepted, RecipientRejected, Router
from meta1py_testing.users import local_user, public_directory

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a throw-away user account needs root")


@pytest.fixture
def top() -> Iterator[Path]:
    with public_directory() as directory:
        yield directory


def config(top: Path, extra: str = "home_mailbox = Maildir/;", aliases: str | None = None) -> Config:
    smar = "nameserver = { 127.0.0.1:9 };"
    if aliases is not None:
        (top / "aliases").write_text(aliases)
        smar += f' aliases = "{top / "aliases"}";'
    return parse_config(
        f"""
        queue_directory = "{top / "queue"}";
        mail_directory = "{top / "mail"}";
        local_domains = {{ example.com, localhost }};
        smar {{ {smar} }}
        {extra}
        """
    )


def router(cfg: Config) -> Router:
    return Router(cfg, Resolver.from_config(cfg.smar))


def virtual(top: Path, address: str) -> Delivery:
    local, domain = address.split("@")
    return Delivery(
        "maildir", "maildir", address, maildir=top / "mail" / domain / local.split("+")[0].lower()
    )


@needs_root
async def test_a_users_mail_goes_to_the_home_maildir_as_the_user(top: Path) -> None:
    with local_user(top) as user:
        r = router(config(top))
        name = user.pw_name
        account = Account(name, user.pw_uid, user.pw_gid, user.pw_dir, user.pw_shell)
        # Case folded and the +extension dropped, as Postfix's local(8) looks up the user.
        for address in (f"{name}@example.com", f"{name.upper()}+lists@localhost"):
            route = await r.route(address)
            assert route == Delivery(
                "maildir",
                f"maildir:{name}",
                address,
                maildir=Path(user.pw_dir) / "Maildir/",
                account=account,
                source="home_mailbox",
            ), address
        # Without home_mailbox nothing changes: the virtual Maildir.
        plain = router(config(top, extra=""))
        assert await plain.route(f"{name}@example.com") == virtual(top, f"{name}@example.com")


async def test_root_nobody_system_accounts_and_strangers_keep_the_virtual_maildir(top: Path) -> None:
    r = router(config(top))
    system = next(p.pw_name for p in pwd.getpwall() if 0 < p.pw_uid < 1000)
    for address in (
        "root@example.com",
        "nobody@example.com",
        f"{system}@localhost",
        "no-such-user@example.com",
    ):
        assert await r.route(address) == virtual(top, address), address


@needs_root
def test_with_an_aliases_map_users_are_valid_recipients(top: Path) -> None:
    aliases = "postmaster: root\nroot: admin\nadmin: admin\n"
    with local_user(top) as user:
        name = user.pw_name
        r = router(config(top, aliases=aliases))
        # Postfix's local_recipient_maps: the password file's users exist.
        assert r.check_recipient(f"{name}@example.com") == RecipientAccepted(local=True)
        assert r.check_recipient(f"{name}+x@example.com") == RecipientAccepted(local=True)
        assert isinstance(r.check_recipient("stranger@example.com"), RecipientRejected)
        # Without home_mailbox the map stays the list of valid names.
        plain = router(config(top, extra="", aliases=aliases))
        verdict = plain.check_recipient(f"{name}@example.com")
        assert verdict == RecipientRejected(550, "5.1.1", f"<{name}@example.com>: user unknown")
