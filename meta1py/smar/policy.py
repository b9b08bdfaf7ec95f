"""The access map's decision for one recipient (pure: the map and the facts in, a verdict out).

smar runs it at RCPT TO, before the recipient's own checks (does a local user exist, may the client
relay). The checks are made at RCPT time even for the client and the sender (Postfix's
``smtpd_delay_reject``, MeTA1's ``delay_checks``), so that a recipient entry can override them: mail
to ``abuse@`` still gets through from a client that is refused everything else.

Order, and what each result does (the first entry found for each check, see
:mod:`meta1py.maps.access`):

1. ``to:`` the recipient. A refusal refuses; ``OK`` or ``RELAY`` overrides any later refusal that
   is not ``QUICK:``; ``RELAY`` also allows relaying to it; ``DISCARD`` accepts and drops.
2. ``cltaddr:`` the client's address, 3. ``ehlo:`` its HELO name, 4. ``from:`` the sender. A
   refusal refuses unless step 1 said OK or RELAY; ``RELAY`` on ``cltaddr:`` allows relaying
   (``RELAY`` on ``ehlo:`` or ``from:`` counts as ``OK``: a client chooses those freely).
5. ``protectedrcpt:`` the recipient: if listed, only the clients and senders its entry names may
   mail it (550 5.7.1 for anyone else).

``CONT`` decides nothing for its check (less specific keys of that tag are not tried) and the next
check runs. ``QUICK:`` makes a decision final: ``QUICK:OK`` and ``QUICK:RELAY`` skip every check
after them, ``QUICK:`` refusals cannot be overridden by a recipient entry. An entry whose line is
broken is a temporary failure (451 4.3.5): the policy cannot be decided.

Every step is recorded (:class:`Step`), so that ``meta1 explain`` can print why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from meta1py.maps.access import AccessMap, AccessResult, Protected, keys_for
from meta1py.maps.errors import BrokenEntry
from meta1py.smtp.status import PERM_NOT_AUTHORIZED, TEMP_SYSTEM_MISCONFIGURED

__all__ = ["RcptFacts", "Step", "Verdict", "decide_rcpt"]

Effect = Literal["none", "pass", "refuse", "overridden", "relay", "quick", "discard", "broken", "allowed"]


@dataclass(frozen=True, slots=True)
class RcptFacts:
    """What is known at RCPT TO."""

    client_address: str
    helo: str
    sender: str  # "" for the null sender
    recipient: str


@dataclass(frozen=True, slots=True)
class Step:
    """One check: the tag, what it looked up, the key that matched (None: no entry), its result as
    written (``""`` when none) and what it did."""

    tag: str
    subject: str
    key: str | None
    result: str
    effect: Effect


@dataclass(frozen=True, slots=True)
class Verdict:
    """The access map's say on one recipient.

    Attributes:
        action: ``pass`` (no objection: the recipient's own checks decide), ``refuse`` (answer
            :attr:`reply`), ``discard`` (accept, do not deliver).
        relay: an entry allows relaying to this recipient (``to:`` or ``cltaddr:`` RELAY).
        reply: ``(code, enhanced, text)`` of a refusal ("" text: the default one).
        steps: every check, in order.
    """

    action: Literal["pass", "refuse", "discard"]
    relay: bool = False
    reply: tuple[int, str, str] | None = None
    steps: tuple[Step, ...] = field(default=())


def decide_rcpt(access: AccessMap, facts: RcptFacts) -> Verdict:
    """The verdict for one recipient (see the module docstring)."""
    steps: list[Step] = []
    relay = False
    override = False

    def record(tag: str, subject: str, key: str | None, value: object, effect: Effect) -> None:
        steps.append(Step(tag, subject, key, "" if value is None else str(value), effect))

    def refused(result: AccessResult, what: str) -> Verdict:
        text = result.text or f"{what}: access denied"
        return Verdict("refuse", relay, (result.code, result.enhanced, text), tuple(steps))

    def broken(entry: BrokenEntry) -> Verdict:
        return Verdict("refuse", relay, (451, TEMP_SYSTEM_MISCONFIGURED, entry.text), tuple(steps))

    recipient = facts.recipient
    sender_text = f"<{facts.sender}>"
    checks: list[tuple[str, str, str]] = [
        ("to", recipient, f"<{recipient}>"),
        ("cltaddr", facts.client_address, f"client [{facts.client_address}]"),
        ("ehlo", facts.helo, f"HELO {facts.helo}"),
        ("from", facts.sender, f"sender {sender_text}"),
    ]
    for tag, subject, what in checks:
        if tag == "ehlo" and not subject:
            continue
        match = access.lookup(tag, subject)
        if match is None:
            record(tag, subject, None, None, "none")
            continue
        value = match.value
        if isinstance(value, BrokenEntry):
            record(tag, subject, match.key, "(broken line)", "broken")
            return broken(value)
        if not isinstance(value, AccessResult):  # a protectedrcpt value cannot be under these tags
            continue
        if value.action == "cont":
            record(tag, subject, match.key, value, "none")
            continue
        if value.refuses:
            if override and not value.quick:
                record(tag, subject, match.key, value, "overridden")
                continue
            record(tag, subject, match.key, value, "refuse")
            return refused(value, what)
        if value.action == "discard":
            record(tag, subject, match.key, value, "discard")
            return Verdict("discard", relay, None, tuple(steps))
        grants = value.action == "relay" and tag in ("to", "cltaddr")
        relay = relay or grants
        if tag == "to":
            override = True
        if value.quick:
            record(tag, subject, match.key, value, "quick")
            return Verdict("pass", relay, None, tuple(steps))
        record(tag, subject, match.key, value, "relay" if grants else "pass")
    protected = access.lookup("protectedrcpt", recipient)
    if protected is not None:
        value = protected.value
        if isinstance(value, BrokenEntry):
            record("protectedrcpt", recipient, protected.key, "(broken line)", "broken")
            return broken(value)
        if isinstance(value, Protected):
            mine = set(keys_for("cltaddr", facts.client_address)) | set(keys_for("from", facts.sender))
            if mine.isdisjoint(value.allowed):
                record("protectedrcpt", recipient, protected.key, value, "refuse")
                text = f"<{recipient}>: Recipient address rejected: only some senders may mail it"
                return Verdict("refuse", relay, (550, PERM_NOT_AUTHORIZED, text), tuple(steps))
            record("protectedrcpt", recipient, protected.key, value, "allowed")
    return Verdict("pass", relay, None, tuple(steps))
