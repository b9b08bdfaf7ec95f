"""default_privs must be an unprivileged account of its own once commands or files are allowed."""

from __future__ import annotations

import os

import pytest

from meta1py.conf import check_accounts, parse_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="accounts are checked only as root")
# Accounts every Debian system has, standing in for the worker accounts.
WORKERS = "qmgr { user = daemon; group = daemon; } smar { user = daemon; group = daemon; }"
WORKERS += " smtpc { user = daemon; group = daemon; } smtps { user = daemon; group = daemon; }"


def problems(text: str) -> list[str]:
    return [e.message for e in check_accounts(parse_config(WORKERS + "\n" + text))]


def test_default_privs_is_checked_only_when_commands_or_files_are_allowed() -> None:
    assert problems("default_privs = root;") == []
    assert problems("allow_mail_to_commands = { alias };") == []  # nobody
    assert problems("allow_mail_to_files = { forward }; default_privs = root;") == [
        "default_privs user 'root' is privileged (uid or gid 0)"
    ]
    assert problems("allow_mail_to_commands = { alias }; default_privs = daemon;") == [
        "default_privs user 'daemon' is a meta1py worker account"
    ]
    assert problems("allow_mail_to_commands = { alias }; default_privs = no-such-user-here;") == [
        "default_privs user 'no-such-user-here' does not exist"
    ]
