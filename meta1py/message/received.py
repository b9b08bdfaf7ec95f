"""The ``Received:`` header smtps writes on top of every message it accepts (and the one qmgr writes
on mail from the pickup directory: :func:`pickup_received_header`).

RFC 5321 §4.4 (the trace header, one per hop), RFC 3848 (the ``with`` protocol types: SMTP, ESMTP,
ESMTPS, ESMTPA, ESMTPSA). The TLS comment follows Postfix (``(using TLSv1.3 with cipher ...)``,
then ``(Client subject ...)`` on its own line when the client presented a certificate). Example::

    Received: from client.example (client.example [192.0.2.1])
    \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
    \tby mx.example (meta1py) with ESMTPS id 0A1B2C3D4E5F
    \tfor <bob@example.org>; Thu, 03 Dec 2026 07:14:47 +0000

Pure functions, no I/O: the caller passes the facts and the time. Peer text (HELO name,
authenticated user, recipient) is cut to printable ASCII without spaces, 255 characters at most, so
that a client cannot fold or forge header lines.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence

from meta1py.tls.facts import TlsFacts, received_clause

__all__ = [
    "clean",
    "format_date",
    "pickup_received_header",
    "protocol",
    "received_header",
    "tls_comment_lines",
]

_UNSAFE = re.compile(r"[^\x21-\x7e]")
_date_cache: tuple[int, str] = (0, "")


def clean(text: str) -> str:
    """Peer text for a header: printable ASCII without spaces (others become ``?``), bounded."""
    return _UNSAFE.sub("?", text)[:255]


def protocol(esmtp: bool, tls: bool, auth: bool) -> str:
    """The RFC 3848 ``with`` type: SMTP after HELO, ESMTP after EHLO, plus S (TLS) and A (AUTH)."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if auth else "")


def format_date(now: float) -> str:
    """The RFC 5322 date of ``now`` in local time; formatted once per second (a busy server
    writes many headers in the same second)."""
    global _date_cache
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


def tls_comment_lines(facts: TlsFacts) -> list[str]:
    """received_clause() split into "(using ...)" and, with a client certificate, "(Client subject ...)".

    The subject is comment-quoted (parentheses escaped), so the first ") (Client subject" is ours.
    """
    text = received_clause(facts)
    head, sep, rest = text.partition(") (Client subject")
    return [head + ")", "(Client subject" + rest] if sep else [text]


def received_header(
    *,
    hostname: str,
    qid: str,
    client_address: str,
    helo: str | None,
    esmtp: bool,
    tls: TlsFacts | None,
    authenticated: str | None,
    recipients: Sequence[str],
    now: float,
    client_name: str | None = None,
) -> bytes:
    """The whole ``Received:`` header, folded, with its final CRLF.

    Args:
        hostname: this server's name (the ``by`` clause).
        qid: the queue id of the message (the ``id`` clause).
        client_address: the client's IP address (written in brackets after the HELO name).
        helo: the HELO/EHLO name, or None (written as ``unknown``).
        esmtp: the client greeted with EHLO.
        tls: the session's TLS facts, or None without TLS.
        authenticated: the AUTH identity, or None.
        recipients: the accepted recipients; with exactly one, it is named in a ``for`` clause.
        now: the time of the header (seconds since the epoch).
        client_name: the client's forward-confirmed name ("" when it has none: written as
            ``unknown``, as Postfix does; None when it was not looked up: only the address).
    """
    peer = (
        f"[{client_address}]"
        if client_name is None
        else f"{clean(client_name or 'unknown')} [{client_address}]"
    )
    lines = [f"Received: from {clean(helo or 'unknown')} ({peer})"]
    if tls is not None:
        lines.extend("\t" + part for part in tls_comment_lines(tls))
    if authenticated:
        lines.append(f"\t(Authenticated sender: {clean(authenticated)})")
    proto = protocol(esmtp, tls is not None, authenticated is not None)
    lines.append(f"\tby {hostname} (meta1py) with {proto} id {qid}")
    when = format_date(now)
    if len(recipients) == 1:
        lines.append(f"\tfor <{clean(recipients[0])}>; {when}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{when}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def pickup_received_header(
    *, hostname: str, qid: str, uid: int, recipients: Sequence[str], now: float
) -> bytes:
    """The ``Received:`` header qmgr writes on a message from the pickup directory (local
    submission through ``meta1 sendmail``), with its final CRLF. ``uid`` is the pickup file's
    owner: the user who submitted it, which nobody can forge. Example::

        Received: from userid 1000
        \tby mx.example (meta1py pickup) id 0A1B2C3D4E5F
        \tfor <ops@example.net>; Thu, 03 Dec 2026 07:14:47 +0000
    """
    lines = [f"Received: from userid {uid}", f"\tby {hostname} (meta1py pickup) id {qid}"]
    when = format_date(now)
    if len(recipients) == 1:
        lines.append(f"\tfor <{clean(recipients[0])}>; {when}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{when}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")
