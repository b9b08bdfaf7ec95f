"""Sequences of maps and the access map fetched before a decision (meta1py.maps.views)."""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meta1py.maps import BrokenEntry, MapTempError
from meta1py.maps.access import AccessMap, AccessResult, keys_for, parse_access, parse_access_value
from meta1py.maps.aliases import parse_aliases
from meta1py.maps.compiled import COMPILED_FORMATS, compile_map, compiled_path
from meta1py.maps.routes import SmtpRoute, parse_routes
from meta1py.maps.views import (
    AccessSource,
    AccessView,
    AliasesTable,
    AliasesView,
    ParsedSource,
    RoutesView,
    SequenceTable,
    UnansweredTable,
    open_member,
)

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the fake sources answer at once)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    raise AssertionError("the coroutine suspended")


class FakeSource:
    """A socketmap stand-in: value texts by key; records what it was asked."""

    def __init__(self, values: dict[str, str], fail: bool = False) -> None:
        self.values = values
        self.fail = fail
        self.asked: list[str] = []

    async def lookup(self, key: str, *, deadline: float) -> str | None:
        self.asked.append(key)
        if self.fail:
            raise MapTempError("server down")
        return self.values.get(key)


def test_each_key_comes_from_the_first_member_that_has_it() -> None:
    local = parse_access("from:a@b.test OK\nfrom:.test REJECT\n")
    big = parse_access("from:a@b.test REJECT\nfrom:b.test RELAY\n")
    seq = AccessView(SequenceTable([local, big]))
    assert seq.get("from:a@b.test") == AccessResult("ok")  # the first member wins
    # Key by key: the later member's more specific key beats the earlier member's less specific one.
    match = seq.lookup("from", "x@b.test")
    assert match is not None and match.key == "from:b.test" and match.value == AccessResult("relay")
    match = seq.lookup("from", "x@c.test")
    assert match is not None and match.key == "from:.test"
    assert len(seq) == 4


def test_routes_and_aliases_sequences() -> None:
    routes = RoutesView(SequenceTable([parse_routes("a.test smtp:[192.0.2.1]\n"), parse_routes("* smtp:\n")]))
    assert routes.lookup("a.test") == SmtpRoute("192.0.2.1", None, False)
    assert routes.lookup("b.test") == SmtpRoute(None, None, True)
    first = AliasesTable(parse_aliases("team: alice, bob\n"))
    second_text = "bob: bob@remote.test\nteam: nobody\nbroken: :include:lists/broken\n"
    second = AliasesTable(parse_aliases(second_text, strict=False))
    aliases = AliasesView(SequenceTable([first, second]))
    # Chains go across members.
    assert aliases.expand("team@a.test", {"a.test"}).recipients == ("alice@a.test", "bob@remote.test")
    assert aliases.broken_entry("broken") is not None and aliases.get("broken") is None
    assert aliases.lookup_key("broken") == "broken"


def test_text_and_compiled_members(tmp_path: Path) -> None:
    (tmp_path / "local").write_text("from:a@b.test OK\n")
    (tmp_path / "big").write_text("from:a@b.test REJECT\nfrom:c@b.test REJECT\n")
    with open(compiled_path(tmp_path / "big"), "wb") as out:
        compile_map(COMPILED_FORMATS["access"], (tmp_path / "big").read_text(), "big", out)
    seq = AccessView(
        SequenceTable(
            [
                open_member("access", "text", tmp_path / "local"),
                open_member("access", "cdb", tmp_path / "big"),
            ]
        )
    )
    assert seq.get("from:a@b.test") == AccessResult("ok")
    value = seq.get("from:c@b.test")
    assert isinstance(value, AccessResult) and value.action == "reject"
    with pytest.raises(ValueError):
        open_member("access", "socketmap", tmp_path / "x")


def test_a_socketmap_member_in_a_synchronous_view_defers() -> None:
    seq = AccessView(
        SequenceTable([parse_access("from:a@b.test OK\n"), UnansweredTable("socketmap:inet:127.0.0.1:1:m")])
    )
    assert seq.get("from:a@b.test") == AccessResult("ok")  # found before the socketmap
    match = seq.lookup("from", "x@y.test")
    assert match is not None and isinstance(match.value, BrokenEntry)


def test_snapshot_asks_the_members_in_order_for_the_missing_keys() -> None:
    local = parse_access("from:a@b.test OK\n")
    server = FakeSource({"from:a@b.test": "REJECT", "from:b.test": "RELAY", "to:x@": "FOO"})
    source = AccessSource(
        lambda: AccessMap({}), [_Sync(local), ParsedSource(server, parse_access_value, "sm")]
    )
    keys = [*keys_for("from", "a@b.test"), "to:x@", *keys_for("from", "a@b.test")]  # duplicates asked once
    snap = run(source.snapshot(keys, deadline=0.0))
    assert snap.get("from:a@b.test") == AccessResult("ok")  # from the first member
    assert snap.get("from:b.test") == AccessResult("relay")
    broken = snap.get("to:x@")
    assert isinstance(broken, BrokenEntry) and "unknown result" in broken.text  # a bad value: deferred
    assert "from:a@b.test" not in server.asked  # the first member had it
    assert server.asked == ["from:a@", "from:b.test", "from:.test", "to:x@"]


def test_snapshot_fails_when_a_member_cannot_answer() -> None:
    down = FakeSource({}, fail=True)
    source = AccessSource(lambda: AccessMap({}), [ParsedSource(down, parse_access_value, "sm")])
    with pytest.raises(MapTempError):
        run(source.snapshot(["from:a@b.test"], deadline=0.0))


def test_snapshot_without_members_to_ask_is_the_map_itself() -> None:
    view = parse_access("from:a@b.test OK\n")
    assert run(AccessSource(lambda: view).snapshot(["from:x@y.test"], deadline=0.0)) is view


class _Sync:
    """A synchronous table as a source (what the text and compiled members are)."""

    def __init__(self, table: AccessMap) -> None:
        self.table = table

    async def lookup(self, key: str, *, deadline: float) -> Any:
        return self.table.get(key)
