"""cdb, D. J. Bernstein's constant database: a writer and a reader in pure Python (no I/O library).

A cdb file maps byte-string keys to byte-string values. It is written once, in one pass, and
never changed: a new version is a new file renamed over the old one (``meta1 makemap``), which is
what lets smar read it while it is replaced. A lookup reads two or three small pieces of the file
whatever its size, so a map of millions of entries costs a running process almost no memory.

Layout (every number a 32-bit little-endian unsigned integer)::

    header    256 pairs (position of hash table i, number of slots of table i)     2048 bytes
    records   key length, value length, key, value                                 one per entry
    tables    256 hash tables; a slot is (hash, record position), (0, 0) is empty

The hash is ``h = 5381; for each byte c: h = ((h << 5) + h) ^ c`` modulo 2**32. A key lives in
table ``h % 256``; its search starts at slot ``(h >> 8) % slots`` and goes on slot by slot
(wrapping) until the key or an empty slot is found. Each table has twice as many slots as it has
keys, so a missing key usually costs one slot read. The files are those of djb's ``cdbmake`` and
of tinycdb (``cdb -q``, ``cdb -d`` read them), and the whole file is limited to 4 GiB.

The reader uses ``os.pread`` on a file descriptor rather than ``mmap``: the measured difference is
small (docs/performance.md, "Compiled maps"), file pages stay in the page cache instead of the
process's resident set, and a file truncated in place under a running process (``cp new old``)
gives short reads, which :class:`CdbReader` reports as :class:`CdbFormatError`, where a mapping
would kill the process with SIGBUS.
"""

from __future__ import annotations

import functools
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

__all__ = [
    "HEADER_BYTES",
    "MAX_FILE_BYTES",
    "CdbFormatError",
    "CdbReader",
    "CdbWriter",
    "cdb_hash",
    "cdb_hashes",
]

HEADER_BYTES = 2048
MAX_FILE_BYTES = 2**32 - 1
_PAIR = struct.Struct("<II")
_iter_pairs = _PAIR.iter_unpack
_HEADER = struct.Struct("<512I")
# A record is usually read in one pread with its key and up to this many bytes of value.
_VALUE_GUESS = 120
# Hash table slots read at once (a miss usually needs one read).
_SLOTS_PER_READ = 8


def _closed(size: int, offset: int) -> bytes:
    raise OSError(9, "the cdb file is closed")


class CdbFormatError(ValueError):
    """The file is not a cdb file, or it is damaged (a position past its end, a short read)."""


def cdb_hash(key: bytes) -> int:
    """The cdb hash of ``key`` (see the module docstring)."""
    h = 5381
    for c in key:
        h = (h * 33) ^ c
    return h & 0xFFFFFFFF


def cdb_hashes(keys: Sequence[bytes]) -> array[int]:
    """:func:`cdb_hash` of every key, computed for many keys at once (``meta1 makemap``).

    The byte loop of :func:`cdb_hash` costs about 3 s for a million keys in Python. Here keys of
    one length are hashed side by side, each in its own 64-bit lane of one big integer: for byte
    ``j``, ``H = ((H * 33) & MASK) ^ C`` where ``C`` holds byte ``j`` of every key in the low byte
    of its lane and ``MASK`` keeps the low 32 bits of every lane. A lane holds less than 2**32
    before the multiplication and less than 2**38 after it, so nothing carries into the next
    lane, and every lane ends as that key's hash. The work per byte position is a few operations
    on large integers, done in C (measured: docs/performance.md).
    """
    out = array("I", bytes(4 * len(keys)))
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    for length, members in by_length.items():
        for start in range(0, len(members), _LANES):
            part = members[start : start + _LANES]
            n = len(part)
            joined = b"".join([keys[i] for i in part])
            h = int.from_bytes(_SEED_LANE * n, "little")
            mask = int.from_bytes(_MASK_LANE * n, "little")
            lanes = bytearray(8 * n)
            for j in range(length):
                lanes[0::8] = joined[j::length]
                h = ((h * 33) & mask) ^ int.from_bytes(lanes, "little")
            hashes = array("Q", h.to_bytes(8 * n, "little"))
            if sys.byteorder == "big":
                hashes.byteswap()
            for i, value in zip(part, hashes, strict=True):
                out[i] = value
    return out


_LANES = 4096  # keys hashed side by side (integers of 32 KiB)
_SEED_LANE = (5381).to_bytes(8, "little")
_MASK_LANE = (0xFFFFFFFF).to_bytes(8, "little")


def _little_endian(table: array[int]) -> bytes:
    if sys.byteorder == "big":
        table.byteswap()
    return table.tobytes()


