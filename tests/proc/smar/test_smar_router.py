"""Router precedence and local-recipient rules, with real DNS (knotd) and real config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from meta1py.conf import Config, parse_config
from meta1py.maps import MapErrors
from meta1py.smar.resolver import Resolver
from meta1py.smar.router import (
    Delivery,
    PermanentFailure,
    RecipientAccepted,
    RecipientRejected,
    Router,
    SmtpHost,
    TemporaryFailure,
)

LIMIT_S = 60


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()

ALIASES = """\
postmaster: alice
alice:      alice, archive@remote.example
sales:      bob, carol@example.net
loop1:      loop2
loop2:      loop1
"""

ROUTES = """\
store.test        lmtp:unix:/run/dovecot/lmtp
.store.test       lmtp:inet:127.0.0.1:2424
pinned.test       smtp:[127.0.0.7]:2525
viamx.test        smtp:mx.test
literal.test      smtp:[smarthost.relay.test]
gone.test         error:5.1.1 this domain is gone
busy.test         error:4.2.1 try later
typo.test         smtp:[no-such-host.relay.test]
local.test        maildir:
*                 smtp:
"""


def config(
    tmp_path: Path,
    dns: tuple[str, int],
    *,
    aliases: str | None = None,
    routes: str | None = None,
    smtpc: str = "smtp_port = 2525;",
) -> Config:
    smar = [f"nameserver = {{ {dns[0]}:{dns[1]} }};"]
    if aliases is not None:
        (tmp_path / "aliases").write_text(aliases)
        smar.append(f'aliases = "{tmp_path / "aliases"}";')
    if routes is not None:
        (tmp_path / "routes").write_text(routes)
        smar.append(f'routes = "{tmp_path / "routes"}";')
    text = f"""
        queue_directory = "{tmp_path / "queue"}";
        mail_directory = "{tmp_path / "mail"}";
        local_domains = {{ example.com, example.net, store.test }};
        smar {{ {" ".join(smar)} }}
        smtpc {{ {smtpc} }}
    """
    return parse_config(text)


def router(cfg: Config, **kwargs: float) -> Router:
    return Router(cfg, Resolver.from_config(cfg.smar), **kwargs)


async def test_local_domain_goes_to_maildir_any_local_part_without_aliases(
    tmp_path: Path, dns_server: tuple[str, int]
) -> None:
    r = router(config(tmp_path, dns_server))
    result = await r.route("Joe+Tag@EXAMPLE.com")
    assert result == Delivery(
        "maildir", "maildir", "Joe+Tag@example.com", maildir=tmp_path / "mail/example.com/joe"
    )
    assert r.check_recipient("anyone@example.com") == RecipientAccepted(local=True)
    assert r.expand_local("Anyone@Example.com") == ["anyone@example.com"]


async def test_unsafe_mailbox_names_refused(tmp_path: Path, dns_server: tuple[str, int]) -> None:
    r = router(config(tmp_path, dns_server))
    for bad in ("../etc@example.com", ".hidden@example.com", "a/b@example.com"):
        result = await r.route(bad)
        assert isinstance(result, PermanentFailure), bad
        assert result.enhanced == "5.1.3"


async def test_aliases_define_local_recipients(tmp_path: Path, dns_server: tuple[str, int]) -> None:
    r = router(config(tmp_path, dns_server, aliases=ALIASES))
    assert r.check_recipient("alice@example.com") == RecipientAccepted(local=True)
    assert r.check_recipient("Alice+x@example.net") == RecipientAccepted(local=True)
    assert r.check_recipient("postmaster@example.net") == RecipientAccepted(local=True)
    assert r.check_recipient("postmaster") == RecipientAccepted(local=True)
    assert r.check_recipient("who@remote.example") == RecipientAccepted(local=False)
    rejected = r.check_recipient("nobody@example.com")
    assert rejected == RecipientRejected(550, "5.1.1", "<nobody@example.com>: user unknown")
    loop = r.check_recipient("loop1@example.com")
    assert isinstance(loop, RecipientRejected) and loop.enhanced == "5.4.6"

    assert r.expand_local("postmaster@example.com") == [
        "alice@example.com",
        "archive@remote.example",
    ]
    assert r.expand_local("sales@example.com") == ["bob@example.com", "carol@example.net"]
    # bob has no entry of his own: targets need none (the operator wrote them).
    assert r.expand_local("sales@example.net") == ["bob@example.net", "carol@example.net"]
    unknown = r.expand_local("nobody@example.com")
    assert isinstance(unknown, PermanentFailure) and unknown.code == 550

    with trio.fail_after(LIMIT_S):
        pairs = await r.resolve_recipient("postmaster@example.com")
    assert [rcpt for rcpt, _ in pairs] == ["alice@example.com", "archive@remote.example"]
    # knotd does not serve remote.example and answers REFUSED: a temporary failure.
    assert isinstance(pairs[1][1], TemporaryFailure)
    assert pairs[0][1] == Delivery(
        "maildir", "maildir", "alice@example.com", maildir=tmp_path / "mail/example.com/alice"
    )


async def test_mx_lookup_is_the_default(tmp_path: Path, dns_server: tuple[str, int]) -> None:
    r = router(config(tmp_path, dns_server))
    with trio.fail_after(LIMIT_S):
        result = await r.route("someone@mx.test")
    assert result == Delivery(
        "smtp",
        "smtp:mx.test",
        "someone@mx.test",
        hosts=(
            SmtpHost("mx1.mx.test", "127.0.0.2", 2525),
            SmtpHost("mx2.mx.test", "127.0.0.3", 2525),
            SmtpHost("mx2.mx.test", "::1", 2525),
        ),
    )
    with trio.fail_after(LIMIT_S):
        null = await r.route("x@nullmx.test")
        nx = await r.route("x@nope.mx.test")
    assert isinstance(null, PermanentFailure) and null.enhanced == "5.1.10"
    assert isinstance(nx, PermanentFailure) and nx.enhanced == "5.1.2"


async def test_routes_map(tmp_path: Path, dns_server: tuple[str, int]) -> None:
    r = router(config(tmp_path, dns_server, routes=ROUTES))
    with trio.fail_after(LIMIT_S):
        pinned = await r.route("a@pinned.test")
        viamx = await r.route("a@viamx.test")
        literal = await r.route("a@literal.test")
        default = await r.route("a@implicit.test")
        gone = await r.route("a@gone.test")
        busy = await r.route("a@busy.test")
        typo = await r.route("a@typo.test")
        maildir = await r.route("a@local.test")
    assert pinned == Delivery(
        "smtp", "smtp:[127.0.0.7]:2525", "a@pinned.test", hosts=(SmtpHost("127.0.0.7", "127.0.0.7", 2525),)
    )
    assert isinstance(viamx, Delivery) and viamx.destination == "smtp:mx.test"
    assert [h.ip for h in viamx.hosts] == ["127.0.0.2", "127.0.0.3", "::1"]
    assert literal == Delivery(
        "smtp",
        "smtp:[smarthost.relay.test]:2525",
        "a@literal.test",
        hosts=(SmtpHost("smarthost.relay.test", "127.0.0.9", 2525),),
    )
    # "*  smtp:" = normal MX routing of the recipient's own domain
    assert isinstance(default, Delivery) and default.destination == "smtp:implicit.test"
    assert default.hosts[0] == SmtpHost("implicit.test", "127.0.0.5", 2525)
    assert gone == PermanentFailure(550, "5.1.1", "this domain is gone")
    assert busy == TemporaryFailure(450, "4.2.1", "try later")
    # A configured nexthop that does not resolve defers instead of bouncing.
    assert isinstance(typo, TemporaryFailure) and typo.enhanced == "4.4.4"
    assert maildir == Delivery("maildir", "maildir", "a@local.test", maildir=tmp_path / "mail/local.test/a")


async def test_routes_override_local_domains_but_default_does_not(
    tmp_path: Path, dns_server: tuple[str, int]
) -> None:
    r = router(config(tmp_path, dns_server, routes=ROUTES, aliases="postmaster: root\n"))
    with trio.fail_after(LIMIT_S):
        lmtp = await r.route("User@store.test")
        sub = await r.route("user@eu.store.test")
        local = await r.route("root@example.com")
    assert lmtp == Delivery(
        "lmtp", "lmtp:unix:/run/dovecot/lmtp", "User@store.test", lmtp_socket="/run/dovecot/lmtp"
    )
    assert sub == Delivery(
        "lmtp", "lmtp:inet:127.0.0.1:2424", "user@eu.store.test", lmtp_address=("127.0.0.1", 2424)
    )
    # "*" does not apply to local domains.
    assert isinstance(local, Delivery) and local.transport == "maildir"
    # Local domain routed elsewhere: the mail store judges the local part.
    assert r.check_recipient("whoever@store.test") == RecipientAccepted(local=True)
    assert isinstance(r.check_recipient("whoever@example.com"), RecipientRejected)


@pytest.mark.parametrize(
    ("relayhost", "destination", "port"),
    [
        ('"[smarthost.relay.test]:2526"', "smtp:[smarthost.relay.test]:2526", 2526),
        ('"mxed.relay.test:2527"', "smtp:mxed.relay.test:2527", 2527),
        ('"[127.0.0.9]"', "smtp:[127.0.0.9]:25", 25),
    ],
)
async def test_relayhost(
    tmp_path: Path, dns_server: tuple[str, int], relayhost: str, destination: str, port: int
) -> None:
    cfg = config(tmp_path, dns_server, smtpc=f"relayhost = {relayhost};")
    r = router(cfg)
    with trio.fail_after(LIMIT_S):
        result = await r.route("someone@mx.test")
        local = await r.route("someone@example.com")
    assert isinstance(result, Delivery) and result.destination == destination
    assert [(h.ip, h.port) for h in result.hosts] == [("127.0.0.9", port)]
    assert isinstance(local, Delivery) and local.transport == "maildir"


async def test_routes_win_over_relayhost(tmp_path: Path, dns_server: tuple[str, int]) -> None:
    cfg = config(
        tmp_path,
        dns_server,
        routes="pinned.test smtp:[127.0.0.7]:2525\n",
        smtpc='relayhost = "[127.0.0.9]:2526";',
    )
    r = router(cfg)
    with trio.fail_after(LIMIT_S):
        pinned = await r.route("a@pinned.test")
        other = await r.route("a@mx.test")
    assert isinstance(pinned, Delivery) and pinned.destination == "smtp:[127.0.0.7]:2525"
    assert isinstance(other, Delivery) and other.destination == "smtp:[127.0.0.9]:2526"


async def test_maps_reload_and_a_bad_line_defers_only_its_own_key(
    tmp_path: Path, dns_server: tuple[str, int]
) -> None:
    r = router(config(tmp_path, dns_server, aliases="a: a\n"), map_check_interval_s=0)
    assert isinstance(r.check_recipient("b@example.com"), RecipientRejected)
    path = tmp_path / "aliases"
    new = tmp_path / "aliases.new"
    new.write_text("a: a\nb: b\n")
    os.replace(new, path)
    assert r.check_recipient("b@example.com") == RecipientAccepted(local=True)
    # An edit with a bad line: the rest of the file is in use, its own name is deferred.
    new.write_text("a: a\nb: b\nc: :include:lists/c\nd: d\n")
    os.replace(new, path)
    assert r.check_recipient("b@example.com") == RecipientAccepted(local=True)
    assert r.check_recipient("d@example.com") == RecipientAccepted(local=True)
    c = r.check_recipient("c@example.com")
    assert isinstance(c, RecipientRejected) and (c.code, c.enhanced) == (451, "4.3.5")
    assert f"{path}:3: relative :include: path" in c.text


BAD_ALIASES = """\
postmaster: alice
ops:        :include:ops.list
sales:      bob
this line has no colon
sales:      carol
team:       ops, alice
"""

BAD_ROUTES = """\
broken.test       smtp:[host
fine.test         smtp:[127.0.0.7]:2525
.broken.test      nonsense
*                 smtp:
"""


async def test_bad_map_lines_never_stop_smar(tmp_path: Path, dns_server: tuple[str, int]) -> None:
    r = router(config(tmp_path, dns_server, aliases=BAD_ALIASES, routes=BAD_ROUTES))
    # The good lines work; of two entries for one name, the first.
    sales = r.check_recipient("sales@example.com")
    assert sales == RecipientAccepted(local=True, expanded=("bob@example.com",))
    # A name whose line is bad, or a name that leads to it, is deferred: never delivered to a
    # mailbox of the same name, never bounced.
    for name, line in (("ops", 2), ("team", 2)):
        verdict = r.check_recipient(f"{name}@example.com")
        assert isinstance(verdict, RecipientRejected), name
        assert (verdict.code, verdict.enhanced) == (451, "4.3.5")
        assert f"aliases:{line}:" in verdict.text
    assert r.expand_local("ops@example.com") == TemporaryFailure(451, "4.3.5", ANY_TEXT)
    with trio.fail_after(LIMIT_S):
        broken = await r.route("a@broken.test")
        sub = await r.route("a@mx.broken.test")
        fine = await r.route("a@fine.test")
    # A broken route defers its domain instead of falling through to "*".
    assert isinstance(broken, TemporaryFailure) and broken.enhanced == "4.3.5" and "routes:1:" in broken.text
    assert isinstance(sub, TemporaryFailure) and "routes:3:" in sub.text
    assert isinstance(fine, Delivery) and fine.destination == "smtp:[127.0.0.7]:2525"


def test_an_unreadable_map_at_startup_is_a_config_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, ("127.0.0.1", 53), routes="x.test smtp:\n")
    (tmp_path / "routes").unlink()
    with pytest.raises(MapErrors, match=r"routes:0: cannot read map"):
        Router(cfg, Resolver([("127.0.0.1", 53)]))
