"""meta1py.smtp: the sans-IO SMTP/LMTP protocol core shared by smtps and smtpc.

No I/O, no trio, no sockets: bytes in, events out; replies in, bytes out
(in the manner of h11). Modules:

* :mod:`~meta1py.smtp.server` -- :class:`ServerConnection` (smtps)
* :mod:`~meta1py.smtp.client` -- :class:`ClientConnection` (smtpc)
* :mod:`~meta1py.smtp.events` -- event values and the NEED_DATA sentinel
* :mod:`~meta1py.smtp.replies` -- :class:`Reply` and every reply we send
* :mod:`~meta1py.smtp.status` -- named enhanced status codes of the delivery side
* :mod:`~meta1py.smtp.address` -- RFC 5321 path parsing
* :mod:`~meta1py.smtp.extensions` -- ESMTP extension sets
* :mod:`~meta1py.smtp.dotstuff` -- content framing and anti-smuggling rules
* :mod:`~meta1py.smtp.state` -- the server state table
"""

from typing import TYPE_CHECKING

from meta1py.lazyexports import lazy_exports

if TYPE_CHECKING:
    from meta1py.smtp.address import NULL_PATH, Address, NullPath, parse_path
    from meta1py.smtp.client import ClientConnection
    from meta1py.smtp.errors import SmtpProtocolError, SmtpUsageError
    from meta1py.smtp.events import NEED_DATA, MailParams, NeedData, RcptParams
    from meta1py.smtp.extensions import Extensions
    from meta1py.smtp.replies import Reply, ReplyParser, parse_reply
    from meta1py.smtp.server import ServerConnection
    from meta1py.smtp.state import State

# The package names load their module on first use (PEP 562): smtps never needs the client, nor
# smtpc the server (each costs a worker's start-up about 15 ms).
_LAZY = {
    "Address": "meta1py.smtp.address",
    "ClientConnection": "meta1py.smtp.client",
    "Extensions": "meta1py.smtp.extensions",
    "MailParams": "meta1py.smtp.events",
    "NEED_DATA": "meta1py.smtp.events",
    "NULL_PATH": "meta1py.smtp.address",
    "NeedData": "meta1py.smtp.events",
    "NullPath": "meta1py.smtp.address",
    "RcptParams": "meta1py.smtp.events",
    "Reply": "meta1py.smtp.replies",
    "ReplyParser": "meta1py.smtp.replies",
    "ServerConnection": "meta1py.smtp.server",
    "SmtpProtocolError": "meta1py.smtp.errors",
    "SmtpUsageError": "meta1py.smtp.errors",
    "State": "meta1py.smtp.state",
    "parse_path": "meta1py.smtp.address",
    "parse_reply": "meta1py.smtp.replies",
}


__getattr__ = lazy_exports("meta1py.smtp", _LAZY, globals())


__all__ = [
    "NEED_DATA",
    "NULL_PATH",
    "Address",
    "ClientConnection",
    "Extensions",
    "MailParams",
    "NeedData",
    "NullPath",
    "RcptParams",
    "Reply",
    "ReplyParser",
    "ServerConnection",
    "SmtpProtocolError",
    "SmtpUsageError",
    "State",
    "parse_path",
    "parse_reply",
]
