"""smar's RPC service: relay policy and recipient checks for smtps, routes for qmgr.

Relay policy (issue 5): a recipient in a local domain must exist (see
:mod:`meta1py.smar.router` for what "exists" means); any other recipient is accepted only when
the client may relay: its address is in the ``relay_clients`` of the smtps section the
connection came in on, or the session is authenticated.  Everything else gets
``554 5.7.1 Relay access denied``.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Literal

from meta1py.conf import Config, SmtpsConfig
from meta1py.rpc.messages import (
    SmarHostValue,
    SmarRecipientCheckReply,
    SmarRecipientCheckRequest,
    SmarRouteReply,
    SmarRouteRequest,
    SmarRouteValue,
    SmtpReplyValue,
)
from meta1py.smar.router import Delivery, PermanentFailure, RecipientRejected, Router

log = logging.getLogger(__name__)

_OK = SmtpReplyValue(code=250, enhanced="2.1.5", text="Ok")


def _reject(code: int, enhanced: str, text: str) -> SmarRecipientCheckReply:
    return SmarRecipientCheckReply(
        action="reject", reply=SmtpReplyValue(code=code, enhanced=enhanced, text=text), expanded=()
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
    try:
        ip = ipaddress.ip_address(client_address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in section.relay_clients)


class SmarService:
    """Answers the RPC calls smar serves on smar.sock."""

    def __init__(self, config: Config, router: Router) -> None:
        self.config = config
        self.router = router

    async def handle(self, msg: Any) -> Any:
        """Dispatch one call."""
        if isinstance(msg, SmarRecipientCheckRequest):
            return self.check(msg)
        if isinstance(msg, SmarRouteRequest):
            return SmarRouteReply(routes=tuple([await self.route(a) for a in msg.addresses]))
        return None

    def check(self, req: SmarRecipientCheckRequest) -> SmarRecipientCheckReply:
        """RCPT TO policy: local recipients must exist, others need relay permission."""
        verdict = self.router.check_recipient(req.recipient)
        if isinstance(verdict, RecipientRejected):
            return _reject(verdict.code, verdict.enhanced, verdict.text)
        if not verdict.local and not relay_allowed(
            self.config, req.service, req.client_address, req.authenticated
        ):
            return _reject(554, "5.7.1", f"<{req.recipient}>: Relay access denied")
        # The router expanded a local recipient's aliases while checking it.
        return SmarRecipientCheckReply(action="accept", reply=_OK, expanded=verdict.expanded)

    async def route(self, address: str) -> SmarRouteValue:
        """Where one (already expanded) recipient goes, as an RPC value."""
        result = await self.router.route(address)
        if isinstance(result, Delivery):
            path: str | None = None
            hosts: tuple[SmarHostValue, ...] = ()
            if result.transport == "smtp":
                hosts = tuple(SmarHostValue(name=h.hostname, address=h.ip, port=h.port) for h in result.hosts)
            elif result.transport == "lmtp":
                if result.lmtp_socket is not None:
                    path = result.lmtp_socket
                elif result.lmtp_address is not None:
                    host, port = result.lmtp_address
                    hosts = (SmarHostValue(name=host, address=host, port=port),)
            else:
                path = str(result.maildir)
            return SmarRouteValue(
                status="ok",
                transport=result.transport,
                destination=result.destination,
                hosts=hosts,
                path=path,
                reply=None,
            )
        status: Literal["perm", "temp"] = "perm" if isinstance(result, PermanentFailure) else "temp"
        return SmarRouteValue(
            status=status,
            transport="error",
            destination="",
            hosts=(),
            path=None,
            reply=SmtpReplyValue(code=result.code, enhanced=result.enhanced, text=result.text),
        )
