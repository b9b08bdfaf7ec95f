"""Delivery status notifications (RFC 3464): the builder of bounces, delay warnings and success reports.

A bounce is an ordinary message from the null sender ``<>``: qmgr (its only user) writes its content
file with this module's output and queues it with the same durability as any other message.  The content is
``multipart/report; report-type=delivery-status`` (RFC 6522) with three parts:

1. a short human-readable explanation,
2. ``message/delivery-status``: per-message fields (Reporting-MTA, Original-Envelope-Id,
   Arrival-Date) and one block per recipient (Final-Recipient, Original-Recipient, Action, Status,
   Remote-MTA, Diagnostic-Code, Last-Attempt-Date),
3. the original message: ``message/rfc822`` (the whole message, as RET=FULL asks and as is the
   default up to ``max_full_bytes``) or ``text/rfc822-headers`` (RET=HDRS, or a message too big to
   return whole; Postfix's bounce_size_limit behaves the same way).

Everything here is pure: bytes in, bytes out, no I/O beyond reading the file object it is given.
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

from meta1py.maps.aliases import parse_local_target_address

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]

#: Returned whole up to this size; larger messages are returned as headers only.
DEFAULT_MAX_FULL_BYTES = 50_000

#: Headers returned with text/rfc822-headers are cut at this size.
MAX_HEADER_BYTES = 100_000

# A diagnostic or remote name comes from a peer: keep it to one bounded line.
_MAX_FIELD_CHARS = 500


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One recipient block of the delivery-status part."""

    address: str
    action: Action
    status: str  # enhanced status code, e.g. "5.1.1"
    orcpt: str | None = None  # ORCPT as given ("rfc822;user@example.com") or None
    remote_mta: str | None = None
    diagnostic: str | None = None  # e.g. "550 5.1.1 <x@y>: user unknown"
    last_attempt: float | None = None


def _clean(text: str) -> str:
    """One printable line, bounded: peer text is never trusted as structure."""
    flat = " ".join(text.replace("\r", " ").replace("\n", " ").split())
    flat = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in flat)
    return flat[:_MAX_FIELD_CHARS]


def _final(address: str) -> tuple[str, str]:
    """The Final-Recipient of a queue recipient, and what the human part adds to it: a command or
    file target (``origin:|command``) is reported, as Postfix does, under the address whose alias
    or ``.forward`` named it, with the target beside it."""
    local = parse_local_target_address(address)
    if local is None:
        return address, ""
    origin, kind, target = local
    return origin, f'("{"|" if kind == "command" else ""}{target}")'


def _addr_type(address: str) -> str:
    return "utf-8" if any(ord(ch) > 127 for ch in address) else "rfc822"


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, localtime=False, usegmt=True)


def _read_original(original: BinaryIO, max_full_bytes: int, want_full: bool) -> tuple[bytes, bool]:
    """Return (data, is_full): the whole message if wanted and small enough, else its headers."""
    if want_full:
        data = original.read(max_full_bytes + 1)
        if len(data) <= max_full_bytes:
            return data, True
        original.seek(0)
    headers = bytearray()
    for line in original:
        if line in (b"\r\n", b"\n"):
            break
        headers += line
        if len(headers) > MAX_HEADER_BYTES:
            break
    return bytes(headers), False


_FAILED = "Undelivered Mail Returned to Sender"


def _subject_and_intro(reporting_mta: str, actions: set[str]) -> tuple[str, list[str]]:
    """The Subject: and the first lines of the human part, from the actions the report contains.

    A report about failures says so first even when it also lists successes (NOTIFY=SUCCESS,FAILURE
    on a partly delivered message): the sender must act on the failures.
    """
    first = f"This is the mail system at host {reporting_mta}."
    if "failed" in actions:
        lines = [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. The reasons are given below.",
        ]
        if actions & {"delivered", "relayed", "expanded"}:
            lines.append("It was delivered to the other recipients listed below, as you asked.")
        return _FAILED, [first, "", *lines]
    if actions == {"delayed"}:
        return "Delayed Mail (still being retried)", [
            first,
            "",
            "Your message could not be delivered yet to the recipients below.",
            "It is still being retried; you need not send it again.",
        ]
    if "delayed" in actions:
        return "Delivery Status Notification", [
            first,
            "",
            "Your message was delivered to some of the recipients below; for the others",
            "it is still being retried, and you need not send it again.",
        ]
    # Only successes (RFC 3461 NOTIFY=SUCCESS): delivered, relayed to a non-DSN MTA, or expanded.
    return "Successful Mail Delivery Report", [
        first,
        "",
        "Your message was successfully delivered to the destination(s) listed below.",
        "If the message was delivered to a mailbox you will receive no further notifications;",
        "otherwise you may still receive notifications of failure from other systems.",
    ]


