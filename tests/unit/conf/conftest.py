"""Shared fixtures for the configuration tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in an empty temporary directory (relative paths resolve there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