class CdbWriter:
    """Write a cdb file to ``fh``, a binary file open for writing at position 0.

    :meth:`add` each entry, then :meth:`finish`; nothing is valid before :meth:`finish`. The
    caller owns the file (and so where it goes and when it is synced and renamed). A key may be
    added twice (a lookup finds the first); the map compiler never does.

    Values go to the file as they come; the keys are kept until :meth:`finish`, which hashes them
    all at once (:func:`cdb_hashes`) and writes the hash tables.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._keys: list[bytes] = []
        self._positions = array("I")
        self._pos = HEADER_BYTES
        fh.write(bytes(HEADER_BYTES))

    @property
    def count(self) -> int:
        """Records added so far."""
        return len(self._keys)

    def add(self, key: bytes, value: bytes) -> None:
        """Append one record.

        Raises:
            CdbFormatError: the file would pass 4 GiB.
        """
        size = 8 + len(key) + len(value)
        if self._pos + size > MAX_FILE_BYTES:  # the hash tables are checked by finish()
            raise CdbFormatError("a cdb file is limited to 4 GiB")
        self._keys.append(key)
        self._positions.append(self._pos)
        self._fh.write(_PAIR.pack(len(key), len(value)) + key + value)
        self._pos += size

    def finish(self) -> None:
        """Write the hash tables and the header (the file is complete after this)."""
        all_hashes = cdb_hashes(self._keys)
        self._keys = []
        hashes: list[list[int]] = [[] for _ in range(256)]
        positions: list[list[int]] = [[] for _ in range(256)]
        for h, p in zip(all_hashes, self._positions, strict=True):
            hashes[h & 255].append(h)
            positions[h & 255].append(p)
        header = array("I")
        pos = self._pos
        for bucket_hashes, bucket_positions in zip(hashes, positions, strict=True):
            slots = 2 * len(bucket_hashes)
            header.append(pos)
            header.append(slots)
            if not slots:
                continue
            table = array("I", bytes(8 * slots))
            for h, p in zip(bucket_hashes, bucket_positions, strict=True):
                i = (h >> 8) % slots
                while table[2 * i + 1]:  # a record position is never 0: the header is there
                    i = i + 1 if i + 1 < slots else 0
                table[2 * i] = h
                table[2 * i + 1] = p
            self._fh.write(_little_endian(table))
            pos += 8 * slots
        if pos > MAX_FILE_BYTES:
            raise CdbFormatError("a cdb file is limited to 4 GiB")
        self._fh.seek(0)
        self._fh.write(_little_endian(header))
        self._fh.seek(pos)


class CdbReader:
    """Look keys up in a cdb file (see the module docstring).

    The file stays open until :meth:`close`; a file renamed over it later is not seen (that is
    the caller's business: :class:`meta1py.maps.compiled.CompiledTable` reopens it).

    Args:
        path: the file.

    Raises:
        OSError: it cannot be opened.
        CdbFormatError: it is shorter than a header, or its header points outside the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        #: ``pread(size, offset)``: ``size`` bytes at ``offset`` (fewer only at the end of the file).
        self._pread: Callable[[int, int], bytes] = functools.partial(os.pread, self._fd)
        try:
            st = os.fstat(self._fd)
            self.stat = st
            self.size = st.st_size
            head = self._pread(HEADER_BYTES, 0)
            if len(head) < HEADER_BYTES:
                raise CdbFormatError(f"{self.path}: not a cdb file (shorter than its header)")
            self._header = _HEADER.unpack(head)
            first = self.size
            for i in range(0, 512, 2):
                pos, slots = self._header[i], self._header[i + 1]
                if pos < HEADER_BYTES or pos + 8 * slots > self.size:
                    raise CdbFormatError(f"{self.path}: not a cdb file (hash table {i // 2} is outside it)")
                first = min(first, pos)
            self._records_end = first  # records end where the first hash table starts
        except BaseException:
            os.close(self._fd)
            raise

    def get(self, key: bytes) -> bytes | None:
        """The value of the first record with ``key``, or None.

        Raises:
            CdbFormatError: the file is damaged where this key leads (or was truncated).
            OSError: the file cannot be read.
        """
        # The hash, masked once at the end: the low 32 bits of h * 33 ^ c depend only on the
        # low 32 bits of h, and one mask per key instead of one per byte is a third faster.
        h = 5381
        for c in key:
            h = (h * 33) ^ c
        h &= 0xFFFFFFFF
        header = self._header
        b = (h & 255) << 1
        slots = header[b + 1]
        if not slots:
            return None
        table = header[b]
        i = (h >> 8) % slots
        pread = self._pread
        probed = 0
        while probed < slots:
            # Several slots per read: a search usually ends within a few (half the slots are empty).
            n = min(_SLOTS_PER_READ, slots - i, slots - probed)
            chunk = pread(8 * n, table + 8 * i)
            if len(chunk) < 8 * n:
                raise CdbFormatError(f"{self.path}: truncated (hash table slot at {table + 8 * i})")
            for sh, pos in _iter_pairs(chunk):
                if not pos:
                    return None
                if sh == h:
                    value = self._record(pos, key)
                    if value is not None:
                        return value
            probed += n
            i += n
            if i == slots:
                i = 0
        return None

    def _record(self, pos: int, key: bytes) -> bytes | None:
        """The value of the record at ``pos`` when its key is ``key``, else None."""
        klen = len(key)
        rec = self._pread(8 + klen + _VALUE_GUESS, pos)
        if len(rec) < 8 + klen:
            raise CdbFormatError(f"{self.path}: truncated (record at {pos})")
        rklen, vlen = _PAIR.unpack_from(rec)
        if rklen != klen or rec[8 : 8 + klen] != key:
            return None
        start = 8 + klen
        if vlen <= len(rec) - start:
            return rec[start : start + vlen]
        value = self._pread(vlen, pos + start)
        if len(value) < vlen:
            raise CdbFormatError(f"{self.path}: truncated (value at {pos + start})")
        return value

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """Every record in file order (``meta1 map query`` does not need it; tests and tools do).

        Raises:
            CdbFormatError: a record runs past the records' end.
        """
        pos = HEADER_BYTES
        while pos < self._records_end:
            head = self._pread(8, pos)
            if len(head) < 8:
                raise CdbFormatError(f"{self.path}: truncated (record at {pos})")
            klen, vlen = _PAIR.unpack(head)
            end = pos + 8 + klen + vlen
            if end > self._records_end:
                raise CdbFormatError(f"{self.path}: record at {pos} runs into the hash tables")
            data = self._pread(klen + vlen, pos + 8)
            if len(data) < klen + vlen:
                raise CdbFormatError(f"{self.path}: truncated (record at {pos})")
            yield data[:klen], data[klen:]
            pos = end

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            self._pread = _closed  # never read a descriptor number that may be reused
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CdbReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
