"""The RPC messages exchanged between meta1py processes.

Every message is a frozen dataclass registered with `@rpc_message`; nested value types use
`@rpc_struct`. To add one:

1. name it ``<Area><Noun><Verb>`` (``SmarResolveRequest``, ``QueueEnvelopeCommit``);
2. write a docstring with ``Sender:`` and ``Receiver:`` lines;
3. for a request, declare its reply in the base class: ``RpcRequest[TheReply]`` (the reply is
   declared first, above the request);
4. give strings and lists explicit caps:
   ``field(metadata=caps(max_len=..., max_items=...))`` (defaults: 64 KiB strings, 10,000 items);
5. run ``python -m meta1py.rpc.doc docs/rpc.md`` to refresh the table in the docs (a test fails
   while it is stale).

Allowed field types: str, int, float, bool, None, ``X | None``, bytes, ``tuple[X, ...]``,
``list[X]``, ``Literal[...]``, and `rpc_struct` dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from meta1py.envelope import BodyType, DeliveryStatus, DsnRet
from meta1py.rpc.schema import RpcMessage, RpcRequest, caps, rpc_message, rpc_struct

#: The most queue ids in one `QueueSelectReply` (and in one `QueueControlRequest.among`):
#: about 300 KB of JSON, well below the 1 MiB frame cap.
QUEUE_SELECT_MAX_IDS: Final = 20_000

# --- RPC layer ----------------------------------------------------------------------------------


@rpc_message
@dataclass(frozen=True, slots=True)
class RpcErrorReply(RpcMessage):
    """The answer to a call whose handler raised `RpcRemoteError` (frame kind ``error``).

    Sender: the worker that received the call.
    Receiver: the caller, which raises `RpcRemoteError(code, message)`.
    """

    code: str = field(metadata=caps(max_len=64))
    message: str = field(metadata=caps(max_len=1024))


@rpc_message
@dataclass(frozen=True, slots=True)
class RpcPingReply(RpcMessage):
    """The answer to `RpcPingRequest`: the peer's event loop is alive.

    Sender: any worker.
    Receiver: any worker or mcp (health check).
    """

    nonce: int
    pid: int
    payload: str = field(metadata=caps(max_len=4096))
    process: str = field(metadata=caps(max_len=64))


@rpc_message
@dataclass(frozen=True, slots=True)
class RpcPingRequest(RpcRequest[RpcPingReply]):
    """Health check: answer at once with the same nonce and payload.

    Sender: any worker or mcp.
    Receiver: any worker.
    """

    nonce: int
    payload: str = field(metadata=caps(max_len=4096))


# --- The mail path ------------------------------------------------------------------------------
# The envelope's words (BODY, RET, ok/temp/perm) come from meta1py.envelope.


@rpc_struct
@dataclass(frozen=True, slots=True)
class SmtpReplyValue(RpcMessage):
    """An SMTP reply carried as data (code, enhanced status code, one line of text).

    Sender: smar, qmgr, smtpc.
    Receiver: smtps, qmgr.
    """

    code: int
    enhanced: str = field(metadata=caps(max_len=16))
    text: str = field(metadata=caps(max_len=1024))


@rpc_message
@dataclass(frozen=True, slots=True)
class SmarRecipientCheckReply(RpcMessage):
    """The verdict on one RCPT TO, with the recipients it expands to (aliases).

    Sender: smar.
    Receiver: smtps (and qmgr, to expand the recipient of a bounce).
    """

    action: Literal["accept", "reject", "tempfail", "discard"]
    reply: SmtpReplyValue
    expanded: tuple[str, ...] = field(metadata=caps(max_items=1000))


@rpc_message
@dataclass(frozen=True, slots=True)
class SmarRecipientCheckRequest(RpcRequest[SmarRecipientCheckReply]):
    """May this client send to this recipient?  The access map, relay policy and local recipient
    existence (``discard``: accept, but the message is dropped).

    Sender: smtps (at RCPT TO), qmgr (expanding bounce recipients).
    Receiver: smar.
    """

    client_address: str = field(metadata=caps(max_len=64))
    service: str = field(metadata=caps(max_len=64))
    authenticated: str | None = field(metadata=caps(max_len=256))
    sender: str = field(metadata=caps(max_len=1024))
    recipient: str = field(metadata=caps(max_len=1024))
    helo: str = field(default="", metadata=caps(max_len=1024))
    #: The subject and issuer of the client's certificate, when it verified ("" otherwise).
    cert_subject: str = field(default="", metadata=caps(max_len=256))
    cert_issuer: str = field(default="", metadata=caps(max_len=256))


@rpc_message
@dataclass(frozen=True, slots=True)
class SmarClientCheckReply(RpcMessage):
    """smar's verdict on a stage before RCPT TO, with the client's name.

    ``client_name`` is the forward-confirmed name ("" when none); ``client_resolve`` that
    lookup's outcome (``ok``, ``no``, ``temp``; "" when it was not made). ``limits_exempt``: the
    access map exempts this client from the inbound rate limits.

    Sender: smar.
    Receiver: smtps.
    """

    action: Literal["accept", "reject", "tempfail", "discard"]
    reply: SmtpReplyValue
    client_name: str = field(default="", metadata=caps(max_len=255))
    client_resolve: str = field(default="", metadata=caps(max_len=8))
    limits_exempt: bool = False


@rpc_message
@dataclass(frozen=True, slots=True)
class SmarClientCheckRequest(RpcRequest[SmarClientCheckReply]):
    """The policy of the stages before RCPT TO: at ``connect`` the client's name (reverse DNS)
    and, with ``delay_checks = no``, the client checks; at ``helo`` and ``mail`` (only with
    ``delay_checks = no``) the HELO name and the sender checks.

    Sender: smtps.
    Receiver: smar.
    """

    stage: Literal["connect", "helo", "mail"]
    client_address: str = field(metadata=caps(max_len=64))
    service: str = field(metadata=caps(max_len=64))
    authenticated: str | None = field(default=None, metadata=caps(max_len=256))
    helo: str = field(default="", metadata=caps(max_len=1024))
    sender: str | None = field(default=None, metadata=caps(max_len=1024))
    cert_subject: str = field(default="", metadata=caps(max_len=256))
    cert_issuer: str = field(default="", metadata=caps(max_len=256))
    lookup_name: bool = True


@rpc_struct
@dataclass(frozen=True, slots=True)
class QueueRecipientValue(RpcMessage):
    """One envelope recipient with its DSN parameters (RFC 3461).

    Sender: smtps.
    Receiver: qmgr.
    """

    address: str = field(metadata=caps(max_len=1024))
    orcpt: str | None = field(metadata=caps(max_len=1024))
    notify: tuple[str, ...] | None = field(metadata=caps(max_items=4))


@rpc_message
@dataclass(frozen=True, slots=True)
class QueueEnvelopeCommitReply(RpcMessage):
    """The envelope is durable (ok) or was refused (reply says why, 4xx).

    Sender: qmgr.
    Receiver: smtps, which only then answers 250 to the client.
    """

    ok: bool
    reply: SmtpReplyValue


@rpc_message
@dataclass(frozen=True, slots=True)
class QueueEnvelopeCommitRequest(RpcRequest[QueueEnvelopeCommitReply]):
    """A message whose content file is complete and fsync'd: make its envelope durable.

    Sender: smtps (end of DATA/BDAT).
    Receiver: qmgr, which answers after the group commit that covers this envelope.
    """

    qid: str = field(metadata=caps(max_len=32))
    sender: str = field(metadata=caps(max_len=1024))
    recipients: tuple[QueueRecipientValue, ...] = field(metadata=caps(max_items=100_000))
    size: int
    envid: str | None = field(metadata=caps(max_len=100))
    ret: DsnRet | None
    body: BodyType
    smtputf8: bool
    client_address: str = field(metadata=caps(max_len=64))
    client_helo: str = field(metadata=caps(max_len=256))
    arrival_time: float


@rpc_struct
@dataclass(frozen=True, slots=True)
class SmarHostValue(RpcMessage):
    """One host to try, in order: name (for TLS and logs), address, port.

    Sender: smar.
    Receiver: qmgr, smtpc.
    """

    name: str = field(metadata=caps(max_len=256))
    address: str = field(metadata=caps(max_len=64))
    port: int


@rpc_struct
@dataclass(frozen=True, slots=True)
class SmarLocalDeliveryValue(RpcMessage):
    """Who runs a command or file delivery (``pipe`` and ``file`` routes): the account smar chose
    (the aliases or include file's owner, ``default_privs`` for root's files, the user of a
    ``.forward``) and where the target came from (checked again against ``allow_mail_to_*``).
    On a ``maildir`` route (source ``home_mailbox``): the local user whose home Maildir the
    message is written to, as that user.

    Sender: smar.
    Receiver: qmgr (which passes it on to smtpc, whose local delivery helper runs as ``uid``).
    """

    user: str = field(metadata=caps(max_len=64))
    uid: int
    gid: int
    home: str = field(metadata=caps(max_len=1024))
    shell: str = field(metadata=caps(max_len=1024))
    source: Literal["alias", "include", "forward", "home_mailbox"]


@rpc_struct
@dataclass(frozen=True, slots=True)
class SmarRouteValue(RpcMessage):
    """Where one recipient goes: a transport and its next hops, or an error.

    ``path`` is the Unix socket (lmtp), the Maildir (maildir), the command (pipe) or the file
    (file); ``local`` says who runs a pipe or file delivery, or whose home Maildir it is.

    Sender: smar.
    Receiver: qmgr (which passes it on to smtpc).
    """

    status: DeliveryStatus
    transport: Literal["smtp", "lmtp", "maildir", "pipe", "file", "error"]
    destination: str = field(metadata=caps(max_len=512))
    hosts: tuple[SmarHostValue, ...] = field(metadata=caps(max_items=64))
    path: str | None = field(metadata=caps(max_len=4096))
    reply: SmtpReplyValue | None
    local: SmarLocalDeliveryValue | None = None


@rpc_message
@dataclass(frozen=True, slots=True)
class SmarRouteReply(RpcMessage):
    """One route per address asked, in the same order.

    Sender: smar.
    Receiver: qmgr.
    """

    routes: tuple[SmarRouteValue, ...] = field(metadata=caps(max_items=100_000))


@rpc_message
@dataclass(frozen=True, slots=True)
class SmarRouteRequest(RpcRequest[SmarRouteReply]):
    """Where do these recipients go?  (routes map, relayhost, MX, local Maildir.)

    Sender: qmgr.
    Receiver: smar.
    """

    addresses: tuple[str, ...] = field(metadata=caps(max_items=100_000))


@rpc_struct
@dataclass(frozen=True, slots=True)
class SmtpcRecipientValue(RpcMessage):
    """A recipient to deliver (idx is its index in the envelope).

    Sender: qmgr.
    Receiver: smtpc.
    """

    idx: int
    address: str = field(metadata=caps(max_len=1024))
    orcpt: str | None = field(metadata=caps(max_len=1024))
    notify: tuple[str, ...] | None = field(metadata=caps(max_items=4))


@rpc_struct
@dataclass(frozen=True, slots=True)
class SmtpcRecipientResult(RpcMessage):
    """What happened to one recipient: delivered (ok), temporary or permanent failure.

    Sender: smtpc.
    Receiver: qmgr.
    """

    idx: int
    status: DeliveryStatus
    reply: SmtpReplyValue
    remote_mta: str | None = field(metadata=caps(max_len=256))


@rpc_message
@dataclass(frozen=True, slots=True)
class SmtpcDeliveryReply(RpcMessage):
    """Per-recipient results of one delivery; session_failed when no host could be used at all.

    Sender: smtpc.
    Receiver: qmgr.
    """

    results: tuple[SmtpcRecipientResult, ...] = field(metadata=caps(max_items=100_000))
    session_failed: bool


@rpc_message
@dataclass(frozen=True, slots=True)
class SmtpcDeliveryRequest(RpcRequest[SmtpcDeliveryReply]):
    """Deliver the content of queue id ``qid`` to these recipients over this route.

    Sender: qmgr.
    Receiver: smtpc.
    """

    qid: str = field(metadata=caps(max_len=32))
    sender: str = field(metadata=caps(max_len=1024))
    envid: str | None = field(metadata=caps(max_len=100))
    ret: DsnRet | None
    body: BodyType
    smtputf8: bool
    size: int
    recipients: tuple[SmtpcRecipientValue, ...] = field(metadata=caps(max_items=100_000))
    route: SmarRouteValue


@rpc_message
@dataclass(frozen=True, slots=True)
class QueueControlReply(RpcMessage):
    """How many messages an operator command touched, and which ids were not found.

    Sender: qmgr.
    Receiver: meta1 queue (the CLI).
    """

    count: int
    missing: tuple[str, ...] = field(metadata=caps(max_items=100_000))


@rpc_message
@dataclass(frozen=True, slots=True)
class QueueControlRequest(RpcRequest[QueueControlReply]):
    """An operator command: flush, delete, bounce, hold, release or requeue messages.

    The messages are ``qids`` (each one not queued is in the reply's ``missing``), or else every
    message that matches ``to_domain`` and ``all_deferred`` (none given: every message); with
    ``among``, only those of ``among`` that still match when the request arrives, the others
    skipped silently. ``meta1 queue`` sends a large selection in batches that way: it asks
    `QueueSelectRequest` for the ids first, so that each batch does what one request for the
    whole selection would have done, and it can show its progress.

    Sender: meta1 queue (the CLI, run as root or the queue owner).
    Receiver: qmgr.
    """

    action: Literal["flush", "delete", "bounce", "hold", "release", "requeue"]
    qids: tuple[str, ...] = field(metadata=caps(max_items=100_000))
    to_domain: str | None = field(metadata=caps(max_len=256))
    all_deferred: bool
    among: tuple[str, ...] = field(default=(), metadata=caps(max_len=64, max_items=QUEUE_SELECT_MAX_IDS))


@rpc_message
@dataclass(frozen=True, slots=True)
class QueueSelectReply(RpcMessage):
    """One page of the queue ids a selection matches, in id order; ``more`` when others follow.

    Sender: qmgr.
    Receiver: meta1 queue (the CLI).
    """

    qids: tuple[str, ...] = field(metadata=caps(max_len=64, max_items=QUEUE_SELECT_MAX_IDS))
    more: bool


@rpc_message
@dataclass(frozen=True, slots=True)
class QueueSelectRequest(RpcRequest[QueueSelectReply]):
    """Which messages an operator command without queue ids would touch: those that match
    ``to_domain`` and ``all_deferred`` as `QueueControlRequest` matches them (none given: every
    message), at most ``limit`` (capped at `QUEUE_SELECT_MAX_IDS`) of those whose ids sort after
    ``after`` ("" from the first). The CLI pages through a large queue with ``after`` set to
    the last id of the previous page.

    Sender: meta1 queue (the CLI, run as root or the queue owner).
    Receiver: qmgr.
    """

    to_domain: str | None = field(metadata=caps(max_len=256))
    all_deferred: bool
    after: str = field(metadata=caps(max_len=64))
    limit: int


# --- Status and metrics (docs/internals.md, "Metrics and status") -------------------------------


@rpc_struct
@dataclass(frozen=True, slots=True)
class CounterValue(RpcMessage):
    """One counter of a process: a metric of meta1py.metrics.CATALOGUE, its label values in the
    metric's label order, and the count since the process started.

    Sender: smtps, smar, smtpc (their own counters); qmgr (the sums).
    Receiver: qmgr; meta1 status and meta1 monitor.
    """

    name: str = field(metadata=caps(max_len=128))
    labels: tuple[str, ...] = field(metadata=caps(max_len=256, max_items=4))
    value: int


@rpc_struct
@dataclass(frozen=True, slots=True)
class ErrorRecordValue(RpcMessage):
    """One recent log record of level error or critical, as ``meta1 status`` lists it.

    Sender: every worker (its own recent errors; meta1py.status).
    Receiver: qmgr; meta1 status.
    """

    time: float
    process: str = field(metadata=caps(max_len=16))
    pid: int
    level: str = field(metadata=caps(max_len=16))
    message: str = field(metadata=caps(max_len=1024))


@rpc_struct
@dataclass(frozen=True, slots=True)
class WorkerStatsValue(RpcMessage):
    """What one process reports about itself: who it is, its counters, its recent errors.

    Sender: smtps, smar, smtpc, qmgr.
    Receiver: qmgr; meta1 status.
    """

    process: str = field(metadata=caps(max_len=16))
    pid: int
    started: float
    counters: tuple[CounterValue, ...] = field(metadata=caps(max_items=10_000))
    errors: tuple[ErrorRecordValue, ...] = field(metadata=caps(max_items=100))


@rpc_message
@dataclass(frozen=True, slots=True)
class WorkerStatsReply(RpcMessage):
    """A worker's counters and recent errors.

    Sender: smar, smtpc.
    Receiver: qmgr.
    """

    stats: WorkerStatsValue


@rpc_message
@dataclass(frozen=True, slots=True)
class WorkerStatsRequest(RpcRequest[WorkerStatsReply]):
    """Send me your counters and recent errors (qmgr asks when it is scraped or asked for status).

    Sender: qmgr.
    Receiver: smar, smtpc.
    """


@rpc_message
@dataclass(frozen=True, slots=True)
class QueueStatsReport(RpcMessage):
    """smtps's counters and recent errors, sent about once a second while they change (a
    notification: smtps serves no socket qmgr could ask).

    Sender: smtps.
    Receiver: qmgr.
    """

    stats: WorkerStatsValue


@rpc_struct
@dataclass(frozen=True, slots=True)
class QueueStateValue(RpcMessage):
    """How many messages are in one state of the queue, and their recipients still to deliver.

    Sender: qmgr.
    Receiver: meta1 status, meta1 monitor.
    """

    state: Literal["active", "deferred", "hold"]
    messages: int
    recipients: int


@rpc_message
@dataclass(frozen=True, slots=True)
class QueueStatusReply(RpcMessage):
    """The number of queued messages and, when asked, the queue by state (both empty when qmgr
    cannot open its store), every counter summed over the processes, and each process's report
    (recent errors; counters left out) when asked.

    Sender: qmgr.
    Receiver: meta1 status, meta1 monitor.
    """

    queue_open: bool
    messages: int
    queue: tuple[QueueStateValue, ...] = field(metadata=caps(max_items=8))
    counters: tuple[CounterValue, ...] = field(metadata=caps(max_items=10_000))
    processes: tuple[WorkerStatsValue, ...] = field(metadata=caps(max_items=64))


@rpc_message
@dataclass(frozen=True, slots=True)
class QueueStatusRequest(RpcRequest[QueueStatusReply]):
    """How is the MTA doing?  ``errors``: include each process's recent errors; ``by_state``:
    count the queue by state (a pass over every queued recipient; ``meta1 monitor``, which asks
    every second, only takes the number of messages).

    Sender: meta1 status, meta1 monitor (the CLI, run as root or a member of the queue's group).
    Receiver: qmgr.
    """

    errors: bool = True
    by_state: bool = True


# --- Test mode (docs/testmode.md) ----------------------------------------------------------------


@rpc_message
@dataclass(frozen=True, slots=True)
class SmarClockReply(RpcMessage):
    """smar's virtual clock offset, as it now is.

    Sender: smar.
    Receiver: qmgr.
    """

    offset: float


@rpc_message
@dataclass(frozen=True, slots=True)
class SmarClockRequest(RpcRequest[SmarClockReply]):
    """Test mode: move smar's clock (greylisting) to ``offset`` seconds ahead of the real one, as
    qmgr's own (``POST /clock/advance``, ``POST /reset``).

    Sender: qmgr (test mode only).
    Receiver: smar.
    """

    offset: float
