"""meta1 newaliases on aliases(5) files: commands, files, includes and user@domain names compile
and read back; bad lines are reported with file:line and nothing is compiled."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meta1py.cli.newaliases import main as newaliases
from meta1py.maps.aliases import Expansion
from meta1py.maps.compiled import open_compiled
from meta1py.maps.views import AliasesView

DEBIAN = Path(__file__).resolve().parents[2] / "data" / "aliases" / "debian-exim4.aliases"

ALIASES = """\
postmaster: root
root:       admin
tickets:    "|/usr/local/bin/ticket --queue=new, urgent", /var/spool/tickets.mbox, \\tickets
staff:      :include:/etc/meta1/staff.list
info@example.org: sales
"""


def conf(tmp_path: Path, spec: str) -> str:
    path = tmp_path / "meta1.conf"
    path.write_text(f"smar {{ aliases = {spec}; }}\n")
    return str(path)


def test_a_compiled_map_keeps_every_kind_of_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "aliases").write_text(ALIASES)
    assert newaliases(["-f", conf(tmp_path, f"cdb:{tmp_path / 'aliases'}")]) == 0
    assert "5 aliases compiled from" in capsys.readouterr().out
    compiled = AliasesView(open_compiled("aliases", tmp_path / "aliases"))
    assert compiled.get("tickets") == (
        '"|/usr/local/bin/ticket --queue=new, urgent"',
        "/var/spool/tickets.mbox",
        "\\tickets",
    )
    assert compiled.lookup("info", "example.org") == ("sales",)
    result = compiled.expand("tickets@localhost", {"localhost"})
    assert isinstance(result, Expansion)
    assert result.recipients == (
        "tickets@localhost:|/usr/local/bin/ticket --queue=new, urgent",
        "tickets@localhost:/var/spool/tickets.mbox",
        "tickets@localhost",
    )
    # The commands of a compiled map run as the compiled file's owner.
    assert compiled.source_of("tickets") == f"{tmp_path / 'aliases'}.cdb"


def test_a_debian_file_checks_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(DEBIAN, tmp_path / "aliases")
    assert newaliases(["-f", conf(tmp_path, str(tmp_path / "aliases"))]) == 0
    assert f"{tmp_path / 'aliases'}: 13 aliases" in capsys.readouterr().out


def test_bad_lines_are_reported_and_nothing_is_compiled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "aliases"
    source.write_text(ALIASES)
    spec = f"cdb:{source}"
    assert newaliases(["-f", conf(tmp_path, spec)]) == 0
    capsys.readouterr()
    source.write_text(ALIASES + "pager: |/usr/bin/page now\nlists: :include:lists/all\n")
    assert newaliases(["-f", conf(tmp_path, spec)]) == 1
    err = capsys.readouterr().err
    assert f'{source}:6: quote a command or file name with spaces: "|/usr/bin/page now"' in err
    assert f"{source}:7: relative :include: path in ':include:lists/all' (it must start with /)" in err
    assert open_compiled("aliases", source).get("pager") is None  # the old compiled map stays
