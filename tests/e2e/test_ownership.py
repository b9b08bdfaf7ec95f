"""Production mode's ownership model, checked on a running MTA (root only).

mcp runs as root with the worker users of etc/meta1.conf. For each running worker, a probe process
takes exactly that worker's credentials, read from ``/proc/<pid>/status`` (uids, gids and
supplementary groups), and tries ``open()`` on the files of the queue, the TLS key, the password
file and the Maildirs. What each worker may touch is the table in meta1py/ownership.py and
docs/internals.md; everything else must fail with EACCES. ``/proc/<pid>/fd`` shows that smtps
keeps no descriptor of its key or password file (it loaded both before dropping privileges).
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meta1py_testing.certs import make_pki
from meta1py_testing.daemon import Meta1Daemon, free_port, poll, proc_ids

pytestmark = [pytest.mark.e2e, pytest.mark.root]

# Runs as the worker's uid/gids: tries each action, prints {label: "ok" | errno name}.
_PROBE = r"""
import errno, json, os, socket, sys
results = {}
for label, action, path in json.loads(sys.argv[1]):
    try:
        if action == "read":
            os.close(os.open(path, os.O_RDONLY))
        elif action == "list":
            os.listdir(path)
        elif action == "create":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(path)
        elif action == "connect":
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
        results[label] = "ok"
    except OSError as exc:
        results[label] = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(results))
