"""``meta1 makemap``: strict checking, nothing written on bad input, atomic replacement."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from meta1py.cli import SUBCOMMANDS
from meta1py.cli import makemap as makemap_module
from meta1py.cli.makemap import main
from meta1py.maps.access import AccessResult
from meta1py.maps.compiled import open_compiled
from meta1py.maps.views import AccessView


def test_compiles_to_file_cdb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "access"
    source.write_text("# comment\nfrom:a@b.test OK\ncltaddr:10.1. RELAY\n")
    source.chmod(0o640)
    assert main(["access", str(source)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""  # silent, as postmap
    access = AccessView(open_compiled("access", source))
    assert access.get("from:a@b.test") == AccessResult("ok") and len(access) == 2
    assert (tmp_path / "access.cdb").stat().st_mode & 0o777 == 0o640  # the text map's mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access", "access.cdb"]  # no temporary left
    assert main(["-v", "access", str(source)]) == 0
    assert "access.cdb: 2 entries" in capsys.readouterr().out


def test_bad_lines_exit_65_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "access"
    source.write_text("from:a@b.test OK\n")
    assert main(["access", str(source)]) == 0
    before = (tmp_path / "access.cdb").read_bytes()
    source.write_text("from:a@b.test REJECT\nbad:x OK\nto:y@ FOO\n")
    assert main(["access", str(source)]) == 65
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{source}:2: unknown tag in 'bad:x'")
    assert err[1].startswith(f"{source}:3: unknown result 'FOO'")
    assert err[2] == f"meta1 makemap: {source}: 2 bad line(s); {source}.cdb not written"
    assert (tmp_path / "access.cdb").read_bytes() == before  # the old file stays, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access", "access.cdb"]


def test_the_compiled_file_is_replaced_atomically(tmp_path: Path) -> None:
    source = tmp_path / "routes"
    source.write_text("a.test smtp:[192.0.2.1]\n")
    assert main(["routes", str(source)]) == 0
    old = open_compiled("routes", source)  # a running smar holds the old file open
    inode = (tmp_path / "routes.cdb").stat().st_ino
    source.write_text("a.test smtp:[192.0.2.2]\nb.test maildir:\n")
    assert main(["routes", str(source)]) == 0
    assert (tmp_path / "routes.cdb").stat().st_ino != inode  # a new file, renamed over the old one
    assert old.table._reader.get(b"a.test") == b"smtp:[192.0.2.1]"  # what was open still reads whole
    assert len(open_compiled("routes", source)) == 2


def test_aliases_compile(tmp_path: Path) -> None:
    source = tmp_path / "aliases"
    source.write_text("postmaster: alice\nteam: alice,\n  bob@example.net\n")
    assert main(["aliases", str(source)]) == 0
    assert open_compiled("aliases", source).get("team") == ("alice", "bob@example.net")


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["tls_policy", "/x"], 64, "cannot compile 'tls_policy' maps"),
        (["-t", "hash", "access", "/x"], 64, "unknown type 'hash'"),
        (["access", "/nonexistent/access"], 66, "cannot read map"),
        (["--bogus"], 64, ""),
    ],
)
def test_usage_and_input_errors(
    argv: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == status
    assert message in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == 0
    assert "usage: meta1 makemap" in capsys.readouterr().out
    assert "makemap" in SUBCOMMANDS


def test_without_file_the_configured_compiled_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "local").write_text("from:a@b.test OK\n")
    (tmp_path / "big").write_text("from:c@d.test REJECT\n")
    conf = tmp_path / "meta1.conf"
    conf.write_text(f"smar {{ access = {{ {tmp_path / 'local'}, cdb:{tmp_path / 'big'} }}; }}\n")
    assert main(["-f", str(conf), "access"]) == 0
    assert (tmp_path / "big.cdb").exists() and not (tmp_path / "local.cdb").exists()
    assert main(["-f", str(conf), "routes"]) == 64
    assert "names no" in capsys.readouterr().err
    conf.write_text("smar { access = { /a, b c };\n")
    assert main(["-f", str(conf), "access"]) == 78


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_for_big_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM", "xterm")
    source = tmp_path / "access"
    source.write_text("".join(f"from:u{i}@b.test OK\n" for i in range(30_000)))
    terminal, pipe = _Terminal(), io.StringIO()
    monkeypatch.setattr(makemap_module, "PROGRESS_MIN_LINES", 20_000)
    makemap_module.makemap("access", str(source), progress_to=pipe)
    assert pipe.getvalue() == ""
    makemap_module.makemap("access", str(source), progress_to=terminal)
    shown = terminal.getvalue()
    assert shown.startswith("\raccess [") and "0/30,000 lines" in shown
    last = shown.split("\r")[-1]
    assert "100%  30,000/30,000 lines" in last and "done in" in last and last.endswith("\n")
    monkeypatch.setattr(makemap_module, "PROGRESS_MIN_LINES", 50_000)
    small = _Terminal()
    makemap_module.makemap("access", str(source), progress_to=small)
    assert small.getvalue() == ""


@pytest.mark.root
def test_as_root_the_compiled_file_gets_the_text_maps_owner(tmp_path: Path) -> None:
    source = tmp_path / "access"
    source.write_text("from:a@b.test OK\n")
    os.chown(source, 65534, 65534)
    assert main(["access", str(source)]) == 0
    st = (tmp_path / "access.cdb").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_newaliases_compiles_a_compiled_aliases_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meta1py.cli.newaliases import main as newaliases

    (tmp_path / "aliases").write_text("postmaster: alice\n")
    (tmp_path / "aliases.local").write_text("root: alice\n")
    conf = tmp_path / "meta1.conf"
    conf.write_text(f"smar {{ aliases = {{ {tmp_path / 'aliases.local'}, cdb:{tmp_path / 'aliases'} }}; }}\n")
    assert newaliases(["-f", str(conf)]) == 0
    assert open_compiled("aliases", tmp_path / "aliases").get("postmaster") == ("alice",)
    out = capsys.readouterr().out
    assert "aliases.local: 1 aliases" in out and "1 aliases compiled from" in out
    (tmp_path / "aliases").write_text("postmaster: :include:lists/postmaster\n")
    assert newaliases(["-f", str(conf)]) == 1
    assert "relative :include: path" in capsys.readouterr().err
    assert open_compiled("aliases", tmp_path / "aliases").get("postmaster") == ("alice",)  # kept


def test_q_leaves_the_bar_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(makemap_module, "PROGRESS_MIN_LINES", 10)
    source = tmp_path / "access"
    source.write_text("".join(f"from:u{i}@b.test OK\n" for i in range(20)))
    stderr = _Terminal()
    monkeypatch.setattr("sys.stderr", stderr)
    assert main(["-q", "access", str(source)]) == 0
    assert stderr.getvalue() == ""
    assert main(["access", str(source)]) == 0
    assert "100%  20/20 lines" in stderr.getvalue()
