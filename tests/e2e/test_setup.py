"""``meta1 setup`` as an operator runs it: accounts, directories, --check, repairs, --sendmail.

Root only (it creates system users). The accounts have throw-away names, so the test sees them
created and removes them afterwards; the sendmail entry points go under ``--destdir``, never into
/usr of the test machine (where Postfix's sendmail may live).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meta1py_testing.daemon import Meta1Daemon, poll

pytestmark = [pytest.mark.e2e, pytest.mark.root]

WORKERS = ("qmgr", "smar", "smtpc", "smtps")


def meta1(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meta1py", *args], capture_output=True, text=True, timeout=120, user=user
    )


@pytest.fixture
def site() -> Iterator[dict[str, Any]]:
    """A config with fresh account names and directories in a new temporary directory."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tag = secrets.token_hex(3)
    users = {name: f"m1{tag}{letter}" for name, letter in zip(WORKERS, "qrcs", strict=True)}
    group, smar_group, submission_group = f"m1{tag}", f"m1{tag}r", f"m1{tag}d"
    base = Path(tempfile.mkdtemp(prefix="meta1-setup-", dir="/tmp"))
    base.chmod(0o755)
    conf = base / "meta1.conf"
    sections = "\n".join(
        f"{name} {{ user = {user}; group = {smar_group if name == 'smar' else group}; }}"
        for name, user in users.items()
    )
    conf.write_text(
        f"queue_directory = {base}/spool; run_directory = {base}/run; mail_directory = {base}/mail;\n"
        f"setgid_group = {submission_group};\n{sections}\n"
    )
    try:
        yield {"conf": conf, "base": base, "users": users, "group": group, "smar_group": smar_group}
    finally:
        for user in users.values():
            subprocess.run(["userdel", user], check=False, stderr=subprocess.DEVNULL)
        for name in (group, smar_group, submission_group):
            subprocess.run(["groupdel", name], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


def test_setup_creates_accounts_and_directories_and_is_idempotent(site: dict[str, Any]) -> None:
    conf, base = str(site["conf"]), site["base"]
    check = meta1("setup", "-f", conf, "--check")
    assert check.returncode == 1
    assert f"user {site['users']['qmgr']} does not exist" in check.stderr

    first = meta1("setup", "-f", conf)
    assert first.returncode == 0, first.stderr
    for user in site["users"].values():
        assert f"created user {user}" in first.stdout
        entry = pwd.getpwnam(user)
        assert entry.pw_shell == "/usr/sbin/nologin" and entry.pw_uid < 1000
    assert pwd.getpwnam(site["users"]["smar"]).pw_gid == grp.getgrnam(site["smar_group"]).gr_gid
    qmgr_uid = pwd.getpwnam(site["users"]["qmgr"]).pw_uid
    gid = grp.getgrnam(site["group"]).gr_gid
    st = (base / "spool" / "content" / "2Z").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (qmgr_uid, gid, 0o3730)

    again = meta1("setup", "-f", conf)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again
    assert meta1("setup", "-f", conf, "--check").returncode == 0


def test_check_reports_what_differs_and_setup_repairs_it(site: dict[str, Any]) -> None:
    conf, base = str(site["conf"]), site["base"]
    assert meta1("setup", "-f", conf).returncode == 0
    os.chown(base / "spool", 0, 0)
    (base / "spool" / "content" / "AB").chmod(0o755)
    check = meta1("setup", "-f", conf, "--check")
    assert check.returncode == 1
    assert f"{base}/spool: found directory root:root 0750" in check.stderr
    assert f"{base}/spool/content/AB: found directory" in check.stderr and "0755" in check.stderr
    repair = meta1("setup", "-f", conf)
    assert repair.returncode == 0 and repair.stdout.count("repaired ") == 2, repair
    assert meta1("setup", "-f", conf, "--check").returncode == 0


def test_setup_makes_smars_data_directory_and_lets_smar_reach_it(site: dict[str, Any]) -> None:
    conf, base = site["conf"], site["base"]
    smar_group = site["smar_group"]
    text = conf.read_text()
    conf.write_text(
        text.replace(f"group = {smar_group}; }}", f"group = {smar_group}; greylisting {{ enable = yes; }} }}")
    )
    assert conf.read_text() != text
    first = meta1("setup", "-f", str(conf))
    assert first.returncode == 0, first.stderr
    data = base / "spool" / "smar"
    st = data.stat()
    smar_ids = (pwd.getpwnam(site["users"]["smar"]).pw_uid, grp.getgrnam(smar_group).gr_gid)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (*smar_ids, 0o700)
    assert stat.S_IMODE((base / "spool").stat().st_mode) == 0o751  # smar searches it, lists nothing
    assert meta1("setup", "-f", str(conf), "--check").returncode == 0
    data.chmod(0o755)
    check = meta1("setup", "-f", str(conf), "--check")
    assert check.returncode == 1 and f"{data}: found directory" in check.stderr and "0700" in check.stderr
    assert meta1("setup", "-f", str(conf)).returncode == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_a_link_in_the_queue_is_reported_not_followed(site: dict[str, Any]) -> None:
    conf, base = str(site["conf"]), site["base"]
    assert meta1("setup", "-f", conf).returncode == 0
    target = base / "elsewhere"
    target.mkdir(mode=0o755)
    (base / "spool" / "content" / "CD").rmdir()
    (base / "spool" / "content" / "CD").symlink_to(target)
    result = meta1("setup", "-f", conf)
    assert result.returncode == 1
    assert f"{base}/spool/content/CD: found a symbolic link" in result.stderr
    assert (target.stat().st_uid, stat.S_IMODE(target.stat().st_mode)) == (0, 0o755)


def test_without_root_only_check_is_allowed(site: dict[str, Any]) -> None:
    result = meta1("setup", "-f", str(site["conf"]), user="nobody")
    assert result.returncode == 77 and "meta1 setup --check" in result.stderr


def test_sendmail_entry_points_submit_mail_to_the_running_mta(make_daemon: Any, tmp_path: Path) -> None:
    destdir = tmp_path / "root"
    # --sendmail creates the submission group: a throw-away one, so that the machine's other
    # daemons keep their layout (with a submission group the queue directory is 0751).
    group = f"m1d{secrets.token_hex(3)}"
    daemon: Meta1Daemon = make_daemon(f"setgid_group = {group};")
    with daemon, _group_removed(group):
        installed = meta1("setup", "-f", str(daemon.conf_path), "--sendmail", "--destdir", str(destdir))
        assert installed.returncode == 0, installed.stderr
        sendmail, mailq = destdir / "usr/sbin/sendmail", destdir / "usr/bin/mailq"
        for path in (sendmail, mailq, destdir / "usr/bin/newaliases"):
            assert path.stat().st_mode & 0o111, path
        assert os.readlink(destdir / "usr/local/sbin/meta1") == str(Path(sys.executable).parent / "meta1")
        message = "From: root@localhost\nTo: carol@localhost\nSubject: from cron\n\nbackup done\n"
        sent = subprocess.run(
            [str(sendmail), "-t"], input=message, capture_output=True, text=True, timeout=60
        )
        assert sent.returncode == 0, sent.stderr
        new = daemon.mail_directory / "localhost" / "carol" / "new"
        poll(lambda: new.is_dir() and any(new.iterdir()), 30, "delivery to carol")
        assert b"backup done" in next(new.iterdir()).read_bytes()
        listed = subprocess.run([str(mailq)], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        again = meta1("setup", "-f", str(daemon.conf_path), "--sendmail", "--destdir", str(destdir))
        assert "installed" not in again.stdout and again.returncode == 0, again


@contextlib.contextmanager
def _group_removed(name: str) -> Iterator[None]:
    try:
        yield
    finally:
        subprocess.run(["groupdel", name], check=False, stderr=subprocess.DEVNULL)


def test_sendmail_does_not_replace_another_mtas_file(site: dict[str, Any]) -> None:
    tmp_path = site["base"]
    destdir = tmp_path / "root"
    (destdir / "usr/sbin").mkdir(parents=True)
    foreign = destdir / "usr/sbin/sendmail"
    foreign.write_text("#!/bin/sh\necho postfix\n")
    conf = site["conf"]
    result = meta1("setup", "-f", str(conf), "--sendmail", "--destdir", str(destdir))
    assert result.returncode == 1 and f"{foreign} exists and is not meta1py's" in result.stderr
    assert foreign.read_text() == "#!/bin/sh\necho postfix\n"
    forced = meta1("setup", "-f", str(conf), "--sendmail", "--force", "--destdir", str(destdir))
    assert f"installed {foreign}" in forced.stdout
