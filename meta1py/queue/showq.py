"""showq: how a user who may not read the queue lists it (Postfix's showq and public/ directory).

The envelope store is the queue owner's alone (mode 0600). ``mailq``, ``sendmail -bp`` and
``meta1 queue list`` read it directly when they may (root, the queue's owner); anyone else asks
qmgr over the Unix socket ``queue_directory/public/showq`` (mode 0666 in a directory of mode
0711). qmgr reads the caller's uid from the socket (``SO_PEERCRED``, which nobody can forge),
checks it against ``authorized_mailq_users`` and answers with the listing.

The exchange, one per connection: the client writes one request line, ``text`` (mailq's layout)
or ``json`` (one object per message per line), and closes its side; qmgr writes ``OK`` and a
newline followed by the listing, or ``ERROR <kind> <reason>`` and a newline, and closes; the kind
is ``denied`` (not in ``authorized_mailq_users``), ``tempfail`` (the queue cannot be read now)
or ``usage`` (a bad request). A request that
is not one of those two words, or that does not arrive within :data:`REQUEST_TIMEOUT_S`, gets an
error. Nothing else is read from the socket.

Pure: names, the authorization rule and the framing; the server is :mod:`meta1py.qmgr.showq`,
the client :mod:`meta1py.cli.queue`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "ANYONE",
    "MAX_REQUEST_BYTES",
    "PUBLIC_DIRNAME",
    "REQUEST_TIMEOUT_S",
    "SHOWQ_NAME",
    "ShowqError",
    "decode_answer",
    "encode_error",
    "encode_listing",
    "may_list",
    "parse_request",
    "public_directory",
    "showq_socket_path",
]

#: ``queue_directory/public``: where sockets every local user may reach live (mode 0711).
PUBLIC_DIRNAME: Final = "public"
SHOWQ_NAME: Final = "showq"
#: The word in ``authorized_mailq_users`` that lets every local user list the queue (the default).
ANYONE: Final = "anyone"
#: The longest request line read (``json`` and a newline fit many times over).
MAX_REQUEST_BYTES: Final = 64
REQUEST_TIMEOUT_S: Final = 10.0

Format = Literal["text", "json"]
ErrorKind = Literal["denied", "tempfail", "usage"]
_KINDS: Final[tuple[ErrorKind, ...]] = ("denied", "tempfail", "usage")


class ShowqError(Exception):
    """The request is not one qmgr answers, or qmgr refused it (the message says why).

    Attributes:
        kind: ``denied``, ``tempfail`` or ``usage``.
    """

    def __init__(self, kind: ErrorKind, reason: str) -> None:
        super().__init__(reason)
        self.kind: ErrorKind = kind


def public_directory(queue_directory: str | os.PathLike[str]) -> Path:
    """``queue_directory/public``."""
    return Path(queue_directory) / PUBLIC_DIRNAME


def showq_socket_path(queue_directory: str | os.PathLike[str]) -> Path:
    """``queue_directory/public/showq``."""
    return public_directory(queue_directory) / SHOWQ_NAME


def may_list(
    uid: int, users: tuple[str, ...], owner_uid: int, name_of: Callable[[int], str | None]
) -> bool:
    """Whether the user ``uid`` may list the queue: root and the queue's owner always may; others
    when ``users`` (``authorized_mailq_users``) holds ``anyone`` or their login name
    (``name_of(uid)``; None for a uid without an account)."""
    if uid in (0, owner_uid) or ANYONE in users:
        return True
    name = name_of(uid)
    return name is not None and name in users


def parse_request(data: bytes) -> Format:
    """The format a request line asks for.

    Raises:
        ShowqError: anything but ``text`` or ``json`` (with or without a line end).
    """
    word = data.removesuffix(b"\n").removesuffix(b"\r")
    if word == b"text":
        return "text"
    if word == b"json":
        return "json"
    raise ShowqError("usage", "bad request: expected 'text' or 'json'")


def encode_listing(listing: str) -> bytes:
    """qmgr's answer that carries the listing."""
    return b"OK\n" + listing.encode("utf-8", "surrogateescape")


def encode_error(error: ShowqError) -> bytes:
    """qmgr's refusal (one line)."""
    reason = " ".join(str(error).split())
    return f"ERROR {error.kind} {reason}\n".encode("utf-8", "replace")


def decode_answer(data: bytes) -> str:
    """The listing in qmgr's answer ``data`` (all it wrote before it closed).

    Raises:
        ShowqError: qmgr refused (the reason it gave), or the answer is not one.
    """
    head, sep, rest = data.partition(b"\n")
    if sep and head == b"OK":
        return rest.decode("utf-8", "replace")
    words = head.decode("utf-8", "replace").split(" ", 2)
    if sep and words[0] == "ERROR" and len(words) == 3:
        kind = next((k for k in _KINDS if k == words[1]), None)
        if kind is not None:
            raise ShowqError(kind, words[2])
    reason = "qmgr's answer was cut short" if not sep else "not an answer from qmgr's showq"
    raise ShowqError("tempfail", reason)
