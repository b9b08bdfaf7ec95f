"""Events: what the peer did, as values.

:class:`~meta1py.smtp.server.ServerConnection.next_event` returns the command
events below (and the data events); each command event owes exactly one reply
(sent with ``send``), except:

* :class:`DataChunk` and :class:`Bdat` owe nothing (the reply to a BDAT is owed
  by its :class:`BdatChunkEnd`);
* :class:`EndOfData` and a last :class:`BdatChunkEnd` owe one reply per accepted
  recipient in LMTP mode (RFC 2033 §4.2);
* :class:`Auth` and :class:`AuthResponse` may be answered with a 334 challenge,
  after which the next event is an :class:`AuthResponse`.

:class:`~meta1py.smtp.client.ClientConnection.next_event` returns
:class:`ReplyReceived` events.

Events are values: frozen slotted dataclasses (style guide §2), compared by
value. Those with fields get a faster ``__init__`` from
:func:`meta1py.smtp._frozen.fast_init` (same objects, stored through the
slots; the server builds about fifteen per mail transaction). The server may
hand out the same event object more than once (events without fields, and
MAIL/RCPT/... events answered from its parse cache): never rely on identity.
"""

from __future__ import annotations

from dataclasses import dataclass

from meta1py.envelope import BodyType, DsnRet
from meta1py.smtp._frozen import fast_init
from meta1py.smtp.address import Address, NullPath
from meta1py.smtp.replies import Reply

__all__ = [
    "NEED_DATA",
    "Auth",
    "AuthResponse",
    "Bdat",
    "BdatChunkEnd",
    "ConnectionClosed",
    "DataChunk",
    "DataStart",
    "Ehlo",
    "EndOfData",
    "Event",
    "Expn",
    "Helo",
    "Help",
    "InvalidCommand",
    "Lhlo",
    "MailFrom",
    "MailParams",
    "NeedData",
    "Noop",
    "Quit",
    "RcptParams",
    "RcptTo",
    "ReplyReceived",
    "Rset",
    "StartTls",
    "Vrfy",
]


class NeedData:
    """Sentinel class: the core needs more input (flush replies, then read)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@fast_init
@dataclass(frozen=True, slots=True)
class Ehlo:
    """EHLO domain (RFC 5321 §4.1.1.1). ``domain`` is the argument as sent."""

    domain: str


@fast_init
@dataclass(frozen=True, slots=True)
class Helo:
    """HELO domain."""

    domain: str


@fast_init
@dataclass(frozen=True, slots=True)
class Lhlo:
    """LHLO domain (LMTP, RFC 2033 §4.1)."""

    domain: str


@fast_init
@dataclass(frozen=True, slots=True)
class MailParams:
    """ESMTP parameters of MAIL FROM, parsed and checked against what was advertised.

    Attributes:
        size: Declared SIZE (RFC 1870), or None.
        body: BODY= (RFC 6152 / RFC 3030); "7BIT" when absent.
        smtputf8: SMTPUTF8 given (RFC 6531).
        ret: DSN RET= (RFC 3461): "FULL", "HDRS" or None.
        envid: DSN ENVID=, xtext-decoded, or None.
        auth: AUTH= (RFC 4954 §5), xtext-decoded ("<>" allowed), or None.
    """

    size: int | None = None
    body: BodyType = "7BIT"
    smtputf8: bool = False
    ret: DsnRet | None = None
    envid: str | None = None
    auth: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM:<reverse-path> [params]."""

    address: Address | NullPath
    params: MailParams


