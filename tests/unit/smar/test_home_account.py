"""``home_mailbox``: which local parts get a home Maildir (smar's decision, as a pure lookup in
the password database) and which values the option takes."""

from __future__ import annotations

import pwd

import pytest

from meta1py.conf import parse_config
from meta1py.conf.errors import ConfigErrors
from meta1py.smar.localfiles import Account, home_account


def test_root_nobody_system_accounts_and_strangers_get_no_home_maildir() -> None:
    system = [p.pw_name for p in pwd.getpwall() if 0 < p.pw_uid < 1000]
    for name in ("root", "nobody", "no-such-user", "", "a\0b", *system):
        assert home_account(name) is None, name


def test_a_user_account_gets_its_home() -> None:
    users = [p for p in pwd.getpwall() if 1000 <= p.pw_uid != 65534 and p.pw_gid != 0]
    if not users:
        pytest.skip("no user account on this host")
    user = users[0]
    assert home_account(user.pw_name) == Account(
        user.pw_name, user.pw_uid, user.pw_gid, user.pw_dir, user.pw_shell
    )


@pytest.mark.parametrize("value", ["Maildir/", ".maildir/", "mail/inbox/", '"Mail Box/"'])
def test_maildir_values_are_kept_as_written(value: str) -> None:
    assert parse_config(f"home_mailbox = {value};").home_mailbox == value.strip('"')


def test_off_by_default() -> None:
    assert parse_config("").home_mailbox is None


@pytest.mark.parametrize(
    ("value", "message", "hint"),
    [
        (
            "Maildir",
            "'Maildir' names an mbox file: only Maildir delivery is supported",
            'end it with "/" for a Maildir: "Maildir/"',
        ),
        (
            "/var/mail/",
            "'/var/mail/' is not relative to the home directory",
            'write it as Postfix does: "Maildir/"',
        ),
        (
            '"~/Maildir/"',
            "'~/Maildir/' is not relative to the home directory",
            'write it as Postfix does: "Maildir/"',
        ),
        ("../Maildir/", "'../Maildir/' must stay below the home directory", 'write "Maildir/"'),
        ('""', "home_mailbox is empty", "leave the option out to turn it off"),
    ],
)
def test_other_values_are_refused_with_a_hint(value: str, message: str, hint: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config(f"home_mailbox = {value};")
    (error,) = info.value.errors
    assert (error.message, error.hint) == (f"home_mailbox: {message}", hint)
