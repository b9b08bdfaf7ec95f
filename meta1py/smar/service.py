"""smar's RPC service: relay policy and recipient checks for smtps, routes for qmgr.

Relay policy (issue 5): a recipient in a local domain must exist (see
:mod:`meta1py.smar.router` for what "exists" means); any other recipient is accepted only when
the client may relay: its address is in the ``relay_clients`` of the smtps section the
connection came in on, or the session is authenticated.  Everything else gets
``554 5.7.1 Relay access denied``.

Replies fit their schema whatever DNS said (issue 16): host lists, texts and names are cut to the
caps declared in :mod:`meta1py.rpc.messages` here, where the reply is built, and a
``SmarRouteReply`` whose routes would not fit in one frame answers the routes past the budget with
a temporary failure (qmgr retries them later) instead of failing the whole reply.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import trio

from meta1py import clock
from meta1py.conf import Config, SmarConfig, SmtpsConfig
from meta1py.envelope import FailureStatus
from meta1py.maps.access import AccessMap, AccessResult, keys_for
from meta1py.maps.errors import MapTempError
from meta1py.netaddr import client_ip
from meta1py.rpc.codec import DEFAULT_MAX_FRAME_BYTES
from meta1py.rpc.errors import RpcRemoteError
from meta1py.rpc.handlers import Handlers
from meta1py.rpc.messages import (
    SmarClientCheckReply,
    SmarClientCheckRequest,
    SmarClockReply,
    SmarClockRequest,
    SmarHostValue,
    SmarLocalDeliveryValue,
    SmarRecipientCheckReply,
    SmarRecipientCheckRequest,
    SmarRouteReply,
    SmarRouteRequest,
    SmarRouteValue,
    SmtpReplyValue,
    WorkerStatsReply,
    WorkerStatsRequest,
)
from meta1py.rpc.schema import message_to_json
from meta1py.smar.greylist import Greylist, GreylistUnavailableError, GreyPolicy
from meta1py.smar.policy import ListResult, PolicyFacts, Stage, Verdict, access_keys, decide
from meta1py.smar.resolver import ReverseName
from meta1py.smar.router import Delivery, PermanentFailure, RecipientRejected, Router
from meta1py.smtp.status import (
    DESTINATION_VALID,
    PERM_NOT_AUTHORIZED,
    TEMP_MAIL_SYSTEM_ERROR,
    TEMP_NOT_AUTHORIZED,
    TEMP_SYSTEM_MISCONFIGURED,
)
from meta1py.status import worker_stats

log = logging.getLogger(__name__)

_OK = SmtpReplyValue(code=250, enhanced=DESTINATION_VALID, text="Ok")


def _cap(cls: type, name: str) -> int:
    """The ``max_len`` or ``max_items`` cap a message class declares for one field."""
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    value = meta.get("rpc_max_len") or meta.get("rpc_max_items")
    assert isinstance(value, int), (cls, name)
    return value


_MAX_HOSTS = _cap(SmarRouteValue, "hosts")
_MAX_DESTINATION = _cap(SmarRouteValue, "destination")
_MAX_PATH = _cap(SmarRouteValue, "path")
_MAX_HOST_NAME = _cap(SmarHostValue, "name")
_MAX_HOST_ADDRESS = _cap(SmarHostValue, "address")
_MAX_ENHANCED = _cap(SmtpReplyValue, "enhanced")
_MAX_TEXT = _cap(SmtpReplyValue, "text")
_MAX_LOCAL_USER = _cap(SmarLocalDeliveryValue, "user")
_MAX_LOCAL_HOME = _cap(SmarLocalDeliveryValue, "home")
# What the routes of one SmarRouteReply may take (by a bound on their JSON size): smar.sock's frame
# cap less room for the envelope. qmgr sends every due recipient of a message in one request.
_ROUTE_REPLY_BUDGET = DEFAULT_MAX_FRAME_BYTES - 4096
_OVER_BUDGET = SmtpReplyValue(
    code=451, enhanced=TEMP_MAIL_SYSTEM_ERROR, text="too many recipients routed at once"
)


def _text_bound(text: str) -> int:
    """An upper bound on the bytes ``text`` takes inside a JSON string (without the quotes)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text)
    return 6 * len(text)  # \uXXXX is the longest form of one character


