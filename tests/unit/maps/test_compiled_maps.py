"""Compiled maps (meta1py.maps.compiled): the same answers as the text, reopened when replaced,
bad values and damaged files as temporary failures."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from meta1py.maps import BrokenEntry, MapErrors
from meta1py.maps.access import AccessResult, Protected, keys_for, parse_access
from meta1py.maps.aliases import parse_aliases
from meta1py.maps.cdb import CdbWriter
from meta1py.maps.compiled import (
    COMPILED_FORMATS,
    CompiledMap,
    CompiledTable,
    compile_map,
    compiled_path,
    open_compiled,
)
from meta1py.maps.routes import parse_routes
from meta1py.maps.views import AccessView, AliasesView, RoutesView

ACCESS = """\
cltaddr:192.0.2.7                REJECT
cltaddr:10.1.                    RELAY
cltaddr:2001:db8::/32            OK
cltname:.dialup.example.net      ERROR:5.7.1 no mail from dial-up hosts
ehlo:localhost                   REJECT
from:<>                          OK
from:postmaster@                 QUICK:OK
from:.example.com                CONT
to:abuse@                        QUICK:OK
to:partner.example               RELAY
to:staff@example.test            ERROR:450 4.7.1 later
protectedrcpt:staff@example.test from:.example.test cltaddr:10.9.
certissuer:"CN=Example CA,O=Example"  RELAY
"""

ROUTES = """\
example.net       smtp:[192.0.2.10]:2525
.example.net      smtp:relay.example.net
store.test        lmtp:unix:/run/dovecot/lmtp
other.test        lmtp:inet:[::1]:24
old.test          error:5.1.1 this domain is gone
[192.0.2.1]       smtp:
*                 smtp:[smarthost.example.com]
"""

ALIASES = """\
postmaster: alice
alice:      alice, archive@remote.example
team:       alice,
            bob@example.net
loop1:      loop2
loop2:      loop1
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def compile_text(fmt: str, text: str, source: Path) -> Path:
    source.write_text(text)
    target = Path(compiled_path(source))
    with open(target, "wb") as out:
        _count, errors = compile_map(COMPILED_FORMATS[fmt], text, str(source), out)
    assert errors == []
    return target


def test_access_answers_as_the_text_map(tmp_path: Path) -> None:
    compile_text("access", ACCESS, tmp_path / "access")
    text = parse_access(ACCESS)
    compiled = AccessView(open_compiled("access", tmp_path / "access"))
    assert len(compiled) == len(text) == 13
    subjects = [
        ("cltaddr", "192.0.2.7"),
        ("cltaddr", "10.1.2.3"),
        ("cltaddr", "2001:db8::1"),
        ("cltname", "a.dialup.example.net"),
        ("ehlo", "localhost"),
        ("from", ""),
        ("from", "postmaster+x@anywhere.test"),
        ("from", "user@mail.example.com"),
        ("to", "abuse@example.org"),
        ("to", "x@partner.example"),
        ("to", "staff@example.test"),
        ("protectedrcpt", "staff@example.test"),
        ("certissuer", "CN=Example CA,O=Example"),
        ("from", "nobody@nowhere.test"),
    ]
    for tag, subject in subjects:
        assert compiled.lookup(tag, subject) == text.lookup(tag, subject), (tag, subject)
    match = compiled.lookup("protectedrcpt", "staff@example.test")
    assert match is not None and isinstance(match.value, Protected)
    assert compiled.errors == ()


def test_routes_and_aliases_answer_as_the_text_maps(tmp_path: Path) -> None:
    compile_text("routes", ROUTES, tmp_path / "routes")
    compile_text("aliases", ALIASES, tmp_path / "aliases")
    routes, text_routes = RoutesView(open_compiled("routes", tmp_path / "routes")), parse_routes(ROUTES)
    for domain in [
        "example.net",
        "mx.example.net",
        "store.test",
        "other.test",
        "old.test",
        "[192.0.2.1]",
        "x.org",
    ]:
        assert routes.lookup(domain) == text_routes.lookup(domain), domain
    assert routes.lookup("x.org", use_default=False) is None
    aliases, text_aliases = (
        AliasesView(open_compiled("aliases", tmp_path / "aliases")),
        parse_aliases(ALIASES),
    )
    for address in ["postmaster@a.test", "team@a.test", "alice+x@a.test", "nobody@a.test", "loop1@a.test"]:
        assert aliases.expand(address, {"a.test"}) == text_aliases.expand(address, {"a.test"}), address
    assert aliases.lookup_key("alice+x") == "alice"


def test_values_are_kept_in_their_own_syntax(tmp_path: Path) -> None:
    compile_text("access", "from:a@b.test  quick:error:550 5.7.1 go   away\n", tmp_path / "a")
    table = CompiledTable(compiled_path(tmp_path / "a"), "access")
    assert table.get("from:a@b.test") == "QUICK:ERROR:550 5.7.1 go   away"
    assert len(table) == 1


