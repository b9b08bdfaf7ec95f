"""qmgr's orphan sweep (issue 16): content with no envelope goes, content being written stays."""

from __future__ import annotations

import os
import time
from pathlib import Path

from meta1py.conf import parse_config
from meta1py.qmgr.manager import QueueManager
from meta1py.queue.content import ContentWriter, content_in_use, content_path
from meta1py.queue.envelopes import Envelope, EnvelopeStore, Recipient, envelope_store_path


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_sweep_removes_only_old_unlocked_files_without_envelope(tmp_path: Path) -> None:
    queue_dir = tmp_path / "q"
    queue_dir.mkdir()
    config = parse_config(f"queue_directory = {queue_dir}; qmgr {{ orphan_min_age = 5m; }}")
    store = EnvelopeStore(envelope_store_path(queue_dir))
    try:
        manager = QueueManager(config, store, None, None)  # type: ignore[arg-type]

        orphan = ContentWriter(queue_dir)  # a session killed after DATA: closed, no envelope
        orphan.write(b"x\r\n")
        orphan.close_unsynced()
        fresh = ContentWriter(queue_dir)  # closed a moment ago: its commit may be on its way
        fresh.write(b"x\r\n")
        fresh.close_unsynced()
        writing = ContentWriter(queue_dir)  # a long, slow DATA: still open, its mtime is old
        writing.write(b"x\r\n")
        writing._file.flush()  # type: ignore[union-attr]
        queued = ContentWriter(queue_dir)  # a queued message, however old
        queued.write(b"x\r\n")
        queued.finish()
        store.insert_envelopes(
            [
                Envelope(
                    qid=queued.qid,
                    sender="a@b.test",
                    arrival_time=time.time(),
                    size=3,
                    recipients=(Recipient(idx=0, address="r@c.test"),),
                )
            ]
        )
        for w in (orphan, writing, queued):
            _age(content_path(queue_dir, w.qid), 3600)

        assert content_in_use(content_path(queue_dir, writing.qid))
        assert not content_in_use(content_path(queue_dir, orphan.qid))
        assert manager._remove_orphans(time.time()) == 1
        assert not content_path(queue_dir, orphan.qid).exists()
        for w in (fresh, writing, queued):
            assert content_path(queue_dir, w.qid).exists(), w.qid

        writing.close_unsynced()  # the writer goes away (or dies): its lock goes with it
        _age(content_path(queue_dir, writing.qid), 3600)
        assert manager._remove_orphans(time.time()) == 1
        assert not content_path(queue_dir, writing.qid).exists()
    finally:
        store.close()


def test_orphan_options_default_to_five_minutes() -> None:
    qcfg = parse_config("").qmgr
    assert (qcfg.orphan_sweep_interval, qcfg.orphan_min_age) == (300.0, 300.0)
