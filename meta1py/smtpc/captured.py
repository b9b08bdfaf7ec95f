"""Test mode's captured destinations: the SMTP/LMTP server smtpc delivers to instead of the network.

In test mode (``test_mode { enable = yes; }``, docs/testmode.md) smtpc opens no connection for an
SMTP or LMTP delivery: :class:`DeliveryAgents <meta1py.smtpc.delivery.DeliveryAgents>` gets a
:class:`CapturedStream` instead, whatever host smar named. The stream is an in-memory
``trio.abc.Stream`` with the sans-IO server core (:class:`meta1py.smtp.server.ServerConnection`)
behind it: what smtpc's client writes is fed to the core, the core's events are answered, and the
replies are what smtpc's client reads. So smtpc's own client code runs unchanged (EHLO,
PIPELINING, DATA, per-recipient replies; LMTP's reply per recipient after the data) and the results
it reports to qmgr are the real ones.

The server answers as a friendly MX would (220, 250, 354, 250), offers PIPELINING, SIZE, 8BITMIME,
SMTPUTF8, DSN and ENHANCEDSTATUSCODES, and no STARTTLS (smtpc does not try TLS in test mode). The
``out`` rules of the active script (:mod:`meta1py.testmode.scripts`) replace its answer at each
phase: ``connect`` (the greeting), ``helo``, ``mail``, ``rcpt`` (per recipient: ``to``,
``domain``), ``data`` (the reply after the final dot; ``to`` matches when any accepted recipient
matches; per recipient in LMTP). ``domain`` before RCPT is the domain of the job's first recipient.
A rule's ``hang`` holds that reply back for that many seconds (smtpc's ``io_timeout`` may run out
first: a 421 deferral, as with a real server that hangs); a ``hang`` without ``reply`` closes the
connection after the wait, with no reply.

Why a stream object and not a server task on a memory stream pair: the core is synchronous, so
answering inside ``send_all`` and handing the replies out in ``receive_some`` needs no task, no
nursery and no buffering between two tasks; the only waits are the scripted hangs.

When the message is accepted, the capture is written (:class:`meta1py.testmode.capture.CaptureStore`,
in a thread) before the reply goes out: the message exactly as smtpc sent it, dot-unstuffed, and
a record with the envelope, the result of every recipient and the transcript (each line with ``S``
or ``C``; the content itself is one ``C`` line ``[message: N octets]``). ``kind`` is ``bounce``
for a null-sender RFC 3464 report whose Action is ``failed``, ``delay`` when it is ``delayed``,
else ``message``.
"""

from __future__ import annotations

import email
import email.message
import logging
from dataclasses import dataclass, field
from pathlib import Path

import trio

from meta1py.contract import TEST_SCRIPTS_NAME, test_directory
from meta1py.smtp import events as ev
from meta1py.smtp import replies
from meta1py.smtp.address import Address
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.replies import Reply
from meta1py.smtp.server import ServerConnection
from meta1py.testmode.capture import MESSAGES_DIRNAME, CaptureRecord, CaptureStore, Kind
from meta1py.testmode.scripts import Phase, Rule, ScriptSource

log = logging.getLogger(__name__)

_MAX_TRANSCRIPT_LINES = 2000
_MAX_LINE_CHARS = 1000
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CAPTURED = replies.ok("Ok: captured")


@dataclass(frozen=True)
class CapturedJob:
    """What the captured destination knows of the delivery it stands in for.

    Attributes:
        qid: the queue id.
        destination: where smar routed it (``SmarRouteValue.destination``).
        transport: ``smtp`` or ``lmtp``.
        domain: the domain delivered to (the first recipient's), for rules before RCPT.
    """

    qid: str
    destination: str
    transport: str
    domain: str


