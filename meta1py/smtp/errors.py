"""The one error type of the SMTP core.

Peer errors (anything the other side sent that breaks the protocol) raise
:class:`SmtpProtocolError`; it carries the reply that fits, so the adapter can
answer and log at INFO. API misuse by the adapter itself (sending a reply when
none is owed, ...) is a bug and raises :class:`SmtpUsageError`, which is a
``RuntimeError`` on purpose: it must propagate (style guide §5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meta1py.smtp.replies import Reply


class SmtpProtocolError(Exception):
    """The peer broke the SMTP protocol.

    Attributes:
        reply_hint: The reply that answers the error (server side), or None
            when no reply fits (client side: the server sent garbage).
    """

    def __init__(self, message: str, reply_hint: Reply | None = None) -> None:
        super().__init__(message)
        self.reply_hint = reply_hint


class SmtpUsageError(RuntimeError):
    """The adapter called the core in a way its state does not allow (a bug)."""
