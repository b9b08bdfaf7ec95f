"""Incoming messages answered by type: the registry a process hands to its channels as their handler.

A process registers one function per request type it serves::

    handlers = Handlers()
    handlers.on(SmarRouteRequest).answer(self.routes)   # async (SmarRouteRequest) -> SmarRouteReply
    await nursery.start(serve_unix, listener, handlers)

`Handlers` is a `meta1py.rpc.channel.Handler`: called with a message, it returns the awaitable
answer of the function registered for the message's exact type. mypy checks each registration
end to end: the function must accept the request class (or a base of it) and return the reply
class the request declares in ``RpcRequest[...]``; a mismatch on either side is an ``arg-type``
error. (A single ``register(kind, fn)`` cannot say that to mypy: a type variable's bound may not
mention another type variable, so nothing ties the reply to the request. `Handlers.on` binds the
request class first, and `Registration.answer` reads the reply off that binding with a self type.)

What a message nobody registered gets is the ``fallback`` handler's answer. The default drops
a notification, and answers a call with the error ``unsupported`` (`RpcRemoteError`), so that a
peer asking for something this process does not serve gets a refusal instead of crashing it.
Pass ``fallback`` to answer otherwise (qmgr does while its store is closed).

Dispatch costs one dictionary lookup, two plain calls and one ``isinstance``, and no coroutine of
its own (`Handlers.__call__` is not ``async``: it returns the registered function's coroutine):
about what the hand-written chains cost, a fraction of a microsecond per call.

This module imports neither trio nor socket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from meta1py.rpc.errors import RpcRemoteError
from meta1py.rpc.schema import RpcMessage, RpcRequest

R = TypeVar("R", bound=RpcMessage)
M = TypeVar("M", bound=RpcMessage)
Q_co = TypeVar("Q_co", bound=RpcMessage, covariant=True)

Answer = Callable[[RpcMessage], Awaitable[RpcMessage | None]]
"""What the registry keeps per message type (the shape of `meta1py.rpc.channel.Handler`)."""


async def _unsupported(msg: RpcMessage) -> None:
    """The default fallback: drop a notification, refuse a call with ``unsupported``."""
    if type(msg).response is not None:
        raise RpcRemoteError("unsupported", f"{type(msg).__name__} is not served here")


def _answer(kind: type[M], fn: Callable[[M], Awaitable[RpcMessage | None]]) -> Answer:
    """``fn`` as a function of any message; the registry only ever passes it a ``kind``."""

    def answer(msg: RpcMessage) -> Awaitable[RpcMessage | None]:
        # Always true (the table is keyed by exact type); it tells mypy what ``msg`` is.
        assert isinstance(msg, kind)
        return fn(msg)

    return answer


class Handlers:
    """Answers incoming calls and notifications by the message's type.

    Args:
        fallback: answers a message whose type has no registration (default: drop a
            notification, refuse a call with ``unsupported``).
    """

    __slots__ = ("_fallback", "_table")

    def __init__(self, *, fallback: Answer = _unsupported) -> None:
        self._table: dict[type[RpcMessage], Answer] = {}
        self._fallback = fallback

    def on(self, kind: type[M]) -> Registration[M]:
        """The registration of the answer to the request class ``kind``: finish it with ``.answer(fn)``."""
        return _Registration(self, kind)

    def on_notification(self, kind: type[M], fn: Callable[[M], Awaitable[None]]) -> None:
        """Register ``fn`` for the one-way message class ``kind``.

        Raises:
            TypeError: ``kind`` is a request (register it with `on`), or already registered.
        """
        if kind.response is not None:
            raise TypeError(f"{kind.__name__} is a request: register its answer with on()")
        self._add(kind, _answer(kind, fn))

    def _add(self, kind: type[RpcMessage], answer: Answer) -> None:
        if kind in self._table:
            raise TypeError(f"{kind.__name__} already has a handler")
        self._table[kind] = answer

    @property
    def kinds(self) -> frozenset[type[RpcMessage]]:
        """The message classes with a registered handler."""
        return frozenset(self._table)

    def __call__(self, msg: RpcMessage) -> Awaitable[RpcMessage | None]:
        """Answer ``msg`` with the function registered for its type (or the fallback)."""
        return self._table.get(type(msg), self._fallback)(msg)


class Registration(Protocol[Q_co]):
    """`Handlers.on`'s result, as mypy sees it: the request class waiting for its answer."""

    def answer(self: Registration[RpcRequest[R]], fn: Callable[[Q_co], Awaitable[R]]) -> None:
        """Register ``fn`` as the answer to the request class.

        The self type binds ``R`` to the reply the request class declares, so mypy refuses a
        function whose parameter does not accept the request or whose result is not its reply,
        and refuses the call altogether when the class is not a request.

        Raises:
            TypeError: the class is not a request, or it already has a handler.
        """


class _Registration(Generic[M]):
    """What `Handlers.on` returns. `Registration` declares the strict signature callers see; this
    class's looser one is what the body can be checked against (inside a method with a self type,
    mypy no longer knows that ``kind`` and ``fn`` are about the same class)."""

    __slots__ = ("_handlers", "_kind")

    def __init__(self, handlers: Handlers, kind: type[M]) -> None:
        self._handlers = handlers
        self._kind = kind

    def answer(self, fn: Callable[[M], Awaitable[RpcMessage | None]]) -> None:
        kind = self._kind
        if kind.response is None:
            raise TypeError(f"{kind.__name__} is not a request: use on_notification()")
        self._handlers._add(kind, _answer(kind, fn))
