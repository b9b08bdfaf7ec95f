"""Map options in meta1.conf: TYPE:NAME specifications and sequences (meta1py.conf.mapspec)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conf_testdata import error_lines

from meta1py.conf import ConfigErrors, check_files, dump_config, load_config, parse_config
from meta1py.conf.checkcmd import check_map_contents
from meta1py.conf.mapspec import MapRef, MapSpec
from meta1py.maps.compiled import COMPILED_FORMATS, compile_map, compiled_path


def smar(text: str) -> MapSpec | None:
    cfg = parse_config(f"queue_directory = /q; smar {{ access = {text}; }}")
    return cfg.smar.access


@pytest.mark.parametrize(
    ("text", "member"),
    [
        ("/etc/meta1/access", MapRef("text", Path("/etc/meta1/access"))),
        ("access", MapRef("text", Path("/q/access"))),  # relative to queue_directory
        ("texthash:/etc/a", MapRef("text", Path("/etc/a"))),
        ('"texthash:a:b"', MapRef("text", Path("/q/a:b"))),
        ("./odd:name", MapRef("text", Path("/q/odd:name"))),
        ("cdb:/etc/meta1/access", MapRef("cdb", Path("/etc/meta1/access"))),
        ("CDB:access", MapRef("cdb", Path("/q/access"))),
        ("socketmap:unix:/run/p.sock:access", MapRef("socketmap", socket="unix:/run/p.sock", name="access")),
        ("socketmap:unix:run/p.sock:m", MapRef("socketmap", socket="unix:/q/run/p.sock", name="m")),
        (
            "socketmap:inet:127.0.0.1:8000:access",
            MapRef("socketmap", socket="inet:127.0.0.1:8000", name="access"),
        ),
        ("socketmap:inet:[::1]:8000:m", MapRef("socketmap", socket="inet:[::1]:8000", name="m")),
        (
            "socketmap:inet:maps.example.net:8000:m",
            MapRef("socketmap", socket="inet:maps.example.net:8000", name="m"),
        ),
    ],
)
def test_one_map(text: str, member: MapRef) -> None:
    assert smar(text) == MapSpec((member,))


def test_a_list_is_a_sequence_in_order() -> None:
    spec = smar('{ access.local, "cdb:/etc/meta1/access", socketmap:inet:127.0.0.1:8000:a }')
    assert spec is not None
    assert [m.kind for m in spec.members] == ["text", "cdb", "socketmap"]
    assert [m.kind for m in spec.files] == ["text", "cdb"]
    assert str(spec) == "{ /q/access.local, cdb:/etc/meta1/access, socketmap:inet:127.0.0.1:8000:a }"
    member = spec.members[2]
    assert member.inet_address == ("127.0.0.1", 8000) and member.unix_path is None


def test_the_socket_of_a_socketmap() -> None:
    spec = smar("socketmap:inet:[::1]:8000:m")
    assert spec is not None and spec.members[0].inet_address == ("::1", 8000)
    spec = smar("socketmap:unix:/run/x.sock:m")
    assert spec is not None and spec.members[0].unix_path == "/run/x.sock"


@pytest.mark.parametrize(
    "text",
    [
        "/etc/meta1/access",
        "{ /a, cdb:/b, socketmap:unix:/run/s:m, socketmap:inet:[::1]:1:n }",
        '"texthash:/etc/odd:name"',
        '"/etc/with space/access"',
    ],
)
def test_dump_reads_back_the_same(text: str) -> None:
    cfg = parse_config(f"smar {{ access = {text}; routes = {{ /r1, cdb:/r2 }}; }}")
    again = parse_config(dump_config(cfg))
    assert again.smar.access == cfg.smar.access and again.smar.routes == cfg.smar.routes


@pytest.mark.parametrize(
    ("option", "text", "message", "hint"),
    [
        ("access", "hash:/etc/a", "unknown map type 'hash'", "cdb:/etc/a"),
        ("access", "cdbb:/etc/a", "unknown map type 'cdbb'", "did you mean 'cdb'?"),
        ("access", "cdb:", "names no file", "cdb:/etc/meta1/access"),
        ("access", "cdb:/etc/a.cdb", "name the text map", "cdb:/etc/a (meta1 makemap"),
        ("access", "socketmap:inet:127.0.0.1:8000", "expected HOST:PORT", "socketmap:unix:"),
        ("access", '"socketmap:inet:127.0.0.1:8000:two name"', "bad map name", "socketmap:unix:"),
        ("access", "socketmap:tcp:127.0.0.1:8000:m", "unknown transport 'tcp'", "inet"),
        ("access", "socketmap:inet:127.0.0.1:0:m", "bad port '0'", "1..65535"),
        ("access", "socketmap:inet:bad host:8000:m", "", ""),  # a space: two words, the grammar refuses
        ("access", "socketmap:inet:bad_host!:8000:m", "bad host", "IP address"),
        ("access", "socketmap:unix::m", "no socket path", "socketmap:unix:"),
        ("routes", "socketmap:unix:/run/r:m", "cannot be a socketmap", "a path or cdb:PATH"),
        ("aliases", "{ }", "names no map", "remove the option"),
    ],
)
def test_bad_maps_are_located_with_a_hint(option: str, text: str, message: str, hint: str) -> None:
    source = f"hostname = x.test;\nsmar {{\n  {option} = {text};\n}}\n"
    with pytest.raises(ConfigErrors) as info:
        parse_config(source, "t.conf")
    first = info.value.errors[0]
    assert first.path == "t.conf" and first.line == 3
    if message:
        assert message in first.message and first.message.startswith(f"{option}: ")
        assert hint in first.hint
        # The column points at the bad map (the value), not the option name.
        assert first.column == 3 + len(option) + 3


def test_the_error_points_at_the_bad_member_of_a_list() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config("smar {\n  access = {\n    /ok,\n    nope:/x\n  };\n}\n", "t.conf")
    assert error_lines(info.value.errors)[0] == "t.conf:4:5: access: unknown map type 'nope' in 'nope:/x'"


def _compile(fmt: str, source: Path, text: str) -> None:
    source.write_text(text)
    with open(compiled_path(source), "wb") as out:
        _count, errors = compile_map(COMPILED_FORMATS[fmt], text, str(source), out)
    assert errors == []


def test_check_config_looks_at_compiled_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: smar's user is not checked here
    conf = tmp_path / "meta1.conf"
    conf.write_text(
        f"smar {{\n  access = cdb:{tmp_path / 'access'};\n  routes = cdb:{tmp_path / 'routes'};\n}}\n"
    )
    (tmp_path / "access").write_text("from:a@b.test OK\n")
    cfg = load_config(conf)
    # Not compiled yet: the hint says how.
    errors = {e.line: e for e in check_files(cfg)}
    assert sorted(errors) == [2, 3]
    assert "compiled map" in errors[2].message and "access.cdb" in errors[2].message
    assert errors[2].hint == f"compile it with: meta1 makemap access {tmp_path / 'access'}"
    _compile("access", tmp_path / "access", "from:a@b.test OK\n")
    _compile("access", tmp_path / "routes", "from:a@b.test OK\n")  # the wrong format
    assert check_files(cfg) == []
    problems = check_map_contents(cfg)
    assert [p.line for p in problems] == [3]
    assert "compiled as a access map, used as routes" in problems[0].message
    # The text map edited after it was compiled: smar would use the old entries.
    st = os.stat(compiled_path(tmp_path / "access"))
    os.utime(tmp_path / "access", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    stale = [p for p in check_map_contents(cfg) if "is older than" in p.message]
    assert [p.line for p in stale] == [2] and stale[0].hint.startswith("compile it again")


def test_check_config_lists_bad_lines_of_every_text_member(tmp_path: Path) -> None:
    (tmp_path / "a1").write_text("from:a@b.test OK\nbad line\n")
    (tmp_path / "a2").write_text("to:x@ NOPE\n")
    cfg = parse_config(f"smar {{ access = {{ {tmp_path / 'a1'}, {tmp_path / 'a2'} }}; }}")
    problems = check_map_contents(cfg)
    assert [(Path(p.path).name, p.line) for p in problems] == [("a1", 2), ("a2", 1)]


@pytest.mark.root
def test_as_root_smars_user_must_be_able_to_read_its_maps() -> None:
    """smar opens its maps after it dropped privileges (and again when makemap replaces one)."""
    shared = Path(tempfile.mkdtemp(prefix="meta1-maps-", dir="/tmp"))
    try:
        shared.chmod(0o755)  # pytest's own temporary directories are closed to other users
        (shared / "access").write_text("from:a@b.test OK\n")
        (shared / "access").chmod(0o644)
        _compile("access", shared / "private", "from:a@b.test OK\n")
        os.chmod(compiled_path(shared / "private"), 0o600)
        maps = f"{{ {shared / 'access'}, cdb:{shared / 'private'} }}"
        errors = check_files(parse_config(f"smar {{ user = nobody; group = nogroup; access = {maps}; }}"))
        assert len(errors) == 1
        assert "smar cannot read access file" in errors[0].message and "private.cdb" in errors[0].message
        assert "nobody cannot read it" in errors[0].message
        assert "makemap gives the compiled file the text map's owner" in errors[0].hint
    finally:
        shutil.rmtree(shared)
