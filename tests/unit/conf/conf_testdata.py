"""Paths and helpers shared by the configuration tests."""

from __future__ import annotations

from pathlib import Path

from meta1py.conf import ConfigError

DATA = Path(__file__).resolve().parents[2] / "data" / "conf"
ROOT = Path(__file__).resolve().parents[3]


def error_lines(errors: list[ConfigError]) -> list[str]:
    """The comparable form of errors: ``FILE:LINE:COL: message`` (basename) plus a hint line."""
    out = []
    for e in errors:
        out.append(f"{Path(e.path).name}:{e.line}:{e.column}: {e.message}")
        if e.hint:
            out.append(f"hint: {e.hint}")
    return out
