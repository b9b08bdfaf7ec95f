"""The vocabulary of an SMTP envelope, declared once: BODY, RET, NOTIFY and delivery outcomes.

smtps parses these values (`meta1py.smtp.events`), sends them to qmgr (`meta1py.rpc.messages`),
qmgr stores them (`meta1py.queue.envelopes`) and passes them to smtpc, which reports outcomes in
the same words. Every hop imports its types from here, so the words cannot drift apart.

`EnvelopeParams` is the part of an envelope that travels unchanged from hop to hop (the MAIL FROM
address and its parameters, and the size); `envelope_params` copies it from one record to the next::

    SmtpcDeliveryRequest(qid=env.qid, recipients=..., route=..., **envelope_params(env))

mypy checks both ends: the source must have every field with a compatible type
(`EnvelopeParamsSource`), and the target's constructor must accept each key with its type. A new
MAIL FROM parameter that must reach smtpc is added here and to each record, and no copy site.

This module imports nothing from meta1py (every layer may import it).
"""

from __future__ import annotations

from typing import Literal, Protocol, TypedDict, get_args

BodyType = Literal["7BIT", "8BITMIME", "BINARYMIME"]
"""MAIL FROM's BODY= parameter (RFC 6152, RFC 3030); 7BIT when absent."""
DsnRet = Literal["FULL", "HDRS"]
"""MAIL FROM's RET= parameter (RFC 3461 §4.3): return the full message, or its headers only."""
NotifyKeyword = Literal["SUCCESS", "FAILURE", "DELAY", "NEVER"]
"""RCPT TO's NOTIFY= keywords (RFC 3461 §4.1); NEVER stands alone."""
FailureStatus = Literal["temp", "perm"]
"""A failure to route or deliver one recipient: try again later, or give up."""
DeliveryStatus = Literal["ok", FailureStatus]
"""The outcome of routing or delivering one recipient: delivered, or a `FailureStatus`."""

BODY_TYPES: frozenset[str] = frozenset(get_args(BodyType))
DSN_RETS: frozenset[str] = frozenset(get_args(DsnRet))
NOTIFY_KEYWORDS: frozenset[str] = frozenset(get_args(NotifyKeyword))
DELIVERY_STATUSES: frozenset[str] = frozenset(get_args(DeliveryStatus))


class EnvelopeParams(TypedDict):
    """The fields of an envelope that every hop carries unchanged (keyword arguments)."""

    sender: str
    size: int
    envid: str | None
    ret: DsnRet | None
    body: BodyType
    smtputf8: bool


class EnvelopeParamsSource(Protocol):
    """A record that holds `EnvelopeParams` as attributes (a request, a stored envelope)."""

    @property
    def sender(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def envid(self) -> str | None: ...
    @property
    def ret(self) -> DsnRet | None: ...
    @property
    def body(self) -> BodyType: ...
    @property
    def smtputf8(self) -> bool: ...


def envelope_params(src: EnvelopeParamsSource) -> EnvelopeParams:
    """The `EnvelopeParams` of ``src``, to pass on with ``**`` to the next record's constructor."""
    return EnvelopeParams(
        sender=src.sender,
        size=src.size,
        envid=src.envid,
        ret=src.ret,
        body=src.body,
        smtputf8=src.smtputf8,
    )
