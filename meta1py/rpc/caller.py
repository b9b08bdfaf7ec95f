"""The typed caller: what a process needs of an RPC peer, so that mypy checks each call end to end.

``RpcChannel`` and ``RpcClient`` both satisfy `Caller`; tests pass an in-process channel
(`open_channel_pair`) in their place. ``await caller.call(SmarRouteRequest(...))`` is typed
``SmarRouteReply``: the reply type is the parameter of the request's ``RpcRequest[...]`` base.
"""

from __future__ import annotations

from typing import Protocol

from meta1py.rpc.schema import R, RpcMessage, RpcRequest


class Caller(Protocol):
    """Sends a request and returns its typed reply; raises `meta1py.rpc.RpcError` subclasses."""

    async def call(self, msg: RpcRequest[R], *, timeout: float | None = None) -> R: ...


class Notifier(Protocol):
    """Sends a one-way message (no reply)."""

    async def notify(self, msg: RpcMessage, *, timeout: float | None = None) -> None: ...
