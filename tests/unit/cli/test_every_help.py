"""Every ``meta1`` subcommand answers ``--help`` with its usage on stdout and exit 0 (a new user's
first try), never a usage error."""

from __future__ import annotations

import importlib

import pytest

from meta1py.cli import SUBCOMMANDS


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_help_exits_zero_with_usage(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(SUBCOMMANDS[command][0])
    try:
        status = module.main(["--help"])
    except SystemExit as exc:  # argparse's own exit
        status = exc.code
    assert status == 0, command
    assert "usage" in capsys.readouterr().out.lower(), command
