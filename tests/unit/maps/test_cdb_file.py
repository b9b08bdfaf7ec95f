"""The cdb file format (meta1py.maps.cdb): round trips, compatibility, damaged files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meta1py.maps.cdb import HEADER_BYTES, CdbFormatError, CdbReader, CdbWriter, cdb_hash


def write(path: Path, items: list[tuple[bytes, bytes]]) -> None:
    with open(path, "wb") as f:
        writer = CdbWriter(f)
        for key, value in items:
            writer.add(key, value)
        writer.finish()


def test_the_hash_is_djbs() -> None:
    # h = 5381; h = ((h << 5) + h) ^ c, modulo 2**32
    assert cdb_hash(b"") == 5381
    assert cdb_hash(b"a") == (5381 * 33) ^ ord("a")
    h = 5381
    for c in b"from:alice@example.org" * 20:  # long keys wrap modulo 2**32
        h = (((h << 5) + h) ^ c) & 0xFFFFFFFF
    assert cdb_hash(b"from:alice@example.org" * 20) == h


def test_round_trip(tmp_path: Path) -> None:
    items = [(f"key{i}".encode(), f"value {i}".encode() * (i % 40)) for i in range(3000)]
    items.append((b"", b"empty key"))
    items.append(("ключ".encode(), "значение".encode()))
    write(tmp_path / "m.cdb", items)
    with CdbReader(tmp_path / "m.cdb") as reader:
        for key, value in items:
            assert reader.get(key) == value
        assert reader.get(b"missing") is None
        assert reader.get(b"key1x") is None
        assert list(reader) == items


def test_an_empty_file_has_a_header_only(tmp_path: Path) -> None:
    write(tmp_path / "e.cdb", [])
    assert (tmp_path / "e.cdb").stat().st_size == HEADER_BYTES
    with CdbReader(tmp_path / "e.cdb") as reader:
        assert reader.get(b"x") is None
        assert list(reader) == []


def test_the_first_of_two_records_with_one_key_wins(tmp_path: Path) -> None:
    write(tmp_path / "d.cdb", [(b"k", b"first"), (b"k", b"second")])
    with CdbReader(tmp_path / "d.cdb") as reader:
        assert reader.get(b"k") == b"first"


@pytest.mark.skipif(shutil.which("cdb") is None, reason="tinycdb's cdb command is not installed")
def test_tinycdb_reads_ours_and_we_read_tinycdbs(tmp_path: Path) -> None:
    write(tmp_path / "ours.cdb", [(b"from:a@example.org", b"REJECT"), (b"k2", b"v" * 500)])
    out = subprocess.run(["cdb", "-q", str(tmp_path / "ours.cdb"), "from:a@example.org"], capture_output=True)
    assert out.stdout == b"REJECT"
    subprocess.run(["cdb", "-c", str(tmp_path / "theirs.cdb")], input=b"+3,5:abc->hello\n\n", check=True)
    with CdbReader(tmp_path / "theirs.cdb") as reader:
        assert reader.get(b"abc") == b"hello"


def test_not_a_cdb_file(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"x" * 100)
    with pytest.raises(CdbFormatError, match="shorter than its header"):
        CdbReader(tmp_path / "short")
    (tmp_path / "wild").write_bytes(b"\xff" * 4096)  # hash tables far outside the file
    with pytest.raises(CdbFormatError, match="outside it"):
        CdbReader(tmp_path / "wild")


def test_a_file_truncated_in_place_gives_errors_not_a_crash(tmp_path: Path) -> None:
    """``cp new old`` truncates the file a running smar has open: reads come back short."""
    path = tmp_path / "m.cdb"
    items = [(f"key{i}".encode(), b"v" * 50) for i in range(500)]
    write(path, items)
    reader = CdbReader(path)
    os.truncate(path, HEADER_BYTES + 100)
    outcomes = set()
    for key, _value in items:
        try:
            outcomes.add("found" if reader.get(key) is not None else "none")
        except CdbFormatError:
            outcomes.add("error")
    assert "error" in outcomes
    reader.close()


def test_a_closed_reader_raises(tmp_path: Path) -> None:
    write(tmp_path / "m.cdb", [(b"a", b"b")])
    reader = CdbReader(tmp_path / "m.cdb")
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(OSError):
        reader.get(b"a")
