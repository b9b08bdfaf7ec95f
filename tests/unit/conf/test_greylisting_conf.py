"""``smar { greylisting { } }``: defaults, where the database lives, dumps; bad values are in
tests/data/conf/bad/greylisting_*.conf."""

from __future__ import annotations

from pathlib import Path

import pytest

from meta1py.conf import ConfigErrors, dump_config, parse_config
from meta1py.contract import smar_data_directory


def test_defaults() -> None:
    grey = parse_config("queue_directory = /var/spool/meta1;").smar.greylisting
    assert grey.enable is False
    assert (grey.delay, grey.retry_window, grey.whitelist_expiry) == (300.0, 2 * 86400.0, 35 * 86400.0)
    assert (grey.ipv4_netmask, grey.ipv6_netmask) == (24, 64)
    assert grey.database == Path("/var/spool/meta1/smar/greylist.db")
    assert smar_data_directory("/var/spool/meta1") == Path("/var/spool/meta1/smar")


def test_database_paths_and_values() -> None:
    cfg = parse_config(
        "queue_directory = /q;\n"
        "smar { greylisting { enable = yes; delay = 1s; retry_window = 1h; whitelist_expiry = 60d;\n"
        "  database = sub/grey.db; ipv4_netmask = 32; ipv6_netmask = 48; } }\n"
    )
    grey = cfg.smar.greylisting
    assert grey.enable and (grey.delay, grey.retry_window, grey.whitelist_expiry) == (
        1.0,
        3600.0,
        60 * 86400.0,
    )
    assert grey.database == Path("/q/smar/sub/grey.db")  # relative to smar's data directory
    assert (grey.ipv4_netmask, grey.ipv6_netmask) == (32, 48)
    assert parse_config("smar { greylisting { database = /srv/g.db; } }").smar.greylisting.database == Path(
        "/srv/g.db"
    )


def test_dumps_write_only_what_differs_and_parse_back() -> None:
    plain = parse_config("queue_directory = /q;")
    assert "greylisting" not in dump_config(plain)
    changed = parse_config("queue_directory = /q; smar { greylisting { enable = yes; delay = 0; } }")
    text = dump_config(changed)
    assert "greylisting {" in text and "delay = 0;" in text and "database" not in text
    assert parse_config(text) == changed
    elsewhere = parse_config("queue_directory = /q; smar { greylisting { database = /srv/g.db; } }")
    assert parse_config(dump_config(elsewhere)) == elsewhere


def test_bad_values_name_the_file_line_and_column() -> None:
    text = "smar {\n  greylisting {\n    whitelist_expiry = 0;\n    enable = perhaps;\n  }\n}\n"
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, "grey.conf")
    found = [(e.line, e.column, e.message) for e in info.value.errors]
    assert found == [
        (3, 24, "whitelist_expiry: 0 is out of range"),
        (4, 14, "enable: invalid boolean 'perhaps'"),
    ]
    assert str(info.value).startswith("grey.conf:3:24: whitelist_expiry: 0 is out of range")
