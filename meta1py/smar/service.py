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
from typing import Literal

from meta1py.conf import Config, SmtpsConfig
from meta1py.envelope import FailureStatus
from meta1py.netaddr import client_ip
from meta1py.rpc.codec import DEFAULT_MAX_FRAME_BYTES
from meta1py.rpc.errors import RpcRemoteError
from meta1py.rpc.handlers import Handlers
from meta1py.rpc.messages import (
    SmarHostValue,
    SmarRecipientCheckReply,
    SmarRecipientCheckRequest,
    SmarRouteReply,
    SmarRouteRequest,
    SmarRouteValue,
    SmtpReplyValue,
)
from meta1py.rpc.schema import message_to_json
from meta1py.smar.policy import RcptFacts, Verdict, decide_rcpt
from meta1py.smar.router import Delivery, PermanentFailure, RecipientRejected, Router
from meta1py.smtp.status import (
    DESTINATION_VALID,
    PERM_NOT_AUTHORIZED,
    TEMP_MAIL_SYSTEM_ERROR,
    TEMP_SYSTEM_MISCONFIGURED,
)

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


_ROUTE_BYTES, _HOST_BYTES, _REPLY_BYTES, _PATH_BYTES = _overheads()


def _route_bound(route: SmarRouteValue) -> int:
    """An upper bound on the JSON size of one route in a reply (exact for plain ASCII)."""
    size = _ROUTE_BYTES + _text_bound(route.destination)
    if route.path is not None:
        size += _PATH_BYTES + _text_bound(route.path)
    if route.reply is not None:
        size += _REPLY_BYTES + _text_bound(route.reply.text) + _text_bound(route.reply.enhanced)
    for h in route.hosts:
        size += _HOST_BYTES + _text_bound(h.name) + _text_bound(h.address) + len(str(h.port)) - 5
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


def _section(config: Config, service: str) -> SmtpsConfig | None:
    for section in config.smtps:
        if (section.name or "") == service:
            return section
    return config.smtps[0] if config.smtps else None


def relay_allowed(config: Config, service: str, client_address: str, authenticated: str | None) -> bool:
    """May this client relay through the smtps section ``service``?"""
    if authenticated:
        return True
    section = _section(config, service)
    if section is None:
        return False
    ip = client_ip(client_address.split("%", 1)[0])
    return ip is not None and any(ip in net for net in section.relay_clients)


class SmarService:
    """Answers the RPC calls smar serves on smar.sock."""

    def __init__(self, config: Config, router: Router) -> None:
        self.config = config
        self.router = router
        self.handle = Handlers()
        """smar.sock's handler: answers ``SmarRecipientCheckRequest`` and ``SmarRouteRequest``."""
        self.handle.on(SmarRecipientCheckRequest).answer(self._answer_check)
        self.handle.on(SmarRouteRequest).answer(self._answer_routes)

    async def _answer_check(self, req: SmarRecipientCheckRequest) -> SmarRecipientCheckReply:
        return self.check(req)

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

    def check(self, req: SmarRecipientCheckRequest) -> SmarRecipientCheckReply:
        """RCPT TO policy: the access map (meta1py.smar.policy), then local recipients must exist
        and others need relay permission (relay_clients, AUTH, or an access map RELAY)."""
        access = self.router.access
        policy: Verdict | None = None
        if access is not None:
            facts = RcptFacts(req.client_address, req.helo, req.sender, req.recipient)
            policy = decide_rcpt(access, facts)
            if policy.action == "refuse" and policy.reply is not None:
                code, enhanced, text = policy.reply
                return _reject(code, enhanced, text)
        verdict = self.router.check_recipient(req.recipient)
        if isinstance(verdict, RecipientRejected):
            return _reject(verdict.code, verdict.enhanced, verdict.text)
        relay = policy is not None and policy.relay
        if not verdict.local and not relay and not relay_allowed(
            self.config, req.service, req.client_address, req.authenticated
        ):
            return _reject(554, PERM_NOT_AUTHORIZED, f"<{req.recipient}>: Relay access denied")
        # The router expanded a local recipient's aliases while checking it.
        action: Literal["accept", "discard"] = (
            "discard" if policy is not None and policy.action == "discard" else "accept"
        )
        return SmarRecipientCheckReply(action=action, reply=_OK, expanded=verdict.expanded)

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
            else:
                path = str(result.maildir)
            if path is not None and len(path) > _MAX_PATH:
                return _error_route(
                    "temp", _reply_value(451, TEMP_SYSTEM_MISCONFIGURED, "delivery path too long")
                )
            return SmarRouteValue(
                status="ok",
                transport=result.transport,
                destination=result.destination[:_MAX_DESTINATION],
                hosts=hosts,
                path=path,
                reply=None,
            )
        status: FailureStatus = "perm" if isinstance(result, PermanentFailure) else "temp"
        return _error_route(status, _reply_value(result.code, result.enhanced, result.text))


def _error_route(status: FailureStatus, reply: SmtpReplyValue) -> SmarRouteValue:
    return SmarRouteValue(status=status, transport="error", destination="", hosts=(), path=None, reply=reply)
