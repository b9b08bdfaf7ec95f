"""ContentSyncer: many finished content files, one worker-thread trip, failures reported per file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

import meta1py.queue.content as content_module
from meta1py.queue.content import ContentSyncer, ContentWriter, open_content
from meta1py.queue.errors import QueueStorageError


async def test_concurrent_finishes_share_batches(tmp_path: Path) -> None:
    syncer = ContentSyncer()
    writers = []
    for i in range(40):
        w = ContentWriter(tmp_path)
        w.write(b"message %d\r\n" % i)
        writers.append(w)
    async with trio.open_nursery() as nursery:
        for w in writers:
            nursery.start_soon(syncer.finish, w)
    # every file is complete, closed and readable
    for i, w in enumerate(writers):
        with open_content(tmp_path, w.qid) as f:
            assert f.read() == b"message %d\r\n" % i
    # the first caller runs alone, everyone who came meanwhile shares the next trip
    assert syncer.batches <= 3


async def test_a_failing_fsync_fails_only_its_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncer = ContentSyncer()
    good, bad = ContentWriter(tmp_path), ContentWriter(tmp_path)
    real_fsync = os.fsync
    bad_fd: list[int] = []

    def fsync(fd: int) -> None:
        if bad_fd and fd == bad_fd[0]:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    assert bad._file is not None
    bad_fd.append(bad._file.fileno())
    monkeypatch.setattr(content_module.os, "fsync", fsync)
    results: dict[str, BaseException | None] = {}

    async def finish(w: ContentWriter) -> None:
        try:
            await syncer.finish(w)
            results[w.qid] = None
        except QueueStorageError as exc:
            results[w.qid] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish, good)
        nursery.start_soon(finish, bad)
    assert results[good.qid] is None
    err = results[bad.qid]
    assert isinstance(err, QueueStorageError) and err.disk_full
