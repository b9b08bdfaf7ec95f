"""The line syntax shared by the map files (aliases, routes, tls_policy).

* Empty lines and lines whose first non-blank character is ``#`` are ignored anywhere. A ``#``
  later in a line is *not* a comment (it is legal in local parts and in ``error:`` texts).
* A line starting with non-whitespace text starts an entry: ``key`` up to the separator
  (whitespace, or a character such as ``:``), then the value.
* A line starting with whitespace is, depending on the format: a continuation of the previous
  entry (``"join"``, aliases), an error (``"error"``, routes), or an entry like any other
  (``"entry"``, tls_policy).

Errors are collected, as :class:`~meta1py.maps.errors.MapError` (``path:line: message``), into a
list the format also appends to, so that an operator sees every problem of a file at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple

from meta1py.maps.errors import MapError

__all__ = ["Continuation", "Entry", "map_entries"]

#: What a line starting with whitespace is (see the module docstring).
Continuation = Literal["join", "error", "entry"]


class Entry(NamedTuple):
    """One entry of a map file (a named tuple: a large map has a million of them, and a tuple is
    built several times faster than a frozen dataclass).

    Attributes:
        line: 1-based number of the line the entry starts on.
        text: that line, stripped.
        key: the text before the separator (stripped; may be empty with a character separator).
        value: the rest of that line after the separator, stripped; None when the line has no
            separator (with the whitespace separator: nothing after the key).
        more: the continuation lines, as ``(line number, stripped text)`` (``"join"`` only).
    """

    line: int
    text: str
    key: str
    value: str | None
    more: tuple[tuple[int, str], ...] = ()


def _split(line: int, text: str, separator: str | None) -> Entry:
    if separator is None:
        # ``text`` is stripped, and split() drops the blanks after the key: nothing to strip.
        parts = text.split(None, 1)
        return Entry(line, text, parts[0], parts[1] if len(parts) == 2 else None)
    key, sep, value = text.partition(separator)
    return Entry(line, text, key.strip(), value.strip() if sep else None)


def map_entries(
    text: str,
    path: str,
    errors: list[MapError],
    *,
    separator: str | None = None,
    continuation: Continuation = "error",
    continuation_error: str = "continuation lines are not allowed",
) -> Iterator[Entry]:
    """Yield the entries of a map file's text, in file order.

    Args:
        text: the file contents.
        path: the file name used in error messages.
        errors: where line errors are appended (as they are met).
        separator: None to split key and value at the first run of whitespace, or the character
            that ends the key (``":"`` for aliases).
        continuation: what a line starting with whitespace is (see the module docstring).
        continuation_error: the error for a line starting with whitespace that cannot be
            accepted: every such line with ``"error"``; one before the first entry with
            ``"join"``.
    """
    pending: tuple[int, str, list[tuple[int, str]]] | None = None  # "join": the entry being built
    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace() and continuation != "entry":
            if continuation == "join" and pending is not None:
                pending[2].append((lineno, stripped))
            else:
                errors.append(MapError(path, lineno, continuation_error))
            continue
        if continuation != "join":
            yield _split(lineno, stripped, separator)
            continue
        if pending is not None:
            yield _finish(pending, separator)
        pending = (lineno, stripped, [])
    if pending is not None:
        yield _finish(pending, separator)


def _finish(pending: tuple[int, str, list[tuple[int, str]]], separator: str | None) -> Entry:
    line, text, more = pending
    entry = _split(line, text, separator)
    return Entry(entry.line, entry.text, entry.key, entry.value, tuple(more))
