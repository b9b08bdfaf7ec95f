"""``test_mode { }`` and ``meta1 run --test-mode``: loopback only unless the operator says so."""

from __future__ import annotations

import pytest

from meta1py.conf import ConfigErrors, parse_config, with_test_mode


def test_test_mode_is_off_by_default_and_listens_on_loopback() -> None:
    cfg = parse_config("")
    assert not cfg.test_mode.enable
    assert cfg.test_mode.listen == ("127.0.0.1", 8025)
    assert with_test_mode(cfg).test_mode.enable


def test_a_listener_that_is_not_loopback_is_refused_where_it_is_set() -> None:
    text = "test_mode {\n  enable = yes;\n  listen = 192.0.2.1:8025;\n}\n"
    with pytest.raises(ConfigErrors) as err:
        parse_config(text, "meta1.conf")
    message = str(err.value)
    assert "meta1.conf:3:" in message and "not a loopback address" in message
    assert "allow_non_loopback" in message
    assert parse_config(text.replace("}", "  allow_non_loopback = yes;\n}")).test_mode.enable


def test_test_mode_from_the_command_line_checks_the_listener_too() -> None:
    cfg = parse_config("test_mode { listen = [::1]:9025; }")
    assert with_test_mode(cfg).test_mode.listen == ("::1", 9025)
    with pytest.raises(ConfigErrors, match="not a loopback address"):
        with_test_mode(parse_config("test_mode { listen = 0.0.0.0:8025; }"))
