"""Map sources: the file source, and the formats' lookups over any source (meta1py.maps.source)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meta1py.maps import FileSource, MapErrors, MapTempError, ReloadingMap
from meta1py.maps.aliases import Aliases, alias_keys, lookup_alias, parse_aliases
from meta1py.maps.routes import (
    ErrorRoute,
    LmtpRoute,
    Route,
    Routes,
    lookup_route,
    parse_route,
    parse_routes,
    route_keys,
)
from meta1py.maps.tls_policy import TlsPolicy, lookup_tls_policy, parse_tls_policy, tls_policy_keys
from meta1py.tls.requirements import TlsRequirements, parse_tls_requirements

ROUTES = """\
example.com       smtp:[10.0.0.5]:2525
.example.com      lmtp:unix:/run/lmtp
.sub.example.com  smtp:mx.example.net
*                 error:4.4.0 not now
"""
POLICY = """\
[smtp.example.net]:587  verify
[192.0.2.7]             encrypt
example.com             none
.example.com            encrypt
*                       may
"""


class DictSource:
    """A routes source other than a file: raw values in a dict, parsed by the format's value parser."""

    def __init__(self, raw: dict[str, str], fail_on: str | None = None) -> None:
        self.raw = raw
        self.fail_on = fail_on
        self.asked: list[str] = []

    async def lookup(self, key: str, *, deadline: float) -> Route | None:
        self.asked.append(key)
        if key == self.fail_on:
            raise MapTempError(f"{key}: server not answering")
        value = self.raw.get(key)
        return None if value is None else parse_route(value)


def test_file_source_says_when_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "routes"
    path.write_text("a.test smtp:\n")
    source = FileSource(path)
    assert source.changed()  # never read
    assert source.read() == "a.test smtp:\n"
    assert not source.changed()
    tmp = tmp_path / "new"
    tmp.write_text("a.test smtp:\n")
    os.replace(tmp, path)  # same text, new inode
    assert source.changed()
    source.read()
    path.unlink()
    with pytest.raises(OSError):
        source.changed()
    path.write_text("a.test smtp:\n")
    assert source.changed()
    with pytest.raises(MapErrors, match=r"missing:0: cannot read map"):
        FileSource(tmp_path / "missing").read()


@pytest.mark.parametrize(
    "domain",
    ["example.com", "EXAMPLE.com.", "a.example.com", "x.sub.example.com", "sub.example.com", "other.org"],
)
async def test_routes_over_a_source_agree_with_the_file_map(tmp_path: Path, domain: str) -> None:
    path = tmp_path / "routes"
    path.write_text(ROUTES)
    routes: ReloadingMap[Routes] = ReloadingMap(path, parse_routes)
    for use_default in (True, False):
        expected = routes.current.lookup(domain, use_default=use_default)
        assert await lookup_route(routes, domain, use_default=use_default, deadline=0) == expected
        # The same entries in a non-file source give the same answers.
        raw = {line.split()[0]: line.split(None, 1)[1] for line in ROUTES.splitlines()}
        other = DictSource(raw)
        assert await lookup_route(other, domain, use_default=use_default, deadline=0) == expected


def test_lookup_order_of_the_formats() -> None:
    assert route_keys("A.Sub.Example.COM.") == [
        "a.sub.example.com",
        ".sub.example.com",
        ".example.com",
        ".com",
        "*",
    ]
    assert route_keys("[192.0.2.1]", use_default=False) == ["[192.0.2.1]"]
    assert tls_policy_keys("[SMTP.example.net]:587", "example.com") == [
        "[smtp.example.net]:587",
        "[smtp.example.net]",
        "example.com",
        ".com",
        "*",
    ]
    assert alias_keys("Alice+Lists") == ["alice+lists", "alice"]
    assert alias_keys("bob") == ["bob"]


async def test_tls_policy_and_aliases_over_the_file_map(tmp_path: Path) -> None:
    policy_path = tmp_path / "tls_policy"
    policy_path.write_text(POLICY)
    policy: ReloadingMap[TlsPolicy] = ReloadingMap(policy_path, parse_tls_policy)
    for nexthop, domain in [
        ("[smtp.example.net]:587", "example.org"),
        ("[192.0.2.7]:25", "example.com"),
        (None, "example.com"),
        (None, "a.example.com"),
        (None, "example.org"),
    ]:
        found = await lookup_tls_policy(policy, nexthop, domain, deadline=0)
        assert found == policy.current.lookup(nexthop, domain)
    assert await lookup_tls_policy(policy, "[192.0.2.7]:25", "x.org", deadline=0) == parse_tls_requirements(
        "encrypt"
    )
    assert await lookup_tls_policy(policy, None, "x.org", deadline=0) == TlsRequirements("may")

    aliases_path = tmp_path / "aliases"
    aliases_path.write_text("alice: a1, a2\npostmaster: root\n")
    aliases: ReloadingMap[Aliases] = ReloadingMap(aliases_path, parse_aliases)
    assert await lookup_alias(aliases, "Alice+tag", deadline=0) == ("a1", "a2")
    assert await lookup_alias(aliases, "nobody", deadline=0) is None


async def test_a_temporary_failure_is_not_a_missing_entry() -> None:
    source = DictSource({"*": "smtp:"}, fail_on=".example.com")
    with pytest.raises(MapTempError, match="server not answering"):
        await lookup_route(source, "a.example.com", deadline=0)
    # The lookup stopped at the failing key: the default was not used instead.
    assert source.asked == ["a.example.com", ".example.com"]
    ok = DictSource({".example.com": "lmtp:unix:/run/lmtp", "*": "error:5.1.1 no"})
    assert await lookup_route(ok, "a.example.com", deadline=0) == LmtpRoute(path="/run/lmtp")
    assert await lookup_route(ok, "b.org", deadline=0) == ErrorRoute(550, "5.1.1", "no")
    assert await lookup_route(ok, "b.org", use_default=False, deadline=0) is None
