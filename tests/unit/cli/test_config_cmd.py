"""``meta1 config``: the effective value of options, as postconf prints them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meta1py.cli.config import main
from meta1py.conf import parse_config


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "meta1.conf"
    path.write_text(
        f"queue_directory = {tmp_path / 'q'};\n"
        "smar { DNS_timeout = 5s; dnsbl { zone = bl.example.net; } }\n"
        "smtps { max_sessions = 200; }\n"
        "smtps submission { listen_socket { address = 127.0.0.1; port = 2587; } require_auth = yes; }\n"
    )
    return path


def test_names_values_and_sections(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(conf), "smar.dns_timeout", "smtps[submission].require_auth", "smar.dnsbl[0]"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["smar.DNS_timeout = 5s", "smtps[submission].require_auth = yes"]
    assert "smar.dnsbl[0].zone = bl.example.net" in lines and "smar.dnsbl[0].action = reject" in lines


def test_non_defaults_and_json(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(conf), "-n"]) == 0
    changed = capsys.readouterr().out.splitlines()
    assert "smar.DNS_timeout = 5s" in changed and "smtps.max_sessions = 200" in changed
    assert not any(line.startswith("smtpc.") for line in changed)
    assert (
        main(["-f", str(conf), "--json", "smar.DNS_timeout", "smtps.max_sessions", "smtps.relay_clients"])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {
        "smar.DNS_timeout": 5.0,
        "smtps.max_sessions": 200,
        "smtps.relay_clients": ["127.0.0.0/8", "::1/128"],
    }


def test_every_option_parses_back(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Each printed value is in configuration syntax: the whole list, written back as a file of
    # top-level options, parses (sections aside, which have their own syntax).
    assert main(["-f", str(conf)]) == 0
    top = [line for line in capsys.readouterr().out.splitlines() if "." not in line.split(" = ")[0]]
    text = "".join(f"{line};\n" for line in top if not line.endswith("= "))
    parse_config(text)


def test_unknown_names_get_a_hint(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-f", str(conf), "dns_timeout"]) == 1
    assert "did you mean smar.DNS_timeout?" in capsys.readouterr().err
    assert main(["-f", str(conf), "--bogus"]) == 64