def build_dsn(
    *,
    reporting_mta: str,
    postmaster: str,
    to: str,
    qid: str,
    arrival_time: float,
    now: float,
    envid: str | None,
    ret: str | None,
    recipients: Sequence[DsnRecipient],
    original: BinaryIO | None,
    max_full_bytes: int = DEFAULT_MAX_FULL_BYTES,
) -> bytes:
    """Build the content of one DSN message (CRLF line endings).

    Args:
        reporting_mta: our hostname, for Reporting-MTA and the From: display.
        postmaster: the From: address of the report (MAILER-DAEMON@hostname by convention).
        to: the envelope sender of the original message, the report's To:.
        qid: the original message's queue id (quoted for the operator's grep).
        arrival_time: when the original message was queued.
        now: the report's Date:.
        envid: the original ENVID (RFC 3461), echoed as Original-Envelope-Id.
        ret: the original RET parameter: "HDRS" returns headers only, "FULL" or None the whole
            message up to ``max_full_bytes``.
        recipients: the recipients the report is about (at least one): failed, delayed or
            delivered ones, in any mix; the subject and the introduction follow the mix.
        original: the original content, positioned at its start, or None when it is gone.
        max_full_bytes: larger originals are returned as headers only.

    Returns:
        The report as bytes, ready to be written to a content file.

    Raises:
        ValueError: ``recipients`` is empty.
    """
    if not recipients:
        raise ValueError("a delivery status notification needs at least one recipient")
    subject, intro = _subject_and_intro(reporting_mta, {r.action for r in recipients})
    boundary = f"{qid}.{secrets.token_hex(8)}/{reporting_mta}"
    crlf = "\r\n"

    head = [
        f"From: Mail Delivery System <{postmaster}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{qid}.{secrets.token_hex(6)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is a MIME-encapsulated message.",
        "",
    ]

    human = [
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
    ]
    human += intro
    human.append("")
    for r in recipients:
        reason = _clean(r.diagnostic) if r.diagnostic else f"status {r.status}"
        final, target = _final(r.address)
        shown = f"<{_clean(final)}> {_clean(target)}" if target else f"<{_clean(final)}>"
        human.append(f"{shown}: {reason}")
    human.append("")

    status = [
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Meta1-Queue-ID: {qid}",
    ]
    if envid:
        status.append(f"Original-Envelope-Id: {_clean(envid)}")
    status.append(f"Arrival-Date: {_date(arrival_time)}")
    for r in recipients:
        status.append("")
        final, _target = _final(r.address)
        status.append(f"Final-Recipient: {_addr_type(final)}; {_clean(final)}")
        if r.orcpt:
            orcpt = r.orcpt if ";" in r.orcpt else f"{_addr_type(r.orcpt)};{r.orcpt}"
            status.append(f"Original-Recipient: {_clean(orcpt)}")
        status.append(f"Action: {r.action}")
        status.append(f"Status: {r.status}")
        if r.remote_mta:
            status.append(f"Remote-MTA: dns; {_clean(r.remote_mta)}")
        if r.diagnostic:
            status.append(f"Diagnostic-Code: smtp; {_clean(r.diagnostic)}")
        if r.last_attempt is not None:
            status.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
    status.append("")

    out = bytearray(crlf.join(head + human + status).encode("utf-8") + crlf.encode())
    if original is not None:
        data, full = _read_original(original, max_full_bytes, want_full=(ret or "FULL") == "FULL")
        what = "Undelivered Message" if any(r.action == "failed" for r in recipients) else "Message"
        if full:
            part_head = [f"Content-Description: {what}", "Content-Type: message/rfc822"]
        else:
            part_head = [f"Content-Description: {what} Headers", "Content-Type: text/rfc822-headers"]
        out += f"--{boundary}{crlf}".encode()
        out += (crlf.join([*part_head, "Content-Transfer-Encoding: 8bit", ""]) + crlf).encode()
        if data and not data.endswith(b"\n"):
            data += b"\r\n"
        out += data
        out += crlf.encode()
    out += f"--{boundary}--{crlf}".encode()
    return bytes(out)