def _json_size(routes: tuple[SmarRouteValue, ...]) -> int:
    """The exact size of ``routes`` as the JSON array of a reply (as the codec writes it)."""
    _name, body = message_to_json(SmarRouteReply(routes=routes))
    return len(json.dumps(body["routes"], ensure_ascii=False, separators=(",", ":")).encode())


def _overheads() -> tuple[int, int, int, int]:
    """Bytes one route, one host, a reply and a path add beyond their strings (measured once)."""

    def route(hosts: int = 0, reply: bool = False, path: bool = False) -> SmarRouteValue:
        return SmarRouteValue(
            status="temp",
            transport="maildir",  # the longest literals
            destination="",
            hosts=tuple(SmarHostValue(name="", address="", port=65535) for _ in range(hosts)),
            path="" if path else None,
            reply=SmtpReplyValue(code=599, enhanced="", text="") if reply else None,
        )

    base = _json_size((route(), route())) - _json_size((route(),))  # a comma included
    host = _json_size((route(2),)) - _json_size((route(1),))
    reply = _json_size((route(reply=True),)) - _json_size((route(),))
    path = max(0, _json_size((route(path=True),)) - _json_size((route(),)))
    return base, host, reply, path


def _local_overhead() -> int:
    """Bytes a pipe, file or home Maildir route's account adds beyond its strings (the largest
    ids and the longest source)."""
    plain = SmarRouteValue(
        status="temp", transport="maildir", destination="", hosts=(), path=None, reply=None
    )
    local = SmarLocalDeliveryValue(user="", uid=2**32, gid=2**32, home="", shell="", source="home_mailbox")
    return _json_size((dataclasses.replace(plain, local=local),)) - _json_size((plain,))


_ROUTE_BYTES, _HOST_BYTES, _REPLY_BYTES, _PATH_BYTES = _overheads()
_LOCAL_BYTES = _local_overhead()


def _route_bound(route: SmarRouteValue) -> int:
    """An upper bound on the JSON size of one route in a reply (exact for plain ASCII)."""
    size = _ROUTE_BYTES + _text_bound(route.destination)
    if route.path is not None:
        size += _PATH_BYTES + _text_bound(route.path)
    if route.reply is not None:
        size += _REPLY_BYTES + _text_bound(route.reply.text) + _text_bound(route.reply.enhanced)
    for h in route.hosts:
        size += _HOST_BYTES + _text_bound(h.name) + _text_bound(h.address) + len(str(h.port)) - 5
    if route.local is not None:
        local = route.local
        size += _LOCAL_BYTES + _text_bound(local.user) + _text_bound(local.home) + _text_bound(local.shell)
    return size


def _reply_value(code: int, enhanced: str, text: str) -> SmtpReplyValue:
    return SmtpReplyValue(code=code, enhanced=enhanced[:_MAX_ENHANCED], text=text[:_MAX_TEXT])


def _reject(code: int, enhanced: str, text: str) -> SmarRecipientCheckReply:
    # A 4xx (a broken alias line, say) is a tempfail: smtps does not cache it.
    return SmarRecipientCheckReply(
        action="tempfail" if code < 500 else "reject",
        reply=SmtpReplyValue(code=code, enhanced=enhanced, text=text),
        expanded=(),
    )


def smtps_section(config: Config, service: str) -> SmtpsConfig | None:
    """The smtps section named ``service`` ("" is the unnamed one); the first one otherwise."""
    for section in config.smtps:
        if (section.name or "") == service:
            return section
    return config.smtps[0] if config.smtps else None


def relay_allowed(config: Config, service: str, client_address: str, authenticated: str | None) -> bool:
    """May this client relay through the smtps section ``service``?"""
    if authenticated:
        return True
    section = smtps_section(config, service)
    if section is None:
        return False
    ip = client_ip(client_address.split("%", 1)[0])
    return ip is not None and any(ip in net for net in section.relay_clients)


ListKind = Literal["dnsbl", "dnswl", "rhsbl"]