def test_a_map_compiled_as_another_format_is_refused(tmp_path: Path) -> None:
    compile_text("routes", ROUTES, tmp_path / "routes")
    with pytest.raises(MapErrors, match="compiled as a routes map, used as access"):
        open_compiled("access", tmp_path / "routes")
    (tmp_path / "junk.cdb").write_bytes(b"not a cdb file")
    with pytest.raises(MapErrors, match="cannot open compiled map"):
        CompiledTable(tmp_path / "junk.cdb", "access")
    with pytest.raises(MapErrors, match="cannot open compiled map"):
        CompiledTable(tmp_path / "missing.cdb", "access")


def test_compile_reports_every_bad_line_and_writes_nothing_valid(tmp_path: Path) -> None:
    text = "from:a@b.test OK\nbad:x OK\nto:y@ FOO\nfrom:a@b.test REJECT\n"
    with open(tmp_path / "out.cdb", "wb") as out:
        count, errors = compile_map(COMPILED_FORMATS["access"], text, "access", out)
    assert [str(e).split(": ", 1)[0] for e in errors] == ["access:2", "access:3", "access:4"]
    assert count == 1


def test_reopened_when_replaced_at_most_once_a_second(tmp_path: Path) -> None:
    compile_text("access", "from:a@b.test OK\n", tmp_path / "access")
    clock = FakeClock()
    table = CompiledTable(compiled_path(tmp_path / "access"), "access", clock=clock)
    access = AccessView(CompiledMap(table, COMPILED_FORMATS["access"]))
    # makemap's way: a new file renamed over the old one.
    new = tmp_path / "new"
    compile_text("access", "from:a@b.test REJECT\nfrom:c@d.test OK\n", new)
    os.replace(compiled_path(new), compiled_path(tmp_path / "access"))
    clock.now += 0.5
    assert access.get("from:a@b.test") == AccessResult("ok")
    clock.now += 0.6
    value = access.get("from:a@b.test")
    assert isinstance(value, AccessResult) and value.action == "reject"
    assert len(access) == 2 and table.generation == 1


def test_a_bad_replacement_keeps_the_old_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    compile_text("access", "from:a@b.test OK\n", tmp_path / "access")
    clock = FakeClock()
    table = CompiledTable(compiled_path(tmp_path / "access"), "access", clock=clock)
    (tmp_path / "junk").write_bytes(b"junk" * 10)
    os.replace(tmp_path / "junk", compiled_path(tmp_path / "access"))
    clock.now += 2
    with caplog.at_level(logging.ERROR, logger="meta1py.maps"):
        assert table.get("from:a@b.test") == "OK"
        clock.now += 2
        assert table.get("from:a@b.test") == "OK"
    assert sum("not reopened" in r.message for r in caplog.records) == 1  # once per bad version
    os.unlink(compiled_path(tmp_path / "access"))
    clock.now += 2
    assert table.get("from:a@b.test") == "OK"  # gone: the open file goes on


def _hand_made(path: Path, fmt: str, items: list[tuple[str, str]]) -> None:
    with open(path, "wb") as f:
        writer = CdbWriter(f)
        writer.add(b"\x00meta1:format", fmt.encode())
        for key, value in items:
            writer.add(key.encode(), value.encode())
        writer.add(b"\x00meta1:entries", str(len(items)).encode())
        writer.finish()


def test_a_value_that_does_not_parse_is_a_broken_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _hand_made(tmp_path / "access.cdb", "access", [("from:a@b.test", "FOO"), ("from:b.test", "OK")])
    access = AccessView(open_compiled("access", tmp_path / "access"))
    with caplog.at_level(logging.WARNING, logger="meta1py.maps"):
        match = access.lookup("from", "a@b.test")
    assert match is not None and isinstance(match.value, BrokenEntry)
    assert "from:a@b.test" in match.value.text and "unknown result" in match.value.text
    assert any("bad value" in r.message for r in caplog.records)
    # The broken key does not fall through to the less specific entry: that is the point.
    assert match.key == "from:a@b.test"


def test_a_damaged_file_is_a_broken_entry_not_an_exception(tmp_path: Path) -> None:
    compile_text("access", "".join(f"from:u{i}@b.test OK\n" for i in range(300)), tmp_path / "access")
    access = AccessView(open_compiled("access", tmp_path / "access"))
    os.truncate(compiled_path(tmp_path / "access"), 2100)  # in place: the open file shrinks
    values = [access.get(k) for i in range(300) for k in keys_for("from", f"u{i}@b.test")[:1]]
    assert any(isinstance(v, BrokenEntry) for v in values)
    assert all(v is None or isinstance(v, BrokenEntry | AccessResult) for v in values)


def test_open_compiled_warns_when_the_source_is_newer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    compile_text("access", "from:a@b.test OK\n", tmp_path / "access")
    st = os.stat(compiled_path(tmp_path / "access"))
    os.utime(tmp_path / "access", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with caplog.at_level(logging.WARNING, logger="meta1py.maps"):
        open_compiled("access", tmp_path / "access")
    assert any("older than its source" in r.message for r in caplog.records)
