"""Keep the message table in ``docs/rpc.md`` in step with `meta1py.rpc.messages`.

Usage: ``python -m meta1py.rpc.doc docs/rpc.md`` rewrites the text between the markers
``<!-- messages:begin -->`` and ``<!-- messages:end -->``; ``--check`` exits 1 if it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import meta1py.rpc.messages  # noqa: F401  (registers the messages)
from meta1py.rpc.schema import message_table

BEGIN = "<!-- messages:begin -->"
END = "<!-- messages:end -->"


def render_doc(text: str) -> str:
    """Return ``text`` with the generated message table between the markers.

    Raises:
        ValueError: the markers are missing.
    """
    start = text.index(BEGIN) + len(BEGIN)
    stop = text.index(END, start)
    return text[:start] + "\n" + message_table() + text[stop:]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    paths = [a for a in args if a != "--check"] or ["docs/rpc.md"]
    status = 0
    for name in paths:
        path = Path(name)
        old = path.read_text(encoding="utf-8")
        new = render_doc(old)
        if old == new:
            continue
        if check:
            print(f"{path}: message table is stale; run python -m meta1py.rpc.doc {path}")
            status = 1
        else:
            path.write_text(new, encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(main())