def message_kind(sender: str, message: bytes) -> Kind:
    """``bounce``, ``delay`` or ``message`` (see the module docstring)."""
    if sender:
        return "message"
    parsed = email.message_from_bytes(message)
    if parsed.get_content_type() != "multipart/report":
        return "message"
    if str(parsed.get_param("report-type", "")).lower() != "delivery-status":
        return "message"
    actions: set[str] = set()
    for part in parsed.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else []
        for block in blocks:
            if isinstance(block, email.message.Message):
                actions.update(str(a).strip().lower() for a in block.get_all("Action", []))
    if "failed" in actions:
        return "bounce"
    if "delayed" in actions:
        return "delay"
    return "message"


@dataclass
class _Out:
    """A reply waiting to be read: its bytes after ``hang_s`` seconds (None: close instead)."""

    data: bytes | None
    hang_s: float = 0.0


@dataclass
class _Transaction:
    sender: str
    recipients: list[str] = field(default_factory=list)
    #: Every RCPT with the reply it got: (address, reply).
    answered: list[tuple[str, Reply]] = field(default_factory=list)
    content: bytearray = field(default_factory=bytearray)
    in_data: bool = False


class CapturedDestinations:
    """The captured destinations of one smtpc: the active scripts and the capture store.

    Args:
        queue_directory: the queue directory (the files are in its ``test`` directory).
        hostname: the name the captured servers greet with when no rule names one.
    """

    def __init__(self, queue_directory: str | Path, hostname: str) -> None:
        test = test_directory(queue_directory)
        self.scripts = ScriptSource(test / TEST_SCRIPTS_NAME)
        self.store = CaptureStore(test / MESSAGES_DIRNAME)
        self.hostname = hostname

    def open(self, job: CapturedJob, *, lmtp: bool) -> CapturedStream:
        """A new session with a captured destination, its greeting ready to read."""
        return CapturedStream(self, job, lmtp=lmtp)


