"""A queue id names one message: not even a message delivered within its second frees its id."""

from __future__ import annotations

from pathlib import Path

from meta1py.queue.content import ContentWriter, remove_content


def test_an_id_is_not_issued_again_after_its_file_was_removed(tmp_path: Path) -> None:
    # At about 1,500 ids a second with each file removed at once (a fast delivery), O_EXCL alone
    # let an id come back about once in 5,000 (seen: smtpc's memory of delivered recipients
    # answered for the wrong message).
    seen: set[str] = set()
    for _ in range(20_000):
        writer = ContentWriter(tmp_path)
        writer.close_unsynced()
        assert writer.qid not in seen
        seen.add(writer.qid)
        remove_content(tmp_path, writer.qid)
