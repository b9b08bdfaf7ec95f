"""Golden files: good configs with the model they produce, bad configs with their exact errors."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from conf_testdata import DATA, error_lines

from meta1py.conf import ConfigErrors, load_config

GOOD = sorted((DATA / "good").glob("*.conf"))
BAD = sorted((DATA / "bad").glob("*.conf"))


def _lookup(obj: Any, dotted: str) -> Any:
    """Follow ``smtps[0].listen_socket[1].port`` through the model."""
    for part in dotted.split("."):
        name, _, index = part.partition("[")
        obj = getattr(obj, name)
        if index:
            obj = obj[int(index.rstrip("]"))]
    return obj


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, (Path, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__ if k != "locations"}
    return value


def test_there_are_enough_cases() -> None:
    assert len(GOOD) >= 5
    assert len(BAD) >= 30


@pytest.mark.parametrize("conf", GOOD, ids=lambda p: p.stem)
def test_good_config_gives_expected_model(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative paths are relative to the current directory: pin it to the data directory.
    monkeypatch.chdir(conf.parent)
    cfg = load_config(conf)
    expected = json.loads(conf.with_suffix(".json").read_text())
    for dotted, want in expected.items():
        if isinstance(want, str) and want.startswith("$CWD"):
            want = str(conf.parent) + want[4:]
        assert _jsonable(_lookup(cfg, dotted)) == want, dotted


@pytest.mark.parametrize("conf", BAD, ids=lambda p: p.stem)
def test_bad_config_gives_expected_errors(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(conf.parent)
    with pytest.raises(ConfigErrors) as info:
        load_config(conf)
    expected = conf.with_suffix(".err").read_text().splitlines()
    assert error_lines(info.value.errors) == expected