@dataclass(frozen=True, slots=True)
class Explained:
    """A RCPT TO answer with its reasons (``meta1 explain`` prints them)."""

    reply: SmarRecipientCheckReply
    facts: PolicyFacts
    policy: Verdict | None
    greylisted: bool = False


def _list_queries(
    smar: SmarConfig, stage: Stage, client_address: str, sender: str | None
) -> list[tuple[ListKind, str, str, str, tuple[Any, ...]]]:
    """(kind, zone, query name, action, listed answers) of the DNS lists the stage asks."""
    queries: list[tuple[ListKind, str, str, str, tuple[Any, ...]]] = []
    if stage in ("connect", "rcpt") and (smar.dnsbl or smar.dnswl):
        ip = client_ip(client_address.split("%", 1)[0])
        if ip is not None:
            head = ip.reverse_pointer.rsplit(".", 2)[0]  # 4.3.2.1 of 4.3.2.1.in-addr.arpa
            for wl in smar.dnswl:
                queries.append(("dnswl", str(wl.zone), f"{head}.{wl.zone}", "permit", wl.addresses))
            for bl in smar.dnsbl:
                queries.append(("dnsbl", str(bl.zone), f"{head}.{bl.zone}", bl.action, bl.addresses))
    if stage in ("mail", "rcpt") and sender and smar.rhsbl:
        domain = sender.rpartition("@")[2].lower().rstrip(".")
        if domain and not domain.startswith("["):
            for bl in smar.rhsbl:
                queries.append(("rhsbl", str(bl.zone), f"{domain}.{bl.zone}", bl.action, bl.addresses))
    return queries


def _limits_exempt(access: AccessMap | None, client_address: str) -> bool:
    """The access map's ``ratelimit:`` entry for the client says OK (or RELAY)."""
    match = access.lookup("ratelimit", client_address) if access is not None else None
    value = match.value if match is not None else None
    return isinstance(value, AccessResult) and value.action in ("ok", "relay")


def _in_nets(address: str, nets: tuple[Any, ...]) -> bool:
    ip = client_ip(address)
    return ip is not None and any(ip in net for net in nets)