class CapturedStream(trio.abc.Stream):
    """One session with a captured destination (see the module docstring)."""

    def __init__(self, owner: CapturedDestinations, job: CapturedJob, *, lmtp: bool) -> None:
        self._owner = owner
        self.job = job
        self.lmtp = lmtp
        self.conn = ServerConnection(
            f"{job.domain or owner.hostname}",
            extensions=Extensions(
                pipelining=True,
                size=_MAX_MESSAGE_BYTES,
                eightbitmime=True,
                smtputf8=True,
                dsn=True,
                enhancedstatuscodes=True,
            ),
            max_message_bytes=_MAX_MESSAGE_BYTES,
            lmtp=lmtp,
        )
        #: The session as seen on the wire: ("S", line) from the server, ("C", line) from smtpc.
        self.transcript: list[tuple[str, str]] = []
        #: Ids of the captures this session wrote.
        self.captures: list[str] = []
        self._out: list[_Out] = []
        self._partial = b""
        self._txn: _Transaction | None = None
        self._closed = False
        self._eof_sent = False
        greeting = replies.greeting(self.conn.hostname, "ESMTP captured by meta1py test mode")
        self._answer("connect", greeting, domain=job.domain)

    # -- trio.abc.Stream ---------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the captured session is closed")
        if self._eof_sent:
            raise trio.BrokenResourceError("the captured destination closed the connection")
        await trio.lowlevel.checkpoint()
        data = bytes(data)
        if self._txn is None or not self._txn.in_data:
            self._note_client_lines(data)
        self.conn.receive_data(data)
        await self._process()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the captured session is closed")
        if self._eof_sent:
            await trio.lowlevel.checkpoint()
            return b""
        if not self._out:
            # smtpc reads only when it owes itself a reply; nothing owed means the server is
            # waiting for more input, which a real connection would answer with a timeout.
            await trio.sleep_forever()
        item = self._out[0]
        if item.hang_s:
            await trio.sleep(item.hang_s)
            item.hang_s = 0.0
        if item.data is None:
            self._out.clear()
            self._eof_sent = True
            return b""
        size = len(item.data) if max_bytes is None else max_bytes
        chunk, rest = item.data[:size], item.data[size:]
        if rest:
            item.data = rest
        else:
            self._out.pop(0)
        return chunk

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()

    # -- the server ----------------------------------------------------------------------------

    def _note_client_lines(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\r\n")
        self._partial = lines.pop()
        for line in lines:
            self._note("C", line.decode("utf-8", "replace"))

    def _note(self, who: str, line: str) -> None:
        if len(self.transcript) < _MAX_TRANSCRIPT_LINES:
            self.transcript.append((who, line[:_MAX_LINE_CHARS]))

    def _send(self, reply: Reply, hang_s: float = 0.0) -> None:
        data = self.conn.send(reply)
        for line in data.decode("utf-8", "replace").split("\r\n")[:-1]:
            self._note("S", line)
        self._out.append(_Out(data, hang_s))

    def _answer(
        self,
        phase: Phase,
        default: Reply,
        *,
        to: str | None = None,
        sender: str | None = None,
        domain: str | None = None,
    ) -> Reply | None:
        """Send the reply for ``phase``: the script's, else ``default``; None if the rule hangs up."""
        book = self._owner.scripts.current()
        rule: Rule | None = None
        if book.has("out"):
            rule = book.take("out", phase, to=to, sender=sender, domain=domain)
        if rule is None:
            self._send(default)
            return default
        log.info(
            "%s: captured %s: scripted %s reply: %s%s",
            self.job.qid,
            self.job.destination,
            phase,
            rule.reply if rule.reply is not None else "(none: the connection is closed)",
            f" after {rule.hang:g}s" if rule.hang else "",
        )
        if rule.reply is None:
            self._out.append(_Out(None, rule.hang))
            self._hang_up()
            return None
        reply = Reply(rule.reply.code, rule.reply.enhanced, (rule.reply.text,))
        if phase == "connect" and reply.code != 220 and reply.code < 500:
            reply = Reply(421, reply.enhanced, reply.lines)  # RFC 5321 §3.1: 220, 554 or 421
        self._send(reply, rule.hang)
        return reply

    def _hang_up(self) -> None:
        self._note("S", "(connection closed without a reply)")
        self._txn = None
        # Whatever comes next is never read: the core is told the peer is gone.
        self.conn.receive_data(b"")

    async def _process(self) -> None:
        while not self._eof_pending():
            event = self.conn.next_event()
            if isinstance(event, ev.NeedData) or isinstance(event, ev.ConnectionClosed):
                return
            await self._handle(event)

    def _eof_pending(self) -> bool:
        return bool(self._out) and self._out[-1].data is None

    async def _handle(self, event: ev.Event) -> None:
        txn = self._txn
        domain = self.job.domain
        if isinstance(event, ev.Ehlo | ev.Lhlo):
            self._answer("helo", self.conn.ehlo_reply(), domain=domain)
        elif isinstance(event, ev.Helo):
            self._answer("helo", replies.helo(self.conn.hostname), domain=domain)
        elif isinstance(event, ev.MailFrom):
            sender = str(event.address) if isinstance(event.address, Address) else ""
            reply = self._answer("mail", replies.sender_ok(), sender=sender, domain=domain)
            self._txn = _Transaction(sender) if reply is not None and reply.code < 300 else None
        elif isinstance(event, ev.RcptTo):
            to = str(event.address)
            reply = self._answer(
                "rcpt", replies.recipient_ok(), to=to, sender=txn.sender if txn is not None else None
            )
            if txn is not None and reply is not None:
                txn.answered.append((to, reply))
                if reply.code < 300:
                    txn.recipients.append(to)
        elif isinstance(event, ev.DataStart):
            self._send(replies.data_start())
            if txn is not None and self.conn.state == "DATA":
                txn.in_data = True
        elif isinstance(event, ev.DataChunk):
            if txn is not None:
                txn.content += event.data
        elif isinstance(event, ev.EndOfData):
            await self._end_of_data(event)
        elif isinstance(event, ev.Rset):
            self._txn = None
            self._send(replies.ok())
        elif isinstance(event, ev.Noop):
            self._send(replies.ok())
        elif isinstance(event, ev.Quit):
            self._send(replies.closing(self.conn.hostname))
        elif isinstance(event, ev.InvalidCommand):
            self._send(event.reply)
        elif isinstance(event, ev.Vrfy):
            self._send(replies.cannot_vrfy())
        elif isinstance(event, ev.Expn):
            self._send(replies.expn_disabled())
        elif isinstance(event, ev.Help):
            self._send(replies.help_text())
        else:  # StartTls, Auth, Bdat: never offered, so the core does not let them through
            self._send(replies.not_implemented())

    async def _end_of_data(self, event: ev.EndOfData) -> None:
        txn = self._txn
        self._txn = None
        if txn is None:  # cannot happen: the core only gets here after a 354
            self._send(replies.local_error())
            return
        txn.in_data = False
        self._note("C", f"[message: {len(txn.content)} octets]")
        self._note("C", ".")
        if event.error is not None:
            for _ in range(len(txn.recipients) if self.lmtp else 1):
                self._send(event.error)
            return
        book = self._owner.scripts.current()
        # One (rule, recipients) per reply owed: SMTP one for the message, LMTP one per recipient.
        groups = [[r] for r in txn.recipients] if self.lmtp else [txn.recipients]
        decided: list[tuple[Rule | None, list[str]]] = []
        for group in groups:
            rule: Rule | None = None
            if book.has("out"):
                for to in group:
                    rule = book.take("out", "data", to=to, sender=txn.sender)
                    if rule is not None:
                        break
            decided.append((rule, group))
        # The replies go into the transcript before the capture is written (smtpc reads them
        # only when send_all returns, after the capture is on disk).
        accepted = [to for rule, group in decided for to in group if rule is None or _accepts(rule)]
        for rule, _group in decided:
            if rule is None:
                self._send(_CAPTURED)
                continue
            log.info(
                "%s: captured %s: scripted data reply: %s", self.job.qid, self.job.destination, rule.reply
            )
            if rule.reply is None:
                self._out.append(_Out(None, rule.hang))
                self._hang_up()
                break
            self._send(Reply(rule.reply.code, rule.reply.enhanced, (rule.reply.text,)), rule.hang)
        if accepted:
            await self._capture(txn, decided, bytes(txn.content))

    async def _capture(
        self, txn: _Transaction, decided: list[tuple[Rule | None, list[str]]], message: bytes
    ) -> None:
        recipients: list[dict[str, str]] = []
        for to, reply in txn.answered:
            if reply.code >= 300:
                status = "bounced" if reply.code >= 500 else "deferred"
                recipients.append({"address": to, "status": status, "reply": str(reply)})
        delivered: list[str] = []
        for rule, group in decided:
            for to in group:
                if rule is None:
                    recipients.append({"address": to, "status": "delivered", "reply": str(_CAPTURED)})
                    delivered.append(to)
                elif rule.reply is not None:
                    code = rule.reply.code
                    status = "delivered" if code < 400 else "deferred" if code < 500 else "bounced"
                    recipients.append({"address": to, "status": status, "reply": str(rule.reply)})
                    if code < 400:
                        delivered.append(to)
        transcript = list(self.transcript)
        record = CaptureRecord(
            qid=self.job.qid,
            mail_from=txn.sender,
            rcpt_to=delivered,
            destination=self.job.destination,
            transport=self.job.transport,
            kind=message_kind(txn.sender, message),
            recipients=recipients,
            transcript=transcript,
        )
        capture_id = await trio.to_thread.run_sync(self._owner.store.add, record, message)
        self.captures.append(capture_id)
        log.info(
            "%s: captured as %s (%s, to %s, %d octets)",
            self.job.qid,
            capture_id,
            record.kind,
            ", ".join(delivered),
            len(message),
        )


def _accepts(rule: Rule) -> bool:
    return rule.reply is not None and rule.reply.code < 400
