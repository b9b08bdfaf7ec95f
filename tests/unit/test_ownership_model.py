"""The ownership model (meta1py.ownership): layout, inspection, repair, reachability."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meta1py.conf import Config, parse_config
from meta1py.ownership import (
    CONTENT_SUBDIR_MODE,
    Account,
    Expected,
    LayoutError,
    Owners,
    access_problem,
    content_subdirs,
    create_deferred,
    expected_layout,
    inspect_layout,
    queue_directory_mode,
    reach_problems,
    repair_layout,
)
from meta1py.queue.ids import is_seed_subdir

NOBODY = 65534


def _config(tmp_path: Path) -> Config:
    return parse_config(
        f"queue_directory = {tmp_path / 'queue'}; run_directory = {tmp_path / 'run'};"
        f" mail_directory = {tmp_path / 'mail'};"
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_there_is_one_content_subdirectory_per_id_suffix() -> None:
    names = list(content_subdirs())
    assert len(names) == len(set(names)) == 31 * 31
    from meta1py.queue.ids import new_queue_id

    for suffix in (0, 17, 960):
        assert new_queue_id(suffix=suffix)[-2:] in names


def test_a_fresh_layout_is_created_then_nothing_differs(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    owners = Owners.unprivileged()
    assert any(p.found == "nothing" for p in inspect_layout(cfg, owners))
    changes = repair_layout(cfg, owners)
    assert sum(c.startswith("created ") for c in changes) == 31 * 31 + 8
    assert inspect_layout(cfg, owners) == []
    assert repair_layout(cfg, owners) == []
    assert _mode(tmp_path / "queue") == 0o750
    assert _mode(tmp_path / "queue" / "content" / "22") == CONTENT_SUBDIR_MODE
    assert _mode(tmp_path / "run") == 0o750
    assert _mode(tmp_path / "mail") == 0o700
    assert _mode(tmp_path / "queue" / "smar") == 0o700
    assert _mode(tmp_path / "queue" / "pickup") == 0o1730
    assert _mode(tmp_path / "queue" / "corrupt") == 0o700
    assert _mode(tmp_path / "queue" / "public") == 0o711


def test_wrong_modes_are_reported_then_repaired(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    owners = Owners.unprivileged()
    repair_layout(cfg, owners)
    subdir = tmp_path / "queue" / "content" / "ZZ"
    subdir.chmod(0o755)
    (tmp_path / "queue" / "envelopes.sqlite").write_bytes(b"")
    (tmp_path / "queue" / "envelopes.sqlite").chmod(0o644)
    problems = inspect_layout(cfg, owners)
    assert sorted(p.path.name for p in problems) == ["ZZ", "envelopes.sqlite"]
    text = str(next(p for p in problems if p.path == subdir))
    assert str(subdir) in text and "0755" in text and "3730" in text
    changes = repair_layout(cfg, owners)
    assert len(changes) == 2 and all(c.startswith("repaired ") for c in changes)
    assert _mode(subdir) == CONTENT_SUBDIR_MODE
    assert _mode(tmp_path / "queue" / "envelopes.sqlite") == 0o600


def test_a_symbolic_link_is_never_followed(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    owners = Owners.unprivileged()
    repair_layout(cfg, owners)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    link = tmp_path / "queue" / "content" / "AB"
    link.rmdir()
    link.symlink_to(victim)
    problems = inspect_layout(cfg, owners)
    assert [p.fixable for p in problems if p.path == link] == [False]
    with pytest.raises(LayoutError) as info:
        repair_layout(cfg, owners)
    assert str(link) in str(info.value) and "symbolic link" in str(info.value)
    assert _mode(victim) == 0o755


def test_a_file_where_a_directory_belongs_is_an_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    (tmp_path / "run").write_text("oops")
    with pytest.raises(LayoutError) as info:
        repair_layout(cfg, Owners.unprivileged())
    message = str(info.value)
    assert str(tmp_path / "run") in message and "found file" in message and "expected directory" in message


FOUR_ACCOUNTS = {
    "qmgr": Account("q", "g", 4001, 4000),
    "smar": Account("r", "r", 4002, 4002),
    "smtpc": Account("c", "g", 4003, 4000),
    "smtps": Account("s", "g", 4004, 4000),
}


@pytest.mark.root
def test_as_root_owners_follow_the_model(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    tmp_path.chmod(0o755)
    owners = Owners.from_accounts(FOUR_ACCOUNTS)
    repair_layout(cfg, owners)
    st = (tmp_path / "queue" / "content" / "9Z").stat()
    assert (st.st_uid, st.st_gid) == (4001, 4000)
    st = (tmp_path / "run").stat()
    assert (st.st_uid, st.st_gid) == (0, 4000)
    st = (tmp_path / "mail").stat()
    assert (st.st_uid, st.st_gid) == (4003, 4000)
    st = (tmp_path / "queue" / "smar").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4002, 4002, 0o700)
    assert _mode(tmp_path / "queue") == 0o750  # greylisting is off: smar need not enter the queue
    os.chown(tmp_path / "queue", 0, 0)
    assert [p.path for p in inspect_layout(cfg, owners)] == [tmp_path / "queue"]
    assert repair_layout(cfg, owners) != []
    assert inspect_layout(cfg, owners) == []
    assert all(e.path.is_relative_to(tmp_path) for e in expected_layout(cfg, owners))


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory that every user can enter (pytest's own lives under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="meta1-own-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_access_problem_names_the_directory_in_the_way(open_tmp: Path) -> None:
    tmp_path = open_tmp
    private = tmp_path / "home"
    lib = private / "lib"
    lib.mkdir(parents=True)
    tmp_path.chmod(0o755)
    private.chmod(0o700)
    lib.chmod(0o755)
    reason = access_problem(lib, NOBODY, {NOBODY})
    assert reason is not None and str(private) in reason and "0700" in reason and "cannot enter" in reason
    private.chmod(0o711)
    assert access_problem(lib, NOBODY, {NOBODY}) is None
    lib.chmod(0o700)
    reason = access_problem(lib, NOBODY, {NOBODY})
    assert reason is not None and "cannot read" in reason
    # Group bits count for a member of the directory's group.
    lib.chmod(0o750)
    assert access_problem(lib, NOBODY, {lib.stat().st_gid}) is None
    assert access_problem(lib, 0, set()) is None


def test_the_pickup_directory_belongs_to_the_submission_group(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    without = Owners.from_accounts(FOUR_ACCOUNTS)
    pickup = {e.path.name: e for e in expected_layout(cfg, without)}["pickup"]
    # No submission group: root's group, so only root and qmgr (the owner) may drop mail there.
    assert (pickup.uid, pickup.gid, pickup.mode) == (4001, 0, 0o1730)
    assert queue_directory_mode(cfg, without) == 0o750
    group = Owners.from_accounts(FOUR_ACCOUNTS, submission_gid=4010)
    pickup = {e.path.name: e for e in expected_layout(cfg, group)}["pickup"]
    assert (pickup.uid, pickup.gid, pickup.mode) == (4001, 4010, 0o1730)
    # meta1-postdrop runs with that group only: it must search the queue directory to reach pickup.
    assert queue_directory_mode(cfg, group) == 0o751
    corrupt = {e.path.name: e for e in expected_layout(cfg, group)}["corrupt"]
    assert (corrupt.uid, corrupt.gid, corrupt.mode) == (4001, 4000, 0o700)
    # Unprivileged, everything is the invoking user's; the queue stays closed.
    assert queue_directory_mode(cfg, Owners.unprivileged()) == 0o750


def _greylisting(tmp_path: Path, extra: str = "") -> Config:
    return parse_config(
        f"queue_directory = {tmp_path / 'queue'}; run_directory = {tmp_path / 'run'};"
        f" mail_directory = {tmp_path / 'mail'}; smar {{ greylisting {{ enable = yes; {extra} }} }}"
    )


def test_smar_may_search_the_queue_only_when_it_needs_its_database_there(tmp_path: Path) -> None:
    four = Owners.from_accounts(FOUR_ACCOUNTS)
    assert queue_directory_mode(_config(tmp_path), four) == 0o750
    assert queue_directory_mode(_greylisting(tmp_path), four) == 0o751
    # One user, smar in the shared group, or a database elsewhere: nothing to open up.
    assert queue_directory_mode(_greylisting(tmp_path), Owners.unprivileged()) == 0o750
    shared = dict(FOUR_ACCOUNTS, smar=Account("r", "g", 4002, 4000))
    assert queue_directory_mode(_greylisting(tmp_path), Owners.from_accounts(shared)) == 0o750
    elsewhere = _greylisting(tmp_path, f"database = {tmp_path / 'lib' / 'g.db'};")
    assert queue_directory_mode(elsewhere, four) == 0o750
    # The database and SQLite's files beside it are checked (when they exist), not elsewhere.
    paths = {e.path.name: e for e in expected_layout(_greylisting(tmp_path), four)}
    assert {name for name in paths if name.startswith("greylist")} == {
        "greylist.db",
        "greylist.db-wal",
        "greylist.db-shm",
    }
    assert (paths["greylist.db-shm"].uid, paths["greylist.db-shm"].mode, paths["greylist.db"].create) == (
        4002,
        0o600,
        False,
    )
    assert not any(e.path.name == "g.db" for e in expected_layout(elsewhere, four))


def test_greylist_files_are_repaired(tmp_path: Path) -> None:
    cfg = _greylisting(tmp_path)
    owners = Owners.unprivileged()
    repair_layout(cfg, owners)
    shm = tmp_path / "queue" / "smar" / "greylist.db-shm"
    shm.write_bytes(b"")
    shm.chmod(0o644)
    assert [str(p) for p in inspect_layout(cfg, owners)] == [
        f"{shm}: found file {_me()} 0644, expected file {_me()} 0600"
    ]
    assert repair_layout(cfg, owners) != [] and _mode(shm) == 0o600


def _me() -> str:
    import grp
    import pwd

    return f"{pwd.getpwuid(os.getuid()).pw_name}:{grp.getgrgid(os.getgid()).gr_name}"


@pytest.mark.root
def test_as_root_with_greylisting_smar_can_search_the_queue(tmp_path: Path) -> None:
    cfg = _greylisting(tmp_path)
    tmp_path.chmod(0o755)
    owners = Owners.from_accounts(FOUR_ACCOUNTS)
    repair_layout(cfg, owners)
    assert _mode(tmp_path / "queue") == 0o751
    assert (tmp_path / "queue" / "smar").stat().st_uid == 4002
    assert inspect_layout(cfg, owners) == []
    # Turned off again (a reload): the queue closes.
    assert [p.path for p in inspect_layout(_config(tmp_path), owners)] == [tmp_path / "queue"]


def test_a_database_elsewhere_must_be_writable_by_smar(open_tmp: Path) -> None:
    lib = open_tmp / "lib"
    lib.mkdir(mode=0o755)
    lib.chmod(0o755)
    cfg = _greylisting(open_tmp, f"database = {lib / 'greylist.db'};")
    accounts = {"smar": Account("nobody", "nogroup", NOBODY, NOBODY)}
    [problem] = reach_problems(cfg, accounts)
    assert f"cannot create its greylisting database {lib / 'greylist.db'}" in problem
    assert "cannot write in it" in problem
    lib.chmod(0o777)
    assert reach_problems(cfg, accounts) == []
    # Below the queue (the default): smar needs the way in, which mcp gives it; nothing to report.
    assert reach_problems(_greylisting(open_tmp), accounts) == []


def test_most_content_subdirectories_can_wait_for_the_workers(tmp_path: Path) -> None:
    """mcp makes the 31 seed subdirectories at once and the other 930 while the workers start
    (a first start is 0.2 s faster); each of those appears whole, with its owner and mode."""
    cfg = _config(tmp_path)
    owners = Owners.unprivileged()
    deferred: list[Expected] = []
    repair_layout(cfg, owners, deferred)
    content = tmp_path / "queue" / "content"
    assert sorted(p.name for p in content.iterdir()) == sorted(n for n in content_subdirs() if n[0] == "2")
    assert len(deferred) == 930 and not any(is_seed_subdir(item.path.name) for item in deferred)
    # Made meanwhile, and in use already: left alone (an empty one is simply replaced).
    (content / "9Z").mkdir()
    (content / "9Z" / "XXXXXXXXXX9Z").write_bytes(b"")
    assert create_deferred(deferred) == 929
    # Everything is as the model says but the one made meanwhile (mcp repairs it at the next start).
    assert [p.path for p in inspect_layout(cfg, owners)] == [content / "9Z"]
    assert _mode(content / "ZZ") == CONTENT_SUBDIR_MODE
    assert not [p for p in content.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_making_the_deferred_directories_stops_when_told(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    deferred: list[Expected] = []
    repair_layout(cfg, Owners.unprivileged(), deferred)
    stop = threading.Event()
    stop.set()
    assert create_deferred(deferred, stop) == 0
    # The next start makes them.
    again: list[Expected] = []
    repair_layout(cfg, Owners.unprivileged(), again)
    assert len(again) == 930
