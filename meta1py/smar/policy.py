"""smar's policy decision at each SMTP stage (pure: the access map and the facts in, a verdict out).

smar gathers the facts (the client's forward-confirmed name, the DNS list answers: see
:mod:`meta1py.smar.service`) and asks :func:`decide`. With ``delay_checks = yes`` (the default,
Postfix's ``smtpd_delay_reject``) every check is made at RCPT TO, so that a recipient entry can
override the client and sender checks: mail to ``abuse@`` still gets through from a client that
is refused everything else. With ``delay_checks = no`` smtps asks at each stage and the checks of
that stage refuse it there; at RCPT TO the whole list runs again (the earlier checks passed, so
they pass again) and a recipient entry cannot override anything.

The checks, in order, by the stage they belong to (the first access entry found for each check,
see :mod:`meta1py.maps.access`):

=======  ===================================================================================
stage    checks
=======  ===================================================================================
rcpt     ``to:`` the recipient (only at RCPT; it comes first there)
connect  ``cltaddr:``, ``certissuer:``, ``certsubject:`` (a verified client certificate),
         ``cltname:`` (forward-confirmed name), ``cltresolve:`` (ok, no, temp), then the
         ``dnswl`` and ``dnsbl`` lists
helo     ``ehlo:``
mail     ``from:``, then the ``rhsbl`` lists (the sender's domain)
rcpt     ``protectedrcpt:`` the recipient
=======  ===================================================================================

What each result does:

* A refusal (REJECT, TEMPFAIL, ERROR:, a DNS list listing) refuses, unless ``to:`` said OK or
  RELAY before it (at RCPT TO, delayed checks) and the refusal is not ``QUICK:``.
* ``cltresolve:`` refusals do not apply to a client that may relay anyway (AUTH, ``relay_clients``,
  a certificate or address entry RELAY): reverse DNS says nothing about those.
* ``OK`` passes the check; ``RELAY`` also allows relaying when it comes from ``to:``,
  ``cltaddr:``, ``certissuer:``, ``certsubject:`` or ``cltname:`` (``RELAY`` on ``ehlo:`` or
  ``from:`` counts as ``OK``: a client chooses those freely).
* An OK or RELAY of the client (``cltaddr:``, ``cert*:``, ``cltname:``) or of the recipient
  (``to:``), a DNSWL listing, an authenticated session or a relay client makes the client
  *trusted*: the DNS block lists are not asked and greylisting is skipped. A ``from:`` OK does
  not (anyone can write any sender).
* ``DISCARD`` accepts and drops the message; ``CONT`` decides nothing for its check (less
  specific keys of that tag are not tried).
* ``QUICK:`` makes a decision final: ``QUICK:OK`` and ``QUICK:RELAY`` skip every later check,
  ``QUICK:`` refusals cannot be overridden.
* An entry whose line is broken, or a DNS list that cannot be asked, is a temporary failure (451):
  the policy cannot be decided, so the client tries again later.

Every step is recorded (:class:`Step`), so that ``meta1 explain`` can print why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from meta1py.maps.access import AccessMap, AccessResult, Protected, keys_for
from meta1py.maps.errors import BrokenEntry
from meta1py.smtp.status import (
    PERM_NOT_AUTHORIZED,
    TEMP_NOT_AUTHORIZED,
    TEMP_ROUTING_SERVER_FAILURE,
    TEMP_SYSTEM_MISCONFIGURED,
)

__all__ = ["ListResult", "PolicyFacts", "Stage", "Step", "Verdict", "access_keys", "decide"]

Stage = Literal["connect", "helo", "mail", "rcpt"]
Effect = Literal[
    "none", "pass", "refuse", "overridden", "relay", "quick", "discard", "broken", "allowed", "trusted",
    "skipped",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ListResult:
    """One DNS list answer, as smar got it.

    Attributes:
        kind: ``dnsbl``, ``dnswl`` or ``rhsbl``.
        zone: the list's zone.
        query: the name looked up (``4.3.2.1.zone``, ``example.org.zone``).
        listed: the answer is one of the list's ``addresses``.
        action: what a listing does (``reject``, ``tempfail``; ``permit`` for a DNSWL).
        answer: the A records the list answered ("" when none).
        text: the listing's TXT record ("" when none).
        error: why the list could not be asked ("" when it answered).
    """

    kind: Literal["dnsbl", "dnswl", "rhsbl"]
    zone: str
    query: str
    listed: bool
    action: str = "reject"
    answer: str = ""
    text: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    """What is known about the session (and the transaction, from MAIL and RCPT on).

    Attributes:
        client_address: the client's IP address.
        helo: its HELO/EHLO name ("" before HELO).
        sender: MAIL FROM ("" for the null sender; None before MAIL).
        recipient: RCPT TO (None before RCPT).
        client_name: the client's forward-confirmed name ("" when it has none).
        client_resolve: ``ok``, ``no`` or ``temp`` (that lookup's outcome; "" when not made).
        cert_subject: the subject of the client's *verified* certificate ("" when none).
        cert_issuer: its issuer ("" when none).
        may_relay: the session may relay without the access map (AUTH, ``relay_clients``).
        lists: the DNS list answers (asked only when needed: see :func:`lists_needed`).
    """

    client_address: str
    helo: str = ""
    sender: str | None = None
    recipient: str | None = None
    client_name: str = ""
    client_resolve: str = ""
    cert_subject: str = ""
    cert_issuer: str = ""
    may_relay: bool = False
    lists: tuple[ListResult, ...] = ()


@dataclass(frozen=True, slots=True)
class Step:
    """One check: the tag (or DNS list kind), what it looked up, the key that matched (None: no
    entry), its result as written (``""`` when none) and what it did."""

    tag: str
    subject: str
    key: str | None
    result: str
    effect: Effect


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's say on one stage.

    Attributes:
        action: ``pass`` (no objection: the recipient's own checks decide), ``refuse`` (answer
            :attr:`reply`), ``discard`` (accept, do not deliver).
        relay: an entry allows relaying to this recipient.
        trusted: the client is trusted (no greylisting; see the module docstring).
        reply: ``(code, enhanced, text)`` of a refusal.
        steps: every check, in order.
    """

    action: Literal["pass", "refuse", "discard"]
    relay: bool = False
    trusted: bool = False
    reply: tuple[int, str, str] | None = None
    steps: tuple[Step, ...] = field(default=())


# (tag, the stage it belongs to) in the order they run; "to" is first, at RCPT only.
_CLIENT_TAGS = ("cltaddr", "certissuer", "certsubject", "cltname", "cltresolve")
# The tags whose RELAY grants relaying, and whose pass (any non-refusing answer) makes the client
# trusted for the later checks.
_RELAY_TAGS = frozenset({"to", "cltaddr", "certissuer", "certsubject", "cltname"})
_ORDER = ("to", "connect", "helo", "mail", "end")

_Record = Callable[[str, str, "str | None", object, Effect], None]


def _stages_for(stage: Stage) -> tuple[str, ...]:
    """The stages whose checks run when ``stage`` is decided."""
    return {
        "connect": ("connect",),
        "helo": ("helo",),
        "mail": ("mail",),
        "rcpt": ("connect", "helo", "mail", "rcpt"),
    }[stage]


def _subjects(facts: PolicyFacts, stage: Stage) -> list[tuple[str, str, str, str]]:
    """(stage, tag, subject, how a refusal names it) of every access check of ``stage``, in order."""
    runs = _stages_for(stage)
    checks: list[tuple[str, str, str, str]] = []
    address = facts.client_address
    if stage == "rcpt" and facts.recipient is not None:
        checks.append(("to", "to", facts.recipient, f"<{facts.recipient}>"))
    if "connect" in runs:
        checks.append(("connect", "cltaddr", address, f"client [{address}]"))
        if facts.cert_issuer:
            checks.append(("connect", "certissuer", facts.cert_issuer, "client certificate issuer"))
        if facts.cert_subject:
            checks.append(("connect", "certsubject", facts.cert_subject, "client certificate"))
        if facts.client_name:
            checks.append(("connect", "cltname", facts.client_name, f"client {facts.client_name}[{address}]"))
        if facts.client_resolve:
            what = f"client [{address}]: reverse DNS {facts.client_resolve}"
            checks.append(("connect", "cltresolve", facts.client_resolve, what))
    if "helo" in runs and facts.helo:
        checks.append(("helo", "ehlo", facts.helo, f"HELO {facts.helo}"))
    if "mail" in runs and facts.sender is not None:
        checks.append(("mail", "from", facts.sender, f"sender <{facts.sender}>"))
    return checks


def access_keys(facts: PolicyFacts, stage: Stage) -> list[str]:
    """Every access map key :func:`decide` may look up for ``facts`` at ``stage`` (smar fetches
    them first from a map that is not in memory)."""
    keys = [k for _, tag, subject, _ in _subjects(facts, stage) for k in keys_for(tag, subject)]
    if stage == "rcpt" and facts.recipient is not None:
        keys += keys_for("protectedrcpt", facts.recipient)
    return keys


def decide(access: AccessMap | None, facts: PolicyFacts, stage: Stage) -> Verdict:
    """The verdict for ``stage`` (see the module docstring)."""
    steps: list[Step] = []
    relay = False
    trusted = facts.may_relay
    override = False

    def record(tag: str, subject: str, key: str | None, value: object, effect: Effect) -> None:
        steps.append(Step(tag, subject, key, "" if value is None else str(value), effect))

    def verdict(
        action: Literal["pass", "refuse", "discard"], reply: tuple[int, str, str] | None = None
    ) -> Verdict:
        return Verdict(action, relay, trusted, reply, tuple(steps))

    def refusal(result: AccessResult, what: str) -> Verdict:
        return verdict("refuse", (result.code, result.enhanced, result.text or f"{what}: access denied"))

    # Each stage's access checks, then its DNS lists (connect: dnswl, dnsbl; mail: rhsbl).
    checks = _subjects(facts, stage) if access is not None else []
    list_stages = [s for s in ("connect", "mail") if s in _stages_for(stage)]
    for i, (check_stage, tag, subject, what) in enumerate([*checks, ("end", "", "", "")]):
        while list_stages and _ORDER.index(check_stage) > _ORDER.index(list_stages[0]):
            found = _lists(facts, list_stages.pop(0), trusted, override, record)
            if found is not None:
                return verdict("refuse", found)
            trusted = trusted or any(r.kind == "dnswl" and r.listed and not r.error for r in facts.lists)
        if i == len(checks):
            break
        assert access is not None
        match = access.lookup(tag, subject)
        if match is None:
            record(tag, subject, None, None, "none")
            continue
        value = match.value
        if isinstance(value, BrokenEntry):
            record(tag, subject, match.key, "(broken line)", "broken")
            return verdict("refuse", (451, TEMP_SYSTEM_MISCONFIGURED, value.text))
        if not isinstance(value, AccessResult) or value.action == "cont":
            record(tag, subject, match.key, value, "none")
            continue
        if value.refuses:
            exempt = tag == "cltresolve" and (facts.may_relay or relay)
            if exempt or (override and not value.quick):
                record(tag, subject, match.key, value, "overridden")
                continue
            record(tag, subject, match.key, value, "refuse")
            return refusal(value, what)
        if value.action == "discard":
            record(tag, subject, match.key, value, "discard")
            return verdict("discard")
        grants = value.action == "relay" and tag in _RELAY_TAGS
        relay = relay or grants
        trusted = trusted or tag in _RELAY_TAGS
        override = override or tag == "to"
        if value.quick:
            record(tag, subject, match.key, value, "quick")
            return verdict("pass")
        record(tag, subject, match.key, value, "relay" if grants else "pass")
    if stage == "rcpt" and access is not None and facts.recipient is not None:
        refused = _protected(access, facts, facts.recipient, record)
        if refused is not None:
            return verdict("refuse", refused)
    return verdict("pass")


def _lists(
    facts: PolicyFacts, stage: str, trusted: bool, override: bool, record: _Record
) -> tuple[int, str, str] | None:
    """Run the DNS lists of ``stage`` (connect: dnswl then dnsbl; mail: rhsbl); a refusal, or None."""
    kinds = ("dnswl", "dnsbl") if stage == "connect" else ("rhsbl",)
    whitelisted = False
    for result in facts.lists:
        if result.kind not in kinds:
            continue
        shown = f"{result.answer} {result.text}".strip()
        if result.kind == "dnswl":
            if result.error:
                record(result.kind, result.zone, result.query, result.error, "none")
            elif result.listed:
                whitelisted = True
                record(result.kind, result.zone, result.query, shown, "trusted")
            else:
                record(result.kind, result.zone, None, None, "none")
            continue
        if trusted or whitelisted:
            record(result.kind, result.zone, None, "client trusted", "skipped")
            continue
        if result.error:
            if override:
                record(result.kind, result.zone, result.query, result.error, "overridden")
                continue
            record(result.kind, result.zone, result.query, result.error, "broken")
            return (
                451,
                TEMP_ROUTING_SERVER_FAILURE,
                f"{result.kind} {result.zone} cannot be asked now; try again later",
            )
        if not result.listed:
            record(result.kind, result.zone, None, None, "none")
            continue
        if override:
            record(result.kind, result.zone, result.query, shown, "overridden")
            continue
        record(result.kind, result.zone, result.query, shown, "refuse")
        return _listing_reply(facts, result)
    return None


def _listing_reply(facts: PolicyFacts, result: ListResult) -> tuple[int, str, str]:
    """Postfix's wording: ``Service unavailable; Client host [ip] blocked using zone; TXT``."""
    if result.kind == "rhsbl":
        domain = (facts.sender or "").rpartition("@")[2]
        what = f"Sender address [{domain}]"
    else:
        what = f"Client host [{facts.client_address}]"
    text = f"Service unavailable; {what} blocked using {result.zone}"
    if result.text:
        text += f"; {result.text}"
    if result.action == "tempfail":
        return (450, TEMP_NOT_AUTHORIZED, text)
    return (554, PERM_NOT_AUTHORIZED, text)


def _protected(
    access: AccessMap, facts: PolicyFacts, recipient: str, record: _Record
) -> tuple[int, str, str] | None:
    protected = access.lookup("protectedrcpt", recipient)
    if protected is None:
        return None
    value = protected.value
    if isinstance(value, BrokenEntry):
        record("protectedrcpt", recipient, protected.key, "(broken line)", "broken")
        return (451, TEMP_SYSTEM_MISCONFIGURED, value.text)
    if not isinstance(value, Protected):
        return None
    mine = set(keys_for("cltaddr", facts.client_address)) | set(keys_for("from", facts.sender or ""))
    if facts.client_name:
        mine |= set(keys_for("cltname", facts.client_name))
    if mine.isdisjoint(value.allowed):
        record("protectedrcpt", recipient, protected.key, value, "refuse")
        text = f"<{recipient}>: Recipient address rejected: only some senders may mail it"
        return (550, PERM_NOT_AUTHORIZED, text)
    record("protectedrcpt", recipient, protected.key, value, "allowed")
    return None
