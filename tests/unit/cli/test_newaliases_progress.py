"""meta1 newaliases on a big aliases file: a progress bar by lines on a terminal, none with -q or
in a pipe, and the same result lines either way."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from meta1py.cli import makemap as makemap_module
from meta1py.cli.newaliases import main as newaliases


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def big_aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 3,000-line aliases file, "big" for this test (the threshold lowered to 2,000)."""
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(makemap_module, "PROGRESS_MIN_LINES", 2_000)
    path = tmp_path / "aliases"
    path.write_text("".join(f"user{i}: u{i}@example.org\n" for i in range(3_000)))
    return path


@pytest.mark.parametrize("kind", ["", "cdb:"])
def test_a_big_file_shows_a_bar_on_a_terminal(
    big_aliases: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    conf = big_aliases.parent / "meta1.conf"
    conf.write_text(f"smar {{ aliases = {kind}{big_aliases}; }}\n")
    assert newaliases(["-f", str(conf)]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and "3000 aliases" in quiet.out  # not a terminal: no bar
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert newaliases(["-f", str(conf)]) == 0
    assert capsys.readouterr().out == quiet.out
    drawn = terminal.getvalue()
    assert drawn.startswith("\raliases [") and "0/3,000 lines" in drawn
    assert "100%  3,000/3,000 lines" in drawn.split("\r")[-1] and drawn.endswith("\n")
    terminal.seek(0)
    terminal.truncate()
    assert newaliases(["-f", str(conf), "-q"]) == 0
    assert terminal.getvalue() == ""


def test_bad_lines_come_after_the_bar_line(
    big_aliases: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with big_aliases.open("a") as f:
        f.write("broken line without a colon\n")
    conf = big_aliases.parent / "meta1.conf"
    conf.write_text(f"smar {{ aliases = {big_aliases}; }}\n")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert newaliases(["-f", str(conf)]) == 1
    bar, _, errors = terminal.getvalue().rpartition("\x1b[K\n")
    assert bar.startswith("\raliases [")
    assert errors.startswith(f"{big_aliases}:3001: ")
