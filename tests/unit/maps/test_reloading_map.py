"""ReloadingMap: follows file changes, keeps the old version on errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from meta1py.maps import MapErrors, ReloadingMap
from meta1py.maps.aliases import Aliases, parse_aliases
from meta1py.maps.routes import Routes, SmtpRoute, parse_routes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rewrite(path: Path, text: str) -> None:
    """Replace the file atomically (new inode), as editors and config tools do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_reload_after_change_and_interval(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: one\n")
    clock = FakeClock()
    m: ReloadingMap[Aliases] = ReloadingMap(path, parse_aliases, clock=clock)
    assert m.current.lookup("a") == ("one",)
    rewrite(path, "a: two\n")
    # Not checked again within the interval.
    clock.now += 0.5
    assert m.current.lookup("a") == ("one",)
    clock.now += 0.6
    assert m.current.lookup("a") == ("two",)
    assert m.generation == 1


def test_in_place_rewrite_detected_by_size(tmp_path: Path) -> None:
    path = tmp_path / "routes"
    path.write_text("a.test smtp:\n")
    clock = FakeClock()
    m: ReloadingMap[Routes] = ReloadingMap(path, parse_routes, clock=clock)
    with open(path, "w") as f:  # same inode
        f.write("a.test smtp:[10.0.0.1]:2525\n")
    clock.now += 1
    assert m.current.lookup("a.test") == SmtpRoute("10.0.0.1", 2525, False)


def test_broken_new_version_keeps_old_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: one\n")
    clock = FakeClock()
    m: ReloadingMap[Aliases] = ReloadingMap(path, parse_aliases, clock=clock)
    rewrite(path, "a: one\nb: :include:lists/b\n")
    clock.now += 1
    with caplog.at_level(logging.ERROR, logger="meta1py.maps"):
        assert m.current.lookup("a") == ("one",)
    assert f"{path}:2: relative :include: path" in caplog.text
    assert "keeping the previous version" in caplog.text
    assert m.generation == 0
    # Reported once per change, not on every lookup.
    caplog.clear()
    clock.now += 1
    with caplog.at_level(logging.ERROR, logger="meta1py.maps"):
        m.current  # noqa: B018
    assert caplog.text == ""
    # Fixed file is picked up.
    rewrite(path, "a: fixed\n")
    clock.now += 1
    assert m.current.lookup("a") == ("fixed",)


def test_missing_file_keeps_old(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("a: one\n")
    clock = FakeClock()
    m: ReloadingMap[Aliases] = ReloadingMap(path, parse_aliases, clock=clock)
    path.unlink()
    clock.now += 1
    assert m.current.lookup("a") == ("one",)
    path.write_text("a: back\n")
    clock.now += 1
    assert m.current.lookup("a") == ("back",)


def test_initial_errors_raise(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("bad line\n")
    with pytest.raises(MapErrors, match=r"aliases:1: expected"):
        ReloadingMap(path, parse_aliases)
    with pytest.raises(MapErrors, match=r"aliases-missing:0: cannot read map"):
        ReloadingMap(tmp_path / "aliases-missing", parse_aliases)
