"""smar's router on compiled maps and sequences: the same answers as text maps, and a map that
meta1 makemap replaces is picked up without a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from meta1py.cli.makemap import makemap
from meta1py.conf import parse_config
from meta1py.maps import MapErrors
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import Delivery, PermanentFailure, Router, TemporaryFailure


def router(tmp_path: Path, smar: str, **kwargs: float) -> Router:
    cfg = parse_config(
        f'queue_directory = "{tmp_path}"; mail_directory = "{tmp_path / "mail"}";'
        f" local_domains = {{ example.com, store.test }}; smar {{ {smar} }}"
    )
    return Router(cfg, Resolver.from_config(cfg.smar), **kwargs)


async def test_compiled_aliases_and_a_routes_sequence(tmp_path: Path) -> None:
    (tmp_path / "aliases").write_text("postmaster: alice\nalice: alice, bob\nbob: bob\n")
    (tmp_path / "routes").write_text("store.test lmtp:unix:/run/lmtp\nold.test error:5.1.1 gone\n")
    (tmp_path / "routes.local").write_text("old.test error:4.2.1 moving\n")
    makemap("aliases", str(tmp_path / "aliases"))
    makemap("routes", str(tmp_path / "routes"))
    r = router(tmp_path, "aliases = cdb:aliases; routes = { routes.local, cdb:routes };")
    assert r.expand_local("postmaster@example.com") == ["alice@example.com", "bob@example.com"]
    assert isinstance(r.expand_local("nobody@example.com"), PermanentFailure)  # the map lists the users
    assert await r.route("x@store.test") == Delivery(
        "lmtp", "lmtp:unix:/run/lmtp", "x@store.test", lmtp_socket="/run/lmtp"
    )
    failure = await r.route("x@old.test")
    assert isinstance(failure, TemporaryFailure) and failure.text == "moving"  # the first map wins


async def test_a_replaced_compiled_map_is_used_without_a_restart(tmp_path: Path) -> None:
    (tmp_path / "access").write_text("from:a@b.test REJECT\n")
    makemap("access", str(tmp_path / "access"))
    r = router(tmp_path, "access = cdb:access;", map_check_interval_s=0)
    access = r.access
    assert access is not None
    match = access.lookup("from", "a@b.test")
    assert match is not None and str(match.value) == "REJECT"
    (tmp_path / "access").write_text("from:a@b.test OK\n")
    makemap("access", str(tmp_path / "access"))
    access = r.access
    assert access is not None
    match = access.lookup("from", "a@b.test")
    assert match is not None and str(match.value) == "OK"


def test_a_missing_compiled_map_stops_smar_at_start(tmp_path: Path) -> None:
    (tmp_path / "access").write_text("from:a@b.test REJECT\n")
    with pytest.raises(MapErrors, match="cannot open compiled map"):
        router(tmp_path, "access = cdb:access;")