class SmarService:
    """Answers the RPC calls smar serves on smar.sock."""

    def __init__(self, config: Config, router: Router, *, dry_run: bool = False) -> None:
        self.config = config
        #: ``meta1 explain``: greylisting is read, never updated.
        self.dry_run = dry_run
        grey = config.smar.greylisting
        #: The greylisting store, when it is on (opened on first use; read-only for dry runs).
        self.greylist: Greylist | None = None
        if grey.enable:
            policy = GreyPolicy.from_config(grey)
            self.greylist = Greylist(grey.database, policy, readonly=dry_run, clock=clock.now)
        self.router = router
        self.handle = Handlers()
        """smar.sock's handler: answers ``SmarRecipientCheckRequest`` and ``SmarRouteRequest``."""
        self.handle.on(SmarRecipientCheckRequest).answer(self._answer_check)
        self.handle.on(SmarClientCheckRequest).answer(self._answer_client)
        self.handle.on(SmarRouteRequest).answer(self._answer_routes)
        self.handle.on(WorkerStatsRequest).answer(self._answer_stats)
        if config.test_mode.enable:
            self.handle.on(SmarClockRequest).answer(self._answer_clock)

    async def _answer_stats(self, _req: WorkerStatsRequest) -> WorkerStatsReply:
        # smar counts nothing of its own yet; qmgr asks for its recent errors (meta1 status).
        return WorkerStatsReply(stats=worker_stats("smar", None))

    async def _answer_clock(self, req: SmarClockRequest) -> SmarClockReply:
        # Test mode's virtual clock (qmgr moves it): greylisting's delays pass with it.
        try:
            clock.set_offset(req.offset)
        except ValueError as exc:
            raise RpcRemoteError("bad_request", str(exc)) from None
        return SmarClockReply(offset=clock.offset())

    async def _answer_check(self, req: SmarRecipientCheckRequest) -> SmarRecipientCheckReply:
        return await self.check(req)

    async def _answer_client(self, req: SmarClientCheckRequest) -> SmarClientCheckReply:
        return await self.check_client(req)

    async def _answer_routes(self, req: SmarRouteRequest) -> SmarRouteReply:
        return await self.routes(req.addresses)

    async def routes(self, addresses: tuple[str, ...]) -> SmarRouteReply:
        """The routes of ``addresses``, in order, in a reply that fits one frame.

        When the routes together would not fit, the first ones are kept and the rest become a
        short temporary failure (qmgr retries them later, when fewer are due at once).

        Raises:
            RpcRemoteError: so many addresses that not even those failures would fit (qmgr then
                defers them all).
        """
        routes = [await self.route(address) for address in addresses]
        sizes = [_route_bound(route) for route in routes]
        total = sum(sizes)
        if total <= _ROUTE_REPLY_BUDGET:
            return SmarRouteReply(routes=tuple(routes))
        over = _error_route("temp", _OVER_BUDGET)
        short = _route_bound(over)
        # The longest prefix of real routes that fits with a short failure for every later one.
        used = len(routes) * short
        keep = 0 if used <= _ROUTE_REPLY_BUDGET else -1
        for i, size in enumerate(sizes):
            used += size - short
            if used <= _ROUTE_REPLY_BUDGET:
                keep = i + 1
        if keep < 0:
            raise RpcRemoteError("too_big", f"routes for {len(addresses)} addresses exceed one frame")
        deferred = len(routes) - keep
        log.warning("routes for %d addresses exceed one frame: the last %d deferred", len(routes), deferred)
        return SmarRouteReply(routes=(*routes[:keep], *[over] * deferred))

    async def check(self, req: SmarRecipientCheckRequest) -> SmarRecipientCheckReply:
        """RCPT TO policy (see :meth:`explain`)."""
        return (await self.explain(req)).reply

    async def explain(
        self, req: SmarRecipientCheckRequest, *, reverse: ReverseName | None = None
    ) -> Explained:
        """RCPT TO policy, with its reasons: the access map and the DNS lists
        (:mod:`meta1py.smar.policy`), then local recipients must exist and others need relay
        permission (relay_clients, AUTH, or an access map RELAY), then greylisting."""
        facts = await self.gather(
            "rcpt",
            req.client_address,
            req.service,
            req.authenticated,
            helo=req.helo,
            sender=req.sender,
            recipient=req.recipient,
            cert_subject=req.cert_subject,
            cert_issuer=req.cert_issuer,
            reverse=reverse,
        )
        access = await self._access_for(facts, "rcpt")
        if isinstance(access, SmarRecipientCheckReply):
            return Explained(access, facts, None)
        policy = decide(access, facts, "rcpt")
        if policy.action == "refuse" and policy.reply is not None:
            return Explained(_reject(*policy.reply), facts, policy)
        verdict = self.router.check_recipient(req.recipient)
        if isinstance(verdict, RecipientRejected):
            return Explained(_reject(verdict.code, verdict.enhanced, verdict.text), facts, policy)
        if not verdict.local and not policy.relay and not facts.may_relay:
            reply = _reject(554, PERM_NOT_AUTHORIZED, f"<{req.recipient}>: Relay access denied")
            return Explained(reply, facts, policy)
        grey = await self._greylist(facts, policy)
        if grey is not None:
            return Explained(grey, facts, policy, greylisted=True)
        # The router expanded a local recipient's aliases while checking it.
        action: Literal["accept", "discard"] = "discard" if policy.action == "discard" else "accept"
        return Explained(
            SmarRecipientCheckReply(action=action, reply=_OK, expanded=verdict.expanded), facts, policy
        )

    async def check_client(self, req: SmarClientCheckRequest) -> SmarClientCheckReply:
        """The stages before RCPT TO: the client's name, and with ``delay_checks = no`` the
        checks of the stage."""
        facts = await self.gather(
            req.stage,
            req.client_address,
            req.service,
            req.authenticated,
            helo=req.helo,
            sender=req.sender,
            cert_subject=req.cert_subject,
            cert_issuer=req.cert_issuer,
            lookup_name=req.lookup_name,
        )
        name, resolve = facts.client_name[:255], facts.client_resolve
        delayed = self.config.smar.delay_checks
        exempt_keys = tuple(keys_for("ratelimit", req.client_address)) if req.stage == "connect" else ()
        if delayed and not exempt_keys:
            return SmarClientCheckReply("accept", _OK, name, resolve)
        access = await self._access_for(facts, req.stage, exempt_keys)
        if isinstance(access, SmarRecipientCheckReply):
            if delayed:  # only the exemption was asked: the limits apply
                return SmarClientCheckReply("accept", _OK, name, resolve)
            return SmarClientCheckReply(access.action, access.reply, name, resolve)
        exempt = _limits_exempt(access, req.client_address) if exempt_keys else False
        if delayed:
            return SmarClientCheckReply("accept", _OK, name, resolve, exempt)
        policy = decide(access, facts, req.stage)
        if policy.action == "refuse" and policy.reply is not None:
            refused = _reject(*policy.reply)
            return SmarClientCheckReply(refused.action, refused.reply, name, resolve, exempt)
        action: Literal["accept", "discard"] = "discard" if policy.action == "discard" else "accept"
        return SmarClientCheckReply(action, _OK, name, resolve, exempt)

    async def gather(
        self,
        stage: Stage,
        client_address: str,
        service: str,
        authenticated: str | None,
        *,
        helo: str = "",
        sender: str | None = None,
        recipient: str | None = None,
        cert_subject: str = "",
        cert_issuer: str = "",
        lookup_name: bool = True,
        reverse: ReverseName | None = None,
    ) -> PolicyFacts:
        """The facts the policy of ``stage`` needs: the client's forward-confirmed name (at
        connect when asked for, and whenever there is an access map) and the DNS list answers of
        the stage (in parallel, through the resolver's cache). ``reverse``: the name is known
        (``meta1 explain --client-name``), do not look it up."""
        smar = self.config.smar
        may_relay = relay_allowed(self.config, service, client_address, authenticated)
        resolver = self.router.resolver
        want_name = (stage == "connect" and lookup_name) or self.router.access is not None
        queries = _list_queries(smar, stage, client_address, sender)
        results: dict[int, ListResult] = {}
        look_up = want_name and reverse is None
        want_name = want_name or reverse is not None
        found = reverse or ReverseName("no")

        async def name() -> None:
            nonlocal found
            found = await resolver.reverse_name(client_address)

        async def ask(
            i: int, kind: ListKind, zone: str, query: str, action: str, nets: tuple[Any, ...]
        ) -> None:
            answer = await resolver.dns_list(query)
            listed = answer.listed and any(_in_nets(a, nets) for a in answer.addresses)
            if answer.error:
                log.warning("%s %s: %s", kind, zone, answer.error)
            shown = ",".join(answer.addresses)
            results[i] = ListResult(kind, zone, query, listed, action, shown, answer.text, answer.error)

        async with trio.open_nursery() as nursery:
            if look_up:
                nursery.start_soon(name)
            for i, query in enumerate(queries):
                nursery.start_soon(ask, i, *query)
        return PolicyFacts(
            client_address,
            helo=helo,
            sender=sender,
            recipient=recipient,
            client_name=found.name if want_name else "",
            client_resolve=found.status if want_name else "",
            cert_subject=cert_subject,
            cert_issuer=cert_issuer,
            may_relay=may_relay,
            lists=tuple(results[i] for i in range(len(queries))),
        )

    async def _access_for(
        self, facts: PolicyFacts, stage: Stage, extra: tuple[str, ...] = ()
    ) -> AccessMap | SmarRecipientCheckReply | None:
        """The access map entries the policy may look up for ``facts`` at ``stage`` (and the keys
        in ``extra``): the map itself when it is in memory or on disk, the keys fetched from a
        socketmap otherwise; a temporary failure when a member cannot answer now."""
        source = self.router.access_source
        if source is None:
            return None
        keys = [*access_keys(facts, stage), *extra]
        try:
            return await source.snapshot(keys, deadline=trio.current_time() + self.config.smar.dns_timeout)
        except MapTempError as exc:
            log.warning("access map cannot answer for %s: %s; 451 4.3.0", facts.client_address, exc)
            return _reject(451, TEMP_MAIL_SYSTEM_ERROR, "Access map not available now, try again later")

    async def _greylist(self, facts: PolicyFacts, policy: Verdict) -> SmarRecipientCheckReply | None:
        """Greylisting, for clients the policy does not trust: a reply when the recipient is
        deferred (or the greylist cannot be asked), None when it passes."""
        grey = self.greylist
        if grey is None or policy.trusted or facts.may_relay or policy.action == "discard":
            return None
        sender, recipient = facts.sender or "", facts.recipient or ""
        try:
            if self.dry_run:
                decision = grey.peek(facts.client_address, sender, recipient)
            else:
                decision = await trio.to_thread.run_sync(grey.check, facts.client_address, sender, recipient)
        except GreylistUnavailableError as exc:
            log.warning("%s: greylisting cannot decide; 451 4.3.0 to %s", exc, facts.client_address)
            return _reject(451, TEMP_MAIL_SYSTEM_ERROR, "Greylisting is not available now, try again later")
        if decision.action == "pass":
            return None
        log.info(
            "greylisted: client=%s from=<%s> to=<%s> (%s, retry in %ds)",
            facts.client_address,
            sender,
            recipient,
            decision.reason,
            decision.retry_in_s,
        )
        wait = decision.retry_in_s
        text = f"<{recipient}>: Recipient address rejected: Greylisted, try again in {wait} seconds"
        return _reject(450, TEMP_NOT_AUTHORIZED, text)

    async def route(self, address: str) -> SmarRouteValue:
        """Where one (already expanded) recipient goes, as an RPC value."""
        result = await self.router.route(address)
        if isinstance(result, Delivery):
            path: str | None = None
            hosts: tuple[SmarHostValue, ...] = ()
            if result.transport == "smtp":
                # Cut at the source: the resolver already keeps mx_address_limit addresses, but
                # nothing that comes from DNS may make the reply break its schema.
                hosts = tuple(
                    SmarHostValue(name=h.hostname, address=h.ip, port=h.port)
                    for h in result.hosts
                    if len(h.hostname) <= _MAX_HOST_NAME and len(h.ip) <= _MAX_HOST_ADDRESS
                )[:_MAX_HOSTS]
            elif result.transport == "lmtp":
                if result.lmtp_socket is not None:
                    path = result.lmtp_socket
                elif result.lmtp_address is not None:
                    host, port = result.lmtp_address
                    hosts = (SmarHostValue(name=host, address=host, port=port),)
            elif result.transport in ("pipe", "file"):
                path = result.target
            else:
                path = str(result.maildir)
            if path is not None and len(path) > _MAX_PATH:
                return _error_route(
                    "temp", _reply_value(451, TEMP_SYSTEM_MISCONFIGURED, "delivery path too long")
                )
            local: SmarLocalDeliveryValue | None = None
            account = result.account
            if account is not None and result.source is not None:
                if (
                    len(account.user) > _MAX_LOCAL_USER
                    or max(len(account.home), len(account.shell)) > _MAX_LOCAL_HOME
                ):
                    return _error_route(
                        "temp", _reply_value(451, TEMP_SYSTEM_MISCONFIGURED, "account name or home too long")
                    )
                local = SmarLocalDeliveryValue(
                    user=account.user,
                    uid=account.uid,
                    gid=account.gid,
                    home=account.home,
                    shell=account.shell,
                    source=result.source,
                )
            return SmarRouteValue(
                status="ok",
                transport=result.transport,
                destination=result.destination[:_MAX_DESTINATION],
                hosts=hosts,
                path=path,
                reply=None,
                local=local,
            )
        status: FailureStatus = "perm" if isinstance(result, PermanentFailure) else "temp"
        return _error_route(status, _reply_value(result.code, result.enhanced, result.text))


def _error_route(status: FailureStatus, reply: SmtpReplyValue) -> SmarRouteValue:
    return SmarRouteValue(status=status, transport="error", destination="", hosts=(), path=None, reply=reply)
