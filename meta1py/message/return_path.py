"""``Return-Path:``: the envelope sender, recorded by the final delivery (RFC 5321 §4.4).

The MTA that makes the final delivery adds ``Return-Path: <reverse-path>`` at the top of the
message -- ``<>`` for the null sender of a bounce -- so that the recipient's software knows where
replies about delivery go.

smtpc's Maildir delivery writes it (:func:`meta1py.smtpc.maildir.deliver_maildir`). LMTP and
SMTP deliveries do not: the server behind them makes the final delivery and adds its own.
"""

from __future__ import annotations

__all__ = ["return_path_header"]

_FORBIDDEN = frozenset("\r\n\0<>")


def return_path_header(sender: str, *, newline: bytes = b"\r\n") -> bytes:
    """The ``Return-Path:`` header line for the envelope ``sender``, ending with ``newline``.

    Args:
        sender: the MAIL FROM address without angle brackets; ``""`` for the null sender.
            UTF-8 is allowed (SMTPUTF8).
        newline: ``b"\\r\\n"`` for a message on the wire or in the queue, ``b"\\n"`` for a local
            file (Maildir).

    Raises:
        ValueError: ``sender`` holds CR, LF, NUL or an angle bracket (it would break the header).
    """
    bad = _FORBIDDEN.intersection(sender)
    if bad:
        raise ValueError(f"envelope sender contains {''.join(sorted(bad))!r}: {sender!r}")
    return b"Return-Path: <" + sender.encode("utf-8") + b">" + newline