@fast_init
@dataclass(frozen=True, slots=True)
class RcptParams:
    """ESMTP parameters of RCPT TO (DSN, RFC 3461 §4).

    Attributes:
        notify: NOTIFY= as a set of "SUCCESS"/"FAILURE"/"DELAY", or {"NEVER"};
            None when absent.
        orcpt: ORCPT= as (address type, xtext-decoded address), e.g.
            ("rfc822", "user@example.org"); None when absent.
    """

    notify: frozenset[str] | None = None
    orcpt: tuple[str, str] | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO:<forward-path> [params]."""

    address: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class DataStart:
    """DATA: answer 354 (data_start) to receive the content, or refuse."""


@fast_init
@dataclass(frozen=True, slots=True)
class DataChunk:
    """A piece of message content (DATA: dot-unstuffed; BDAT: as sent).

    Chunks are bounded by what was received: the core never buffers the
    whole message.
    """

    data: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class EndOfData:
    """The ``<CRLF>.<CRLF>`` ending DATA was received.

    Attributes:
        error: None if the content is acceptable; otherwise the reply to send
            (bare CR/LF/NUL, line or message too long). The content already
            streamed as DataChunk events must then be discarded. After the
            error was found no further DataChunk events are produced.
    """

    error: Reply | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Bdat:
    """BDAT size [LAST] (RFC 3030): ``size`` octets of content follow as DataChunk events."""

    size: int
    last: bool


@fast_init
@dataclass(frozen=True, slots=True)
class BdatChunkEnd:
    """All octets of the BDAT chunk were received: reply now.

    Attributes:
        last: This chunk ended the message (BDAT ... LAST).
        error: As in :class:`EndOfData`; the transaction is over when sent.
    """

    last: bool
    error: Reply | None = None


@dataclass(frozen=True, slots=True)
class Rset:
    """RSET."""


@dataclass(frozen=True, slots=True)
class Noop:
    """NOOP."""


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT: answer 221 (closing), then close."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS: answer 220 (start_tls), then handshake and call ``starttls_done()``."""


@fast_init
@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH mechanism [initial-response] (RFC 4954). Never log ``initial_response``."""

    mechanism: str
    initial_response: str | None

    def __repr__(self) -> str:
        hidden = None if self.initial_response is None else "<hidden>"
        return f"Auth(mechanism={self.mechanism!r}, initial_response={hidden})"


@fast_init
@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A SASL continuation line after a 334 challenge; ``*`` means cancel."""

    line: str

    def __repr__(self) -> str:
        return "AuthResponse(<hidden>)"


@fast_init
@dataclass(frozen=True, slots=True)
class Vrfy:
    """VRFY string."""

    argument: str


@fast_init
@dataclass(frozen=True, slots=True)
class Expn:
    """EXPN string."""

    argument: str


@fast_init
@dataclass(frozen=True, slots=True)
class Help:
    """HELP [topic]."""

    argument: str


@fast_init
@dataclass(frozen=True, slots=True)
class InvalidCommand:
    """Anything the core refuses itself; the adapter just sends ``reply``.

    Attributes:
        reply: The reply to send (a 421 here means: send it and close).
        reason: A short description for the log.
        line: The offending command, truncated (may hold peer bytes: repr it).
    """

    reply: Reply
    reason: str
    line: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection, or the session ended (221/421 sent)."""


@fast_init
@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """Client side: a reply from the server, with the command it answers.

    Attributes:
        command: "GREETING", "EHLO", "LHLO", "HELO", "MAIL", "RCPT", "DATA"
            (the 354), "DATA_END" (end of data), "BDAT", "RSET", "NOOP",
            "QUIT", "STARTTLS", "AUTH" or "UNSOLICITED" (a 421 not matched
            to a command).
        reply: The parsed reply.
        recipient: For "RCPT": the index of the recipient in the transaction;
            for LMTP "DATA_END"/"BDAT": the index of the accepted recipient
            this reply is for. Otherwise None.
    """

    command: str
    reply: Reply
    recipient: int | None = None


Event = (
    Ehlo
    | Helo
    | Lhlo
    | MailFrom
    | RcptTo
    | DataStart
    | DataChunk
    | EndOfData
    | Bdat
    | BdatChunkEnd
    | Rset
    | Noop
    | Quit
    | StartTls
    | Auth
    | AuthResponse
    | Vrfy
    | Expn
    | Help
    | InvalidCommand
    | ConnectionClosed
)
