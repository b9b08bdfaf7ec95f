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

from meta1py.smtp.address import NULL_PATH, Address, NullPath, parse_path
from meta1py.smtp.client import ClientConnection
from meta1py.smtp.errors import SmtpProtocolError, SmtpUsageError
from meta1py.smtp.events import NEED_DATA, MailParams, NeedData, RcptParams
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.replies import Reply, ReplyParser, parse_reply
from meta1py.smtp.server import ServerConnection
from meta1py.smtp.state import State

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