"""


def probe(pid: int, checks: list[tuple[str, str, Path]]) -> dict[str, str]:
    """Run the checks with the credentials of process ``pid``."""
    ids = proc_ids(pid)
    uid, gid, groups = ids["Uid"][1], ids["Gid"][1], list(ids.get("Groups", ()))
    plan = json.dumps([(label, action, str(path)) for label, action, path in checks])
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, plan],
        user=uid,
        group=gid,
        extra_groups=groups,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results: dict[str, str] = json.loads(result.stdout)
    return results


@pytest.fixture
def production(make_daemon: Any, worker_accounts: dict[str, Any]) -> Any:
    if os.geteuid() != 0 or "users" not in worker_accounts:
        pytest.skip("needs root and the four worker users (META1_TEST_ACCOUNTS=four)")
    dead_port = free_port()  # nothing listens there: mail routed to it stays deferred in the queue
    daemon: Meta1Daemon = make_daemon(
        sections={
            "smtps": (
                "tls { cert_file = ../pki/server.crt; key_file = ../pki/server.key; } "
                "password_file = ../passwd;"
            ),
            "smar": "routes = ../routes;",
        }
    )
    make_pki(daemon.dir / "pki")
    (daemon.dir / "pki").chmod(0o755)
    for key in (daemon.dir / "pki").glob("*.key"):
        key.chmod(0o600)
    from meta1py.passwords import hash_password

    (daemon.dir / "passwd").write_text(f"alice:{hash_password('secret')}\n")
    (daemon.dir / "passwd").chmod(0o600)
    (daemon.dir / "routes").write_text(f"dead.test smtp:[127.0.0.1]:{dead_port}\n")
    with daemon:
        yield daemon


def test_each_worker_can_open_only_what_it_needs(production: Meta1Daemon) -> None:
    daemon = production
    with smlib(daemon) as client:
        client.sendmail("a@localhost", ["bob@localhost"], b"Subject: local\r\n\r\nhi\r\n")
        client.mail("a@localhost")
        client.rcpt("x@dead.test")
        code, text = client.data(b"Subject: stays queued\r\n\r\nbody\r\n")
    assert code == 250, text
    match = re.search(rb"queued as ([0-9A-Z]{12})", text)
    assert match, text
    qid = match.group(1).decode()
    queue = daemon.queue_directory
    content = queue / "content" / qid[-2:] / qid
    maildir = daemon.mail_directory / "localhost" / "bob" / "new"
    poll(lambda: maildir.is_dir() and any(maildir.iterdir()), 30, "local delivery to bob")
    delivered = next(maildir.iterdir())
    poll(lambda: "deferred qid=" + qid in daemon.log_text(), 30, "the dead.test recipient deferred")

    checks = [
        ("envelopes", "read", queue / "envelopes.sqlite"),
        ("envelopes-wal", "read", queue / "envelopes.sqlite-wal"),
        ("tls-key", "read", daemon.dir / "pki" / "server.key"),
        ("passwd", "read", daemon.dir / "passwd"),
        ("content", "read", content),
        ("list-content-dir", "list", content.parent),
        ("create-in-content-dir", "create", content.parent / "PROBE2345678"),
        ("create-in-queue", "create", queue / "probe"),
        ("maildir-message", "read", delivered),
        ("mail-directory", "list", daemon.mail_directory),
        ("qmgr.sock", "connect", daemon.run_directory / "qmgr.sock"),
        ("smtpc.sock", "connect", daemon.run_directory / "smtpc.sock"),
    ]
    ok, denied = "ok", "EACCES"
    expected = {
        "qmgr": {
            "envelopes": ok, "envelopes-wal": ok, "tls-key": denied, "passwd": denied, "content": ok,
            "list-content-dir": ok, "create-in-content-dir": ok, "create-in-queue": ok,
            "maildir-message": denied, "mail-directory": denied, "qmgr.sock": ok, "smtpc.sock": ok,
        },
        "smtps": {
            "envelopes": denied, "envelopes-wal": denied, "tls-key": denied, "passwd": denied,
            # smtps wrote the content; it may open a file whose name it knows, but not list them.
            "content": ok, "list-content-dir": denied, "create-in-content-dir": ok,
            "create-in-queue": denied, "maildir-message": denied, "mail-directory": denied,
            "qmgr.sock": ok, "smtpc.sock": denied,
        },
        "smtpc": {
            "envelopes": denied, "envelopes-wal": denied, "tls-key": denied, "passwd": denied,
            # It shares the group smtps needs to write content, so it could add a file (harmless:
            # qmgr removes content without an envelope) but cannot list or remove others'.
            "content": ok, "list-content-dir": denied, "create-in-content-dir": ok, "create-in-queue": denied,
            "maildir-message": ok, "mail-directory": ok, "qmgr.sock": ok, "smtpc.sock": denied,
        },
        "smar": {
            # In a group of its own: nothing of the queue, not even the way in.
            "envelopes": denied, "envelopes-wal": denied, "tls-key": denied, "passwd": denied,
            "content": denied, "list-content-dir": denied, "create-in-content-dir": denied,
            "create-in-queue": denied, "maildir-message": denied, "mail-directory": denied,
            "qmgr.sock": denied, "smtpc.sock": denied,
        },
    }  # fmt: skip
    workers = daemon.workers()
    for name, want in expected.items():
        got = probe(workers[name], checks)
        assert {k: got[k] for k in want} == want, name


def test_smtps_holds_no_descriptor_of_its_key_or_password_file(production: Meta1Daemon) -> None:
    daemon = production
    smtps = daemon.workers()["smtps"]
    secrets = {str(daemon.dir / "pki" / "server.key"), str(daemon.dir / "passwd")}
    held = set()
    for fd in os.listdir(f"/proc/{smtps}/fd"):
        try:
            held.add(os.readlink(f"/proc/{smtps}/fd/{fd}"))
        except OSError:
            continue
    assert not held & secrets
    # And yet it serves STARTTLS and AUTH with them.
    context = ssl.create_default_context(cafile=str(daemon.dir / "pki" / "ca.crt"))
    with smlib(daemon) as client:
        client.starttls(context=context)
        client.ehlo("client.example")
        assert client.has_extn("auth")
        client.login("alice", "secret")


def smlib(daemon: Meta1Daemon) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", daemon.port, timeout=30)
    client.ehlo("client.example")
    return client


def test_queue_layout_on_disk(production: Meta1Daemon) -> None:
    import grp
    import pwd

    daemon = production
    qmgr = pwd.getpwnam("meta1q").pw_uid
    meta1 = grp.getgrnam("meta1").gr_gid
    smtpc = pwd.getpwnam("meta1c").pw_uid

    def owner_mode(path: Path) -> tuple[int, int, int]:
        st = path.lstat()
        return st.st_uid, st.st_gid, st.st_mode & 0o7777

    queue = daemon.queue_directory
    assert owner_mode(queue) == (qmgr, meta1, 0o750)
    assert owner_mode(queue / "content") == (qmgr, meta1, 0o750)
    # The 930 that are not seed subdirectories are made while the workers start.
    poll(lambda: len(list((queue / "content").iterdir())) == 31 * 31, 30, "all content subdirectories")
    subdirs = list((queue / "content").iterdir())
    assert {owner_mode(d) for d in subdirs} == {(qmgr, meta1, 0o3730)}
    assert owner_mode(queue / "envelopes.sqlite") == (qmgr, meta1, 0o600)
    assert owner_mode(daemon.run_directory) == (0, meta1, 0o750)
    assert owner_mode(daemon.mail_directory) == (smtpc, meta1, 0o700)


# Runs as smar's uid/gid: greylists one recipient in smar's data directory, as smar does.
_GREYLIST_PROBE = r"""
import sys
from meta1py.smar.greylist import Greylist
print(Greylist(sys.argv[1]).check("192.0.2.7", "a@example.org", "b@example.net").reason)
"""


def test_with_greylisting_smar_reaches_its_data_directory_and_nothing_else(
    make_daemon: Any, worker_accounts: dict[str, Any]
) -> None:
    import grp
    import pwd

    if os.geteuid() != 0 or "users" not in worker_accounts:
        pytest.skip("needs root and the four worker users (META1_TEST_ACCOUNTS=four)")
    daemon: Meta1Daemon = make_daemon(sections={"smar": "greylisting { enable = yes; }"})
    with daemon:
        queue = daemon.queue_directory
        data = queue / "smar"
        smar_ids = (pwd.getpwnam("meta1r").pw_uid, grp.getgrnam("meta1r").gr_gid)
        st = data.lstat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (*smar_ids, 0o700)
        # smar searches the queue directory to reach it; nobody gains a listing.
        assert stat.S_IMODE(queue.stat().st_mode) == 0o751
        checks = [
            ("create-in-smar-data", "create", data / "probe"),
            ("list-queue", "list", queue),
            ("envelopes", "read", queue / "envelopes.sqlite"),
            ("list-content", "list", queue / "content"),
            ("list-run", "list", daemon.run_directory),
        ]
        workers = daemon.workers()
        got = probe(workers["smar"], checks)
        assert got == {
            "create-in-smar-data": "ok", "list-queue": "EACCES", "envelopes": "EACCES",
            "list-content": "EACCES", "list-run": "EACCES",
        }  # fmt: skip
        for name in ("qmgr", "smtpc", "smtps"):
            assert probe(workers[name], checks[:1]) == {"create-in-smar-data": "EACCES"}, name

        # smar's account can keep its database there ...
        database = data / "greylist.db"
        made = subprocess.run(
            [sys.executable, "-c", _GREYLIST_PROBE, str(database)],
            user=smar_ids[0], group=smar_ids[1], extra_groups=[], capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert (made.returncode, made.stdout) == (0, "new\n"), made.stderr
        # ... and `meta1 grey`, run as root, reads and edits it as smar's user: no file of root's
        # appears beside it (SQLite creates -shm and -wal even to read).
        meta1 = [sys.executable, "-m", "meta1py.cli", "grey", "-f", str(daemon.conf_path)]
        listed = subprocess.run([*meta1, "list", "--json"], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert [t["network"] for t in json.loads(listed.stdout)["triplets"]] == ["192.0.2.0/24"]
        removed = subprocess.run([*meta1, "remove", "192.0.2.7"], capture_output=True, text=True, timeout=60)
        assert (removed.returncode, removed.stdout) == (0, "removed 1 triplet and 0 whitelisted networks\n")
        assert {(p.name, p.stat().st_uid) for p in data.iterdir()} <= {
            (name, smar_ids[0]) for name in ("greylist.db", "greylist.db-wal", "greylist.db-shm")
        }
