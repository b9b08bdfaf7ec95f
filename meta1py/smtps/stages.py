"""The checks of each SMTP stage: one ordered chain per stage, each check returning a decision.

A session asks the chain of a stage when the stage is reached and turns the decision into its
reply; a check never writes to the client (chasquid's handlers return their replies alike). So a
new policy (an access map, a milter) is one more check in a chain, not an edit of every branch of
the session.

Stages (:data:`Stage`), and what the :class:`StageContext` holds at each:

=========  ==========================================  ==========================================
stage      when                                        facts known (besides client, TLS, AUTH)
=========  ==========================================  ==========================================
connect    before the greeting (after the implicit     --
           TLS handshake)
helo       HELO or EHLO                                ``helo``
mail       MAIL FROM                                   ``sender``, ``mail_params``
rcpt       RCPT TO                                     ``recipient``, ``rcpt_params``, ``recipients``
data       DATA, or the first BDAT chunk               ``recipients``
eoh        the end of the client's header block        ``headers`` (without our Received:)
eom        the end of the data, content file closed    ``message`` (queue id, size, path)
=========  ==========================================  ==========================================

Decisions: :class:`Continue` (ask the next check), :class:`Accept` (stop the chain, usual
answer), :class:`Refuse` (a 4xx/5xx reply of the check's choosing), :class:`TempFail` (a 4xx;
the stage's default when no reply is given), :class:`Discard` (the usual answers, but the message
is not queued), :class:`Quarantine` (the message is to be kept on hold). Every decision but
Continue ends the chain of its stage. A chain that takes longer than ``CHAIN_TIMEOUT_S`` is a
TempFail. What the session answers for each decision at each stage is in docs/smtps.md "Stages";
:func:`refusal` computes the refusing replies.

Discard and Quarantine made before the end of data mark the transaction (at connect and HELO: the
session, for every later transaction; a new HELO/EHLO or STARTTLS clears a HELO mark) and take
effect at the end of data. Discard wins over Quarantine. qmgr cannot put a message on hold as it
commits it (QueueEnvelopeCommitRequest has no hold flag), and committing first and holding after
would let the message be delivered in between, so a quarantined message is refused with
``451 4.7.1`` (:func:`quarantine_refused`): the client keeps it and tries again; it is never
delivered unchecked.

The built-in checks (:func:`builtin_checks`), first in their chains:

* CONNECT, HELO, MAIL: :class:`ClientCheck`: smar's ``SmarClientCheckRequest``: the client's
  forward-confirmed name at connect (``peername_lookup``), and with ``delay_checks = no`` smar's
  verdict on the stage (access map, DNS lists). Nothing is asked when neither applies.

* MAIL: :class:`SenderCheck` (``require_auth``, ``sender_must_match_login``), then
  :class:`SpaceCheck` (``queue_minfree``: 452 4.3.1). DATA and BDAT check the space inline (a
  refusal there drops content already being received).
* Test mode only (docs/testmode.md): :class:`ScriptCheck`, appended to the connect, HELO, MAIL,
  RCPT and end-of-message chains by :func:`scripted_checks`: the ``in`` rules of the active
  script refuse with their reply.
* RCPT: :class:`RecipientCheck`: smar's ``SmarRecipientCheckRequest`` (the access map, if any;
  does a local recipient exist; may this client relay: relay_clients, AUTH or an access RELAY;
  smar decides all three, because only smar knows whether a domain is local), with a few
  seconds' cache of its verdicts. smar's ``discard`` becomes :class:`Discard`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import trio

from meta1py.conf import Config, SmtpsConfig
from meta1py.contract import TEST_SCRIPTS_NAME, test_directory
from meta1py.rpc.caller import Caller
from meta1py.rpc.errors import RpcError
from meta1py.rpc.messages import (
    SmarClientCheckReply,
    SmarClientCheckRequest,
    SmarRecipientCheckReply,
    SmarRecipientCheckRequest,
    SmtpReplyValue,
)
from meta1py.smtp import events as ev
from meta1py.smtp import replies
from meta1py.smtp.address import Address, NullPath
from meta1py.smtp.replies import Reply
from meta1py.smtps.limits import MailRates, QueueSpace
from meta1py.submission import submission_refusal
from meta1py.tls.facts import TlsFacts

if TYPE_CHECKING:
    # Test mode only: imported where it is used (a worker's start-up pays for no more than it needs).
    from meta1py.testmode.scripts import ScriptSource

log = logging.getLogger(__name__)

Stage = Literal["connect", "helo", "mail", "rcpt", "data", "eoh", "eom"]
STAGES: tuple[Stage, ...] = ("connect", "helo", "mail", "rcpt", "data", "eoh", "eom")

# smar may be doing DNS.
POLICY_TIMEOUT_S = 30.0
# The longest the greeting waits for the client's name when smar only looks it up.
PEERNAME_TIMEOUT_S = 5.0
#: How long one stage's whole chain may take (above every built-in check's own deadline).
CHAIN_TIMEOUT_S = 120.0
_RCPT_CACHE_S = 5.0
_RCPT_CACHE_MAX = 10_000


# -- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Continue:
    """No objection: ask the next check (the stage's usual answer when none is left)."""


@dataclass(frozen=True, slots=True)
class Accept:
    """Stop this stage's chain and give the usual answer (later stages still ask theirs)."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer ``reply``, a 4xx or 5xx of the check's choosing, instead of the usual one.

    Raises:
        ValueError: a reply that is not a refusal (a check cannot make the session say 250
            to something it did not accept).
    """

    reply: Reply

    def __post_init__(self) -> None:
        if not 400 <= self.reply.code < 600:
            raise ValueError(f"Refuse needs a 4xx or 5xx reply, not {self.reply.code}")


@dataclass(frozen=True, slots=True)
class TempFail:
    """A temporary refusal: ``reply`` (a 4xx), or the stage's default (:func:`refusal`).

    Raises:
        ValueError: a reply that is not a 4xx.
    """

    reply: Reply | None = None

    def __post_init__(self) -> None:
        if self.reply is not None and not 400 <= self.reply.code < 500:
            raise ValueError(f"TempFail needs a 4xx reply, not {self.reply.code}")


@dataclass(frozen=True, slots=True)
class Discard:
    """Answer as if accepted, but do not queue the message (it is dropped at the end of data)."""

    reason: str = "discarded by policy"


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Keep the message on hold for an operator (see the module docstring: refused 451 4.7.1)."""

    reason: str = "quarantined by policy"


Decision: TypeAlias = Continue | Accept | Refuse | TempFail | Discard | Quarantine
Mark: TypeAlias = Discard | Quarantine
CONTINUE = Continue()
ACCEPT = Accept()


# -- what a check sees -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """The message at the end of data: its queue id, size in octets and closed content file.

    The file starts with smtps's own Received: header; it is removed if the message is refused.
    """

    qid: str
    size: int
    path: Path


@dataclass(slots=True)
class StageContext:
    """The facts a check sees: those of the session, and of the transaction so far.

    Built by the session for each stage; checks read it. The one field a check may set is
    ``expanded`` (RCPT): the addresses the recipient stands for (the recipient check sets it from
    smar's alias expansion; None: the recipient itself).
    """

    stage: Stage
    session_id: str
    service: SmtpsConfig
    client_address: str
    helo: str | None
    esmtp: bool
    tls: TlsFacts | None
    authenticated: str | None
    sender: Address | NullPath | None = None
    mail_params: ev.MailParams | None = None
    recipient: Address | None = None
    rcpt_params: ev.RcptParams | None = None
    #: The recipients accepted so far in this transaction (as the client wrote them).
    recipients: tuple[str, ...] = ()
    #: EOH and EOM: the client's header block (up to 64 KiB, without the blank line).
    headers: bytes | None = None
    message: MessageFacts | None = None
    expanded: tuple[str, ...] | None = None
    #: The client's forward-confirmed name ("" when it has none; None: not looked up). The
    #: connect check (:class:`ClientCheck`) sets it; the session keeps it.
    client_name: str | None = None
    #: The client is exempt from the message and recipient limits (relay_clients unless
    #: limit_relay_clients; the access map's ``ratelimit:`` OK, which the connect check sets).
    limits_exempt: bool = False
    #: MAIL FROM and RCPT TO commands accepted in this session so far.
    session_messages: int = 0
    session_recipients: int = 0


Check: TypeAlias = Callable[[StageContext], Awaitable[Decision]]


def may_follow_greeting(check: Check) -> bool:
    """True when a connect check cannot refuse (it only learns facts about the client), so the
    greeting need not wait for it: a check says so with a true ``may_follow_greeting``."""
    return bool(getattr(check, "may_follow_greeting", False))


@dataclass(frozen=True, slots=True)
class Checks:
    """The ordered checks of every stage."""

    connect: tuple[Check, ...] = ()
    helo: tuple[Check, ...] = ()
    mail: tuple[Check, ...] = ()
    rcpt: tuple[Check, ...] = ()
    data: tuple[Check, ...] = ()
    eoh: tuple[Check, ...] = ()
    eom: tuple[Check, ...] = ()

    def then(self, later: Checks) -> Checks:
        """These checks, each chain followed by the same stage's chain of ``later``."""
        return Checks(*(getattr(self, s) + getattr(later, s) for s in STAGES))


async def run_chain(
    checks: tuple[Check, ...], context: StageContext, timeout_s: float = CHAIN_TIMEOUT_S
) -> Decision:
    """Ask each check in order; the first decision that is not Continue ends the chain.

    A chain that has not decided within ``timeout_s`` is a TempFail (logged): a hung policy
    service must not hold the session until its ``session_timeout``. A chain made only of checks
    that bound their own waits (``bounded = True``: the built-in ones) runs without that cancel
    scope: one costs about 11 us, several times what the built-in MAIL checks cost together.
    """
    if all(getattr(check, "bounded", False) is True for check in checks):
        return await _ask(checks, context)
    with trio.move_on_after(timeout_s):
        return await _ask(checks, context)
    log.warning(
        "session %s: the %s checks did not decide within %gs: temporary failure",
        context.session_id,
        context.stage,
        timeout_s,
    )
    return TempFail()


async def _ask(checks: tuple[Check, ...], context: StageContext) -> Decision:
    for check in checks:
        decision = await check(context)
        if not isinstance(decision, Continue):
            return decision
    return CONTINUE


# -- from decisions to replies -----------------------------------------------------------------


def tempfail_default(stage: Stage, hostname: str) -> Reply:
    """The reply to a TempFail without a reply of its own.

    At connect it is the greeting, which can only be 421 (RFC 5321 §3.1): the session ends.
    """
    if stage == "connect":
        return replies.policy_tempfail_greeting(hostname)
    return replies.policy_tempfail()


def refusal(stage: Stage, decision: Decision, hostname: str) -> Reply | None:
    """The reply refusing the stage for ``decision``, or None when the decision accepts it.

    A 4xx refusal at connect is sent as 421 with its text (RFC 5321 §3.1: a greeting is 220, 554
    or 421); a 5xx one is the greeting itself (the session then answers 503 to everything but QUIT).
    """
    if isinstance(decision, Refuse):
        reply = decision.reply
    elif isinstance(decision, TempFail):
        reply = decision.reply or tempfail_default(stage, hostname)
    else:
        return None
    if stage == "connect" and reply.code < 500 and reply.code != 421:
        return Reply(421, reply.enhanced, reply.lines)
    return reply


def mark_of(decision: Decision) -> Mark | None:
    """The Discard or Quarantine that ``decision`` is, else None."""
    return decision if isinstance(decision, Discard | Quarantine) else None


def stronger(first: Mark | None, second: Mark | None) -> Mark | None:
    """Of two marks, the one that wins: a Discard over a Quarantine, else the first."""
    if isinstance(second, Discard) and not isinstance(first, Discard):
        return second
    return first or second


def quarantine_refused() -> Reply:
    """The end-of-data reply for a quarantined message (qmgr has no hold at commit)."""
    return replies.policy_held()


# -- the built-in checks -------------------------------------------------------------------------

_RcptKey = tuple[str, str, str | None, str, str, str, str, str]


class RcptCache:
    """smar's verdicts on recent RCPT TO checks, kept for a few seconds.

    A busy gateway sees the same (client, sender, recipient) over and over within seconds; asking
    smar each time costs an RPC round trip per recipient. Entries live ``_RCPT_CACHE_S`` seconds,
    so a changed aliases map or relay list takes effect at most that much later (Postfix's own
    caches in front of its maps behave alike). Temporary failures are never cached.
    """

    def __init__(self) -> None:
        self._entries: dict[_RcptKey, tuple[float, SmarRecipientCheckReply]] = {}

    def get(self, key: _RcptKey, now: float) -> SmarRecipientCheckReply | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < now:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: _RcptKey, value: SmarRecipientCheckReply, now: float) -> None:
        if len(self._entries) >= _RCPT_CACHE_MAX:
            self._entries.clear()
        self._entries[key] = (now + _RCPT_CACHE_S, value)


class CheckResources(Protocol):
    """What the built-in checks use of the process (``SmtpsContext``), read at each call."""

    config: Config
    smar: Caller
    rcpt_cache: RcptCache
    space: QueueSpace | None
    rates: MailRates


def _has_rate_limits(service: SmtpsConfig) -> bool:
    return bool(
        service.max_messages_per_session
        or service.max_recipients_per_session
        or service.message_rate_per_client
        or service.recipient_rate_per_client
        or service.message_rate_per_user
        or service.recipient_rate_per_user
    )


class RateCheck:
    """MAIL and RCPT: the message and recipient limits, per session and per minute per client and
    per authenticated user (:class:`~meta1py.smtps.limits.MailRates`). Over a session's message
    limit: 421 4.7.0 (the session ends); over the others: 450 4.7.1. Each refusal is logged."""

    bounded = True  # no waits

    def __init__(self, resources: CheckResources, stage: Literal["mail", "rcpt"]) -> None:
        self._resources = resources
        self._stage: Literal["mail", "rcpt"] = stage

    async def __call__(self, context: StageContext) -> Decision:
        service = context.service
        if context.limits_exempt or not _has_rate_limits(service):
            return CONTINUE
        rates = self._resources.rates
        now = trio.current_time()
        client, user = context.client_address, context.authenticated
        if self._stage == "mail":
            why = rates.mail(service, client, user, context.session_messages, now)
        else:
            why = rates.rcpt(service, client, user, context.session_recipients, now)
        if why is None:
            return CONTINUE
        who = f"user {user}" if why == "user" else client
        reply = {
            ("mail", "session_messages"): replies.too_many_messages_in_session,
            ("rcpt", "session_recipients"): replies.too_many_recipients_in_session,
        }.get((self._stage, why))
        if reply is not None:
            refused = reply()
        elif self._stage == "mail":
            refused = replies.too_much_mail(who)
        else:
            refused = replies.too_many_recipients_from(who)
        log.info(
            "session %s: %s limit (%s) reached by %s: %s", context.session_id, self._stage, why, who, refused
        )
        return Refuse(refused)


def space_refusal(space: QueueSpace | None, size: int | None, session_id: str, client: str) -> Reply | None:
    """``queue_minfree``: 452 4.3.1 when the queue has no room for a message of ``size``."""
    if space is None:
        return None
    now = trio.current_time()
    if space.room_for(size, now):
        return None
    if space.should_log(now):
        log.warning(
            "session %s: no room for new mail: queue file system below queue_minfree "
            "(%d bytes free, %d kept%s) or qmgr's store full: 452 4.3.1 to %s (logged once a minute)",
            session_id,
            space.free(now) or 0,
            space.minfree,
            f", SIZE={size}" if size is not None else "",
            client,
        )
    return replies.insufficient_storage()


class SenderCheck:
    """MAIL: submission policy, ``require_auth`` and ``sender_must_match_login``."""

    bounded = True  # no waits

    def __init__(self, resources: CheckResources) -> None:
        self._resources = resources

    async def __call__(self, context: StageContext) -> Decision:
        sender = context.sender
        text = str(sender) if isinstance(sender, Address) else ""
        local_domains = self._resources.config.local_domains
        refused = submission_refusal(context.service, text, context.authenticated, local_domains)
        if refused is None:
            return CONTINUE
        if context.authenticated is not None:
            log.info(
                "session %s: sender %r not allowed for user %r",
                context.session_id,
                text[:256],
                context.authenticated,
            )
        return Refuse(refused)


class SpaceCheck:
    """MAIL: ``queue_minfree`` against the declared SIZE (452 4.3.1)."""

    bounded = True  # no waits (the free space is read at most once a second)

    def __init__(self, resources: CheckResources) -> None:
        self._resources = resources

    async def __call__(self, context: StageContext) -> Decision:
        size = context.mail_params.size if context.mail_params is not None else None
        reply = space_refusal(self._resources.space, size, context.session_id, context.client_address)
        return CONTINUE if reply is None else Refuse(reply)


class RecipientCheck:
    """RCPT: smar's verdict (recipient exists, relaying allowed), cached a few seconds.

    Sets ``context.expanded`` to smar's alias expansion. smar unreachable or slow: 451 4.4.3.
    """

    bounded = True  # smar's call has its own deadline (POLICY_TIMEOUT_S)

    def __init__(self, resources: CheckResources) -> None:
        self._resources = resources

    async def __call__(self, context: StageContext) -> Decision:
        res = self._resources
        assert context.recipient is not None
        rcpt = str(context.recipient)
        sender = context.sender
        subject, issuer = verified_certificate(context.tls)
        request = SmarRecipientCheckRequest(
            client_address=context.client_address,
            service=context.service.name or "",
            authenticated=context.authenticated,
            sender=str(sender) if isinstance(sender, Address) else "",
            recipient=rcpt,
            helo=context.helo or "",
            cert_subject=subject,
            cert_issuer=issuer,
        )
        key = (
            request.service,
            request.client_address,
            request.authenticated,
            request.sender,
            rcpt,
            request.helo,
            subject,
            issuer,
        )
        now = time.monotonic()
        answer = res.rcpt_cache.get(key, now)
        if answer is None:
            try:
                answer = await res.smar.call(request, timeout=POLICY_TIMEOUT_S)
            except RpcError as exc:
                log.warning("session %s: smar unavailable for RCPT: %s", context.session_id, exc)
                return TempFail(replies.temp_failure("Recipient check unavailable, try again later"))
            if answer.action != "tempfail":
                res.rcpt_cache.put(key, answer, now)
        context.expanded = answer.expanded or None
        return smar_decision(answer.action, answer.reply)


def verified_certificate(tls: TlsFacts | None) -> tuple[str, str]:
    """(subject, issuer) of the client's certificate when it verified, else ("", "")."""
    if tls is None or not tls.peer_verified:
        return "", ""
    return tls.peer_subject or "", tls.peer_issuer or ""


class ClientCheck:
    """CONNECT, HELO, MAIL: smar's ``SmarClientCheckRequest``.

    At connect it asks for the client's forward-confirmed name (``peername_lookup``: for
    Received: and the log) and sets ``context.client_name``; with ``delay_checks = no`` smar also
    decides the stage there (the access map's client, HELO and sender entries, the DNS lists).
    smar unreachable: the name stays unknown; a stage smar must decide is a TempFail (4.4.3).
    """

    bounded = True  # smar's call has its own deadline (POLICY_TIMEOUT_S)

    def __init__(self, resources: CheckResources, stage: Literal["connect", "helo", "mail"]) -> None:
        self._resources = resources
        self._stage: Literal["connect", "helo", "mail"] = stage

    @property
    def may_follow_greeting(self) -> bool:
        """At connect with ``delay_checks = yes`` smar only names the client: the greeting goes
        out without waiting (a slow resolver never delays it)."""
        return self._stage == "connect" and self._resources.config.smar.delay_checks

    async def __call__(self, context: StageContext) -> Decision:
        res = self._resources
        decides = not res.config.smar.delay_checks
        lookup = self._stage == "connect" and context.service.peername_lookup
        # The access map may exempt the client from the message and recipient limits.
        exemptions = self._stage == "connect" and _has_rate_limits(context.service) and res.config.smar.access
        if not decides and not lookup and not exemptions:
            return CONTINUE
        sender = context.sender
        subject, issuer = verified_certificate(context.tls)
        request = SmarClientCheckRequest(
            stage=self._stage,
            client_address=context.client_address,
            service=context.service.name or "",
            authenticated=context.authenticated,
            helo=context.helo or "",
            sender=None if sender is None else str(sender) if isinstance(sender, Address) else "",
            cert_subject=subject,
            cert_issuer=issuer,
            lookup_name=lookup,
        )
        # Only the name: a slow DNS must not hold the greeting long (the name is then unknown).
        timeout = POLICY_TIMEOUT_S if decides else PEERNAME_TIMEOUT_S
        try:
            answer: SmarClientCheckReply = await res.smar.call(request, timeout=timeout)
        except RpcError as exc:
            log.warning("session %s: smar unavailable at %s: %s", context.session_id, self._stage, exc)
            if decides:
                return TempFail(replies.temp_failure("Policy check unavailable, try again later"))
            return CONTINUE
        if self._stage == "connect":
            if lookup:
                context.client_name = answer.client_name
            context.limits_exempt = context.limits_exempt or answer.limits_exempt
        return smar_decision(answer.action, answer.reply)


def smar_decision(action: str, reply: SmtpReplyValue) -> Decision:
    """smar's verdict on a stage as a decision: ``accept`` goes on, ``discard`` (the access map:
    accept, then drop the message) marks it, anything else refuses with smar's reply."""
    if action == "accept":
        return CONTINUE
    if action == "discard":
        return Discard("discarded by the access map")
    if 400 <= reply.code < 600:
        return Refuse(Reply(reply.code, reply.enhanced or None, (reply.text,)))
    # Not a refusal code: never tell the client more than "try again" for a refusal.
    return Refuse(replies.relayed(reply.code, reply.enhanced or None, reply.text))


def builtin_checks(resources: CheckResources) -> Checks:
    """The checks every smtps session runs, before any added ones (see the module docstring)."""
    return Checks(
        connect=(ClientCheck(resources, "connect"),),
        helo=(ClientCheck(resources, "helo"),),
        mail=(
            RateCheck(resources, "mail"),
            SenderCheck(resources),
            SpaceCheck(resources),
            ClientCheck(resources, "mail"),
        ),
        rcpt=(RateCheck(resources, "rcpt"), RecipientCheck(resources)),
    )


# -- test mode -------------------------------------------------------------------------------------

_SCRIPT_STAGES: dict[Stage, Literal["connect", "helo", "mail", "rcpt", "data"]] = {
    "connect": "connect",
    "helo": "helo",
    "mail": "mail",
    "rcpt": "rcpt",
    "eom": "data",
}


class ScriptCheck:
    """Test mode: the ``in`` rules of the active script (:mod:`meta1py.testmode.scripts`).

    Phases: ``connect`` (``client``), ``helo``, ``mail`` (``from``), ``rcpt`` (``to``, ``from``,
    ``domain``) and ``data``, asked at the end of the message (``to`` matches when any accepted
    recipient matches). A matching rule refuses with its reply; a 4xx at connect is sent as 421
    (:func:`refusal`). The rules file is looked at (one ``stat``) at every stage.
    """

    bounded = True  # no I/O beyond a stat and, when the file changed, a small read

    def __init__(self, source: ScriptSource, stage: Stage) -> None:
        self._source = source
        self._stage = stage
        self._phase = _SCRIPT_STAGES[stage]

    @property
    def may_follow_greeting(self) -> bool:
        """The greeting need not wait for this check unless a rule is about connections."""
        return not any(r.direction == "in" and r.phase == "connect" for r in self._source.current().rules)

    async def __call__(self, context: StageContext) -> Decision:
        book = self._source.current()
        if not book.has("in"):
            return CONTINUE
        sender = context.sender
        from_ = None if sender is None else str(sender) if isinstance(sender, Address) else ""
        client = context.client_address
        if self._phase == "rcpt":
            to = None if context.recipient is None else str(context.recipient)
            rule = book.take("in", "rcpt", to=to, sender=from_, client=client)
        elif self._phase == "data":
            rule = None
            for to in context.recipients or (None,):
                rule = book.take("in", "data", to=to, sender=from_, client=client)
                if rule is not None:
                    break
        else:
            rule = book.take("in", self._phase, sender=from_, client=client)
        if rule is None or rule.reply is None:
            return CONTINUE
        log.info("session %s: test mode: scripted %s reply: %s", context.session_id, self._phase, rule.reply)
        return Refuse(Reply(rule.reply.code, rule.reply.enhanced, (rule.reply.text,)))


def scripted_checks(queue_directory: str | Path) -> Checks:
    """The test mode checks smtps runs after the built-in ones (one rules file for all stages)."""
    from meta1py.testmode.scripts import ScriptSource

    source = ScriptSource(test_directory(queue_directory) / TEST_SCRIPTS_NAME)
    return Checks(
        connect=(ScriptCheck(source, "connect"),),
        helo=(ScriptCheck(source, "helo"),),
        mail=(ScriptCheck(source, "mail"),),
        rcpt=(ScriptCheck(source, "rcpt"),),
        eom=(ScriptCheck(source, "eom"),),
    )
