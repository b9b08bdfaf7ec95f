"""The root helper and Maildir file targets (aliases(5) ``/path/``, Postfix's Maildir form).

What root accepts (a ``file`` request whose target ends in ``/`` must carry a Maildir file name,
checked as for a home Maildir), and what the runner's Maildir writer does with such a target: the
target's parent is taken as configured, the directory itself and ``tmp``/``new``/``cur`` are made
mode 0700 when missing and never reached through a symbolic link. The writer runs here as the
current uid (the helper's drop to another account is tested in tests/proc/smtpc).
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meta1py.smtpc.runas import Policy, RequestError, _deliver_maildir

NOBODY = pwd.getpwnam("nobody")
NAME = "1700000000.M1P2Q3.mx.example.org"
CONTENT = b"Return-Path: <a@example.org>\nDelivered-To: archive@localhost\nSubject: s\n\nbody\n"


def policy() -> Policy:
    return Policy({"files": ["alias"], "default_privs": "nobody"})


def request(target: str = "/var/mail/archive/", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "file",
        "target": target,
        "name": NAME,
        "uid": NOBODY.pw_uid,
        "gid": NOBODY.pw_gid,
        "home": "/nonexistent",
        "source": "alias",
        "env": {},
        "time_limit_s": 10,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def message() -> Iterator[int]:
    fd = os.memfd_create("test-maildir-target", os.MFD_CLOEXEC)
    os.write(fd, CONTENT)
    yield fd
    os.close(fd)


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_the_helper_accepts_a_maildir_target_with_a_file_name() -> None:
    checked = policy().check(request())
    assert (checked["kind"], checked["target"], checked["name"]) == ("file", "/var/mail/archive/", NAME)
    # A file without the slash is an mbox file as before: no name is asked for or kept.
    assert "name" not in policy().check(request("/var/mail/archive", name=None))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"name": None}, "bad Maildir file name"),
        ({"name": ""}, "bad Maildir file name"),
        ({"name": ".hidden"}, "bad Maildir file name"),
        ({"name": "../new/x"}, "bad Maildir file name"),
        ({"name": "a\0b"}, "bad Maildir file name"),
        ({"name": "x" * 256}, "bad Maildir file name"),
        ({"name": 7}, "bad Maildir file name"),
        ({"target": "/"}, "a Maildir target must name its directory"),
        ({"target": "/var/mail/../"}, "a Maildir target must name its directory"),
        ({"target": "archive/"}, "a file target must be an absolute path"),
        ({"source": "forward"}, "mail to file from 'forward' is not allowed here"),
        ({"kind": "command"}, "mail to command from 'alias' is not allowed here"),
    ],
)
def test_the_helper_refuses_bad_maildir_requests(changes: dict[str, Any], why: str) -> None:
    with pytest.raises(RequestError) as info:
        policy().check(request(**changes))
    assert str(info.value) == why


def test_the_runner_writes_the_message_into_the_maildir(tmp_path: Path, message: int) -> None:
    maildir = tmp_path / "archive"
    result = _deliver_maildir(str(tmp_path), "archive", NAME, message, home=False)
    assert result == {"ok": True, "name": NAME}
    for d in (maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert files(maildir / "new") == [NAME]
    assert files(maildir / "tmp") == files(maildir / "cur") == []
    delivered = maildir / "new" / NAME
    assert stat.S_IMODE(delivered.stat().st_mode) == 0o600
    assert delivered.read_bytes() == CONTENT
    # The Maildir that is there now takes the next message.
    assert _deliver_maildir(str(tmp_path), "archive", "second", message, home=False)["ok"]
    assert files(maildir / "new") == [NAME, "second"]


def test_the_parent_is_taken_as_configured_whoever_owns_it(tmp_path: Path, message: int) -> None:
    # The administrator's path may go through a link; only what lies below the parent may not.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "spool").symlink_to(real)
    assert _deliver_maildir(str(tmp_path / "spool"), "archive", NAME, message, home=False)["ok"]
    assert files(real / "archive" / "new") == [NAME]
    if os.geteuid() == 0:
        os.chown(real, NOBODY.pw_uid, NOBODY.pw_gid)  # not the writer's: no matter for a target
        assert _deliver_maildir(str(real), "archive", "again", message, home=False)["ok"]


def test_a_missing_parent_fails(tmp_path: Path, message: int) -> None:
    result = _deliver_maildir(str(tmp_path / "gone"), "archive", NAME, message, home=False)
    assert (result["errno"], result["stage"]) == (errno.ENOENT, "parent")
    assert not (tmp_path / "gone").exists()


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    for sub in ("tmp", "new", "cur"):
        (outside / sub).mkdir(parents=True)
    return outside


def test_a_link_planted_as_the_maildir_fails_and_writes_nothing(tmp_path: Path, message: int) -> None:
    outside = _outside(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "archive").symlink_to(outside)
    result = _deliver_maildir(str(spool), "archive", NAME, message, home=False)
    assert result["errno"] == errno.ELOOP and "ok" not in result
    assert [files(outside / sub) for sub in ("tmp", "new", "cur")] == [[], [], []]


def test_a_link_planted_as_new_fails_and_writes_nothing(tmp_path: Path, message: int) -> None:
    outside = _outside(tmp_path)
    maildir = tmp_path / "spool" / "archive"
    (maildir / "tmp").mkdir(parents=True)
    (maildir / "new").symlink_to(outside / "new")
    result = _deliver_maildir(str(tmp_path / "spool"), "archive", NAME, message, home=False)
    assert result["errno"] == errno.ELOOP and "ok" not in result
    assert files(outside / "new") == []
    assert files(maildir / "tmp") == []


def test_a_full_disk_leaves_no_partial_file(mount_tmpfs: Callable[[str], Path]) -> None:
    top = mount_tmpfs("size=64k,nr_inodes=64")
    fd = os.memfd_create("test-maildir-target-big", os.MFD_CLOEXEC)
    try:
        os.write(fd, b"Subject: big\n\n" + b"y" * (256 * 1024))
        result = _deliver_maildir(str(top), "archive", NAME, fd, home=False)
    finally:
        os.close(fd)
    assert result["errno"] == errno.ENOSPC and result["stage"] == "write"
    assert files(top / "archive" / "new") == []
    assert files(top / "archive" / "tmp") == []
