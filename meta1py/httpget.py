"""The HTTP/1.x of the metrics endpoint: read one request head, answer it, close. No I/O.

Prometheus scrapes with ``GET /metrics``; nothing else is served. The reader is strict and small
on purpose (it runs in qmgr, which owns the queue): the request head is bounded
(:data:`MAX_HEAD_BYTES`), only the request line is interpreted (header fields are skipped, a body
is never read), and every answer closes the connection (``Connection: close``), so there is no
keep-alive, no pipelining and no chunked encoding to get wrong.

Answers (RFC 9110, RFC 9112):

* ``GET`` or ``HEAD`` of ``/metrics`` (a query string is ignored): 200 with the page;
* another method: 405 with ``Allow: GET, HEAD``;
* another path: 404;
* a malformed request line or header field, or a line ending without CR LF: 400;
* a version other than HTTP/1.0 or HTTP/1.1: 505;
* a head longer than :data:`MAX_HEAD_BYTES`: 431.

The caller bounds the time a client may take to send its head (qmgr answers 408 then).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

#: The longest request head read (request line and header fields).
MAX_HEAD_BYTES: Final = 8192
#: The one path served.
METRICS_PATH: Final = "/metrics"

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
# RFC 9110 §5.6.2: a method is a token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)\Z")
_FIELD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\Z")


@dataclass(frozen=True, slots=True)
class Request:
    """A request worth answering with the page: ``head_only`` for HEAD."""

    head_only: bool


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request answered with an error ``status`` (and ``Allow`` for 405)."""

    status: int
    allow: str | None = None


def head_complete(buffer: bytes | bytearray) -> bool:
    """True once ``buffer`` holds the whole request head (up to the empty line)."""
    return b"\r\n\r\n" in buffer


def parse_head(buffer: bytes) -> Request | Refusal:
    """Judge the request head in ``buffer`` (what arrived so far, possibly beyond the head).

    Call it when :func:`head_complete` is true, or when the buffer has reached
    :data:`MAX_HEAD_BYTES` (then it answers 431).
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0 or end + 4 > MAX_HEAD_BYTES:
        return Refusal(431)
    lines = buffer[:end].split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        return Refusal(400)  # a bare CR or LF: RFC 9112 §2.2 lets us refuse it
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
        return Refusal(400)
    method, target, version = parts
    for line in lines[1:]:
        if not _FIELD.match(line):
            return Refusal(400)
    match = _VERSION.match(version)
    if match is None:
        return Refusal(400)
    if match.group(1) != b"1":
        return Refusal(505)
    if method not in (b"GET", b"HEAD"):
        return Refusal(405, allow="GET, HEAD")
    path = target.split(b"?", 1)[0]
    if path != METRICS_PATH.encode():
        return Refusal(404)
    return Request(head_only=method == b"HEAD")


def response(
    status: int, body: bytes, content_type: str, *, head_only: bool = False, allow: str | None = None
) -> bytes:
    """A whole HTTP/1.1 response that closes the connection."""
    fields = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if allow is not None:
        fields.append(f"Allow: {allow}")
    head = ("\r\n".join(fields) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def error_response(refusal: Refusal, *, head_only: bool = False) -> bytes:
    """The response for ``refusal``: its status line, and the reason as a one-line text body."""
    reason = _REASONS.get(refusal.status, "Error")
    body = f"{refusal.status} {reason}\n".encode("ascii")
    return response(
        refusal.status, body, "text/plain; charset=utf-8", head_only=head_only, allow=refusal.allow
    )
