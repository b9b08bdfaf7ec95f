"""Delivery jobs for smtpc's tests: the route and the request qmgr would send, made short, and
a scripted server on loopback to deliver to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from meta1py.rpc.messages import SmarHostValue, SmarRouteValue, SmtpcDeliveryRequest, SmtpcRecipientValue


def smtp_route(destination: str, *hosts: tuple[str, str, int]) -> SmarRouteValue:
    """An ``smtp`` route to ``destination`` over ``hosts`` (``(name, address, port)``, in order)."""
    return SmarRouteValue(
        status="ok",
        transport="smtp",
        destination=destination,
        hosts=tuple(SmarHostValue(name=name, address=address, port=port) for name, address, port in hosts),
        path=None,
        reply=None,
    )


def loopback_route(port: int) -> SmarRouteValue:
    """The route of ``relayhost = [127.0.0.1]:port``."""
    return smtp_route(f"smtp:[127.0.0.1]:{port}", ("127.0.0.1", "127.0.0.1", port))


def delivery_request(
    qid: str,
    route: SmarRouteValue,
    recipients: Sequence[str],
    *,
    size: int = 10,
    sender: str = "a@example.org",
) -> SmtpcDeliveryRequest:
    """What qmgr asks smtpc for: message ``qid`` to ``recipients`` (indexes 0, 1, ...) by ``route``."""
    return SmtpcDeliveryRequest(
        qid=qid,
        sender=sender,
        envid=None,
        ret=None,
        body="7BIT",
        smtputf8=False,
        size=size,
        recipients=tuple(
            SmtpcRecipientValue(idx=i, address=address, orcpt=None, notify=None)
            for i, address in enumerate(recipients)
        ),
        route=route,
    )


async def serve_on_loopback(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[object]]
) -> int:
    """Serve ``handler`` on a free port of 127.0.0.1 in ``nursery``; return the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(trio.serve_listeners, handler, listeners)
    port: int = listeners[0].socket.getsockname()[1]
    return port
