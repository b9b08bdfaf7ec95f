"""Content files: layout, writing, reading, removal, orphan scanning, disk full."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from meta1py.ownership import content_subdirs
from meta1py.queue.content import (
    FILES_PER_SUBDIR,
    ContentWriter,
    content_path,
    open_content,
    remove_content,
    scan_content_ids,
)
from meta1py.queue.errors import QueueStorageError
from meta1py.queue.ids import is_seed_subdir, new_queue_id


def test_write_finish_read(tmp_path: Path) -> None:
    writer = ContentWriter(tmp_path)
    chunks = [b"Subject: hi\r\n", b"\r\n", os.urandom(200_000), b"end\r\n"]
    for chunk in chunks:
        writer.write(chunk)
    writer.finish()
    assert writer.size == sum(map(len, chunks))
    assert writer.path == tmp_path / "content" / writer.qid[-2:] / writer.qid
    assert content_path(tmp_path, writer.qid) == writer.path
    with open_content(tmp_path, writer.qid) as f:
        assert f.read() == b"".join(chunks)
    mode = stat.S_IMODE(writer.path.stat().st_mode)
    assert mode & ~0o640 == 0


def test_files_written_together_share_a_subdirectory(tmp_path: Path) -> None:
    # One directory fsync then covers a whole batch; the process moves on after FILES_PER_SUBDIR.
    writers = [ContentWriter(tmp_path) for _ in range(3 * FILES_PER_SUBDIR)]
    for writer in writers:
        writer.finish()
    assert len({w.qid for w in writers}) == len(writers)
    runs: list[int] = []
    previous = None
    for writer in writers:
        if writer.dir_name != previous:
            runs.append(0)
            previous = writer.dir_name
        runs[-1] += 1
    # Three full turns, split at most once more by a turn that began before this test.
    assert 3 <= len(runs) <= 4
    assert max(runs) <= FILES_PER_SUBDIR
    assert sorted(scan_content_ids(tmp_path)) == sorted(w.qid for w in writers)


def test_given_id_is_claimed_exclusively(tmp_path: Path) -> None:
    qid = new_queue_id()
    first = ContentWriter(tmp_path, qid)
    first.finish()
    with pytest.raises(FileExistsError):
        ContentWriter(tmp_path, qid)
    with open_content(tmp_path, qid) as f:
        assert f.read() == b""


def test_abort_unlinks(tmp_path: Path) -> None:
    writer = ContentWriter(tmp_path)
    writer.write(b"partial")
    writer.abort()
    assert not writer.path.exists()
    writer.abort()  # idempotent


def test_context_manager_aborts_unfinished_only(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ContentWriter(tmp_path) as writer:
        writer.write(b"x")
        raise RuntimeError("client went away")
    assert not writer.path.exists()
    with ContentWriter(tmp_path) as kept:
        kept.write(b"x")
        kept.finish()
    assert kept.path.exists()


def test_write_after_finish_is_a_bug(tmp_path: Path) -> None:
    writer = ContentWriter(tmp_path)
    writer.finish()
    with pytest.raises(ValueError):
        writer.write(b"late")


@pytest.mark.parametrize("bad", ["../../etc/pa", "2GY87QZKPFZE/..", "x", ""])
def test_paths_refuse_bad_ids(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        content_path(tmp_path, bad)
    with pytest.raises(ValueError):
        remove_content(tmp_path, bad)
    with pytest.raises(ValueError):
        ContentWriter(tmp_path, bad)


def test_remove(tmp_path: Path) -> None:
    writer = ContentWriter(tmp_path)
    writer.finish()
    assert remove_content(tmp_path, writer.qid)
    assert not remove_content(tmp_path, writer.qid)
    with pytest.raises(FileNotFoundError):
        open_content(tmp_path, writer.qid)


def test_scan_finds_ids_and_skips_strangers(tmp_path: Path) -> None:
    assert list(scan_content_ids(tmp_path)) == []
    ids = set()
    for _ in range(20):
        writer = ContentWriter(tmp_path)
        writer.finish()
        ids.add(writer.qid)
    content = tmp_path / "content"
    some = next(iter(ids))
    (content / some[-2:] / "README").write_text("not a message")
    (content / some[-2:] / (some[:-2] + "ZZ" if some[-2:] != "ZZ" else some[:-2] + "YY")).touch()
    (content / "junk").mkdir()
    (content / "junk" / some).touch()
    (content / "stray-file").touch()
    assert set(scan_content_ids(tmp_path)) == ids


def test_missing_queue_dir_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(QueueStorageError) as info:
        ContentWriter(tmp_path / "missing")
    assert not info.value.disk_full


@pytest.fixture
def tiny_tmpfs(mount_tmpfs: Callable[[str], Path]) -> Path:
    """A 256 KiB tmpfs (root only)."""
    return mount_tmpfs("size=256k")


def test_disk_full_is_reported_and_abort_cleans_up(tiny_tmpfs: Path) -> None:
    kept = ContentWriter(tiny_tmpfs)
    kept.write(b"a" * 10_000)
    kept.finish()
    writer = ContentWriter(tiny_tmpfs)
    with pytest.raises(QueueStorageError) as info:
        for _ in range(100):
            writer.write(b"x" * 64 * 1024)
        writer.finish()
    assert info.value.disk_full
    writer.abort()
    assert not writer.path.exists()
    # The space is back and the earlier message is intact.
    again = ContentWriter(tiny_tmpfs)
    again.write(b"b" * 10_000)
    again.finish()
    with open_content(tiny_tmpfs, kept.qid) as f:
        assert f.read() == b"a" * 10_000


def test_a_writer_never_makes_a_subdirectory_that_mcp_has_not_made(tmp_path: Path) -> None:
    """Right after a first start only the seed subdirectories exist (mcp makes the rest while
    the workers start): new files go there, and no writer makes another one."""
    writers = [ContentWriter(tmp_path) for _ in range(2 * FILES_PER_SUBDIR)]
    for writer in writers:
        writer.finish()
    made = {p.name for p in (tmp_path / "content").iterdir()}
    assert made and all(is_seed_subdir(name) for name in made)
    assert sorted(scan_content_ids(tmp_path)) == sorted(w.qid for w in writers)


def test_a_writer_uses_every_subdirectory_once_they_exist(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    for name in content_subdirs():
        (content / name).mkdir()
    writers = [ContentWriter(tmp_path) for _ in range(40 * FILES_PER_SUBDIR)]
    for writer in writers:
        writer.finish()
    used = {Path(w.dir_name).name for w in writers}
    # 40 turns over 961 subdirectories: nearly all outside the 31 seed ones.
    assert sum(not is_seed_subdir(name) for name in used) >= 30
