"""The pickup directory: mail submitted on this host while the MTA could not take it.

Postfix's ``maildrop`` directory, for meta1py: when ``meta1 sendmail`` cannot hand a message to
smtps (the MTA is stopped, or answers 4xx), it writes the message here as one file, and qmgr
commits it as a normal message at start and every ``qmgr { pickup_interval }`` (see
:mod:`meta1py.qmgr.pickup`). ``queue_directory/pickup`` is ``meta1q:<setgid_group> 1730``: members
of the submission group (in practice only the small setgid helper ``meta1-postdrop``, see
:mod:`meta1py.cli.postdrop`) may create files there but not list the directory; the sticky bit
lets them remove only their own files. qmgr owns it and reads, moves and removes every file.

One file per message, named by 32 random lowercase hex digits. A writer creates it under a
temporary name (``.tmp-`` and the same digits), writes it whole, makes it ``0644``, gives it its
final name with ``link()`` (which never replaces another file) and fsyncs it, then removes the
temporary name: a file under its final name is always complete, and a reader never takes a name
starting with a dot. The file's owner is the submitting user (the helper is setgid, not setuid):
qmgr writes that uid into the ``Received:`` header, and nobody can forge it.

The format (version 1) is an envelope of ASCII lines, then the content::

    meta1-pickup 1
    sender <cron@example.org>                       <> for the null sender
    recipient <ops@example.net> notify=FAILURE,DELAY orcpt=rfc822;ops@example.net
    recipient <"odd user"@example.net>              one line per recipient, in order
    ret HDRS                                        optional: DSN RET (FULL or HDRS)
    envid 20261203+2Enightly                        optional: DSN ENVID, as xtext
    body 8BITMIME                                   optional: 7BIT (default) or 8BITMIME
    smtputf8                                        optional: addresses or headers need SMTPUTF8
    content 1234                                    the last line: the content's length
    <1234 octets of message content: header and body, CRLF line ends>

``orcpt`` is ``TYPE;XTEXT`` as in RFC 3461 §4.2. Every line ends with LF and holds at most
:data:`MAX_LINE_OCTETS`; ``sender`` and ``content`` appear once, ``recipient`` at least once; no
other keyword is allowed. The content's lines end with CRLF (no bare CR or LF) and hold at most
1000 octets with their CRLF, as RFC 5321 §4.5.3.1.6 says of a line in DATA; nothing may follow it.

qmgr treats every file as hostile input (anyone in the submission group can write any bytes):
:func:`read_pickup` checks every field with the parsers smtps uses, caps every size, and reports
the first problem as a :class:`PickupFormatError`, never anything else.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from meta1py.envelope import BODY_TYPES, DSN_RETS, NOTIFY_KEYWORDS, BodyType, DsnRet

# The SMTP core (address parser, xtext) is imported where it is used: mcp and the ownership
# model import this module for its names, and must not pay for compiling the SMTP grammar.

__all__ = [
    "CORRUPT_DIRNAME",
    "FILE_MODE",
    "MAGIC",
    "PICKUP_DIRNAME",
    "TEMP_PREFIX",
    "ContentChecker",
    "PickupEnvelope",
    "PickupFormatError",
    "PickupRecipient",
    "content_problem",
    "copy_pickup_content",
    "corrupt_directory",
    "encode_envelope",
    "is_pickup_name",
    "max_file_bytes",
    "pickup_directory",
    "read_pickup",
    "read_pickup_envelope",
    "write_pickup_file",
]

PICKUP_DIRNAME = "pickup"
#: Where qmgr moves a pickup file it cannot take, for the operator to look at (``meta1q`` 0700).
CORRUPT_DIRNAME = "corrupt"
MAGIC = b"meta1-pickup 1\n"
TEMP_PREFIX = ".tmp-"
#: Readable by qmgr, which is neither the file's owner nor in its group; nobody else can reach it
#: (the directory gives others no search permission).
FILE_MODE = 0o644
#: Longest envelope line with its LF: a 256-octet path, NOTIFY and an xtext ORCPT of 3 x 256.
MAX_LINE_OCTETS = 2048
#: Longest content line with its CRLF (RFC 5321 §4.5.3.1.6).
MAX_CONTENT_LINE_OCTETS = 1000
MAX_ENVID_CHARS = 100  # RFC 3461 §4.4

_NAME = re.compile(r"[0-9a-f]{32}\Z")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+\Z")
_ORCPT_TYPE = re.compile(r"[A-Za-z0-9-]{1,32}\Z")
_DIGITS = re.compile(r"[0-9]{1,15}\Z")
_COPY_CHUNK = 64 * 1024


class PickupFormatError(ValueError):
    """A pickup file that is not a well-formed message: the text says what is wrong and where."""


@dataclass(frozen=True, slots=True)
class PickupRecipient:
    """One envelope recipient with its DSN parameters (RFC 3461), as in a commit request."""

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


@dataclass(frozen=True, slots=True)
class PickupEnvelope:
    """The envelope of a pickup file.

    Attributes:
        sender: the reverse path without brackets; ``""`` for the null sender.
        recipients: in the order given.
        ret: DSN RET, or None.
        envid: DSN ENVID (decoded), or None.
        body: BODY= of the content.
        smtputf8: the message needs SMTPUTF8.
        size: octets of content that follow the envelope.
    """

    sender: str
    recipients: tuple[PickupRecipient, ...]
    ret: DsnRet | None = None
    envid: str | None = None
    body: BodyType = "7BIT"
    smtputf8: bool = False
    size: int = 0


def pickup_directory(queue_directory: str | os.PathLike[str]) -> Path:
    """``queue_directory/pickup``."""
    return Path(queue_directory) / PICKUP_DIRNAME


def corrupt_directory(queue_directory: str | os.PathLike[str]) -> Path:
    """``queue_directory/corrupt``."""
    return Path(queue_directory) / CORRUPT_DIRNAME


def max_file_bytes(max_content_bytes: int, max_recipients: int) -> int:
    """The largest pickup file with this much content and this many recipients (every envelope
    line at its longest)."""
    return max_content_bytes + (max_recipients + 8) * MAX_LINE_OCTETS


def is_pickup_name(name: str) -> bool:
    """True for the name of a complete pickup file (not a temporary one)."""
    return _NAME.match(name) is not None


# -- writing -------------------------------------------------------------------------------------


def _path_text(address: str) -> str:
    return f"<{address}>"


def encode_envelope(env: PickupEnvelope) -> bytes:
    """The envelope lines of a pickup file, ``content N`` last; the content follows them.

    Raises:
        PickupFormatError: the envelope would not be read back (a bad address, a line too long).
    """
    from meta1py.smtp.client import xtext_encode

    lines = [MAGIC.decode().rstrip("\n"), f"sender {_path_text(env.sender)}"]
    for r in env.recipients:
        line = f"recipient {_path_text(r.address)}"
        if r.notify:
            line += " notify=" + ",".join(r.notify)
        if r.orcpt is not None:
            kind, _, value = r.orcpt.partition(";")
            line += f" orcpt={kind};{xtext_encode(value)}"
        lines.append(line)
    if env.ret is not None:
        lines.append(f"ret {env.ret}")
    if env.envid is not None:
        lines.append(f"envid {xtext_encode(env.envid)}")
    if env.body != "7BIT":
        lines.append(f"body {env.body}")
    if env.smtputf8:
        lines.append("smtputf8")
    lines.append(f"content {env.size}")
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    # What the reader would say about it (no limits here: the CLI checks those itself).
    _parse_envelope(data.split(b"\n")[1:-1], max_recipients=len(env.recipients) or 1)
    return data


def write_pickup_file(directory: str | os.PathLike[str], chunks: Sequence[bytes]) -> str:
    """Write one pickup file into ``directory`` durably; return its name.

    For a writer that may write there itself (root, the queue's owner, the invoking user when
    meta1py runs unprivileged); everybody else goes through ``meta1-postdrop``, which does the
    same in C. The order: a temporary name (``O_EXCL``), the data, mode 0644, ``link()`` to the
    final name (never replacing a file), fsync of the file (on a journaling file system this also
    commits its new name) and of the directory, then the temporary name goes.

    Raises:
        OSError: the file could not be written; nothing is left under a final name.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            name = secrets.token_hex(16)
            temp = TEMP_PREFIX + name
            try:
                fd = os.open(
                    temp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dir_fd,
                )
            except FileExistsError:
                continue
            break
        try:
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fchmod(fd, FILE_MODE)
                os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                os.unlink(temp, dir_fd=dir_fd)
                raise
            try:
                os.fsync(fd)
                os.fsync(dir_fd)
            except BaseException:
                os.unlink(name, dir_fd=dir_fd)
                os.unlink(temp, dir_fd=dir_fd)
                raise
        finally:
            os.close(fd)
        os.unlink(temp, dir_fd=dir_fd)
        return name
    finally:
        os.close(dir_fd)


# -- checking content ---------------------------------------------------------------------------


class ContentChecker:
    """Checks message content chunk by chunk: CRLF line ends only, lines of at most 1000 octets.

    ``feed`` raises :class:`PickupFormatError` at the first problem; ``finish`` checks the end.
    """

    __slots__ = ("_line", "_offset", "_pending_cr")

    def __init__(self) -> None:
        self._line = 0  # octets of the current line so far (without its CRLF)
        self._pending_cr = False  # the previous chunk ended with CR
        self._offset = 0

    def feed(self, chunk: bytes) -> None:
        """Check the next piece of content.

        Raises:
            PickupFormatError: a bare CR or LF, or a line longer than 1000 octets.
        """
        pos = 0
        n = len(chunk)
        if self._pending_cr and n:
            if chunk[0] != 0x0A:
                raise PickupFormatError(f"bare CR in the content at octet {self._offset - 1}")
            self._pending_cr = False
            self._line = 0
            pos = 1
        while pos < n:
            cr = chunk.find(b"\r", pos)
            lf = chunk.find(b"\n", pos)
            if lf >= 0 and (cr < 0 or lf < cr):
                raise PickupFormatError(f"bare LF in the content at octet {self._offset + lf}")
            end = cr if cr >= 0 else n
            self._line += end - pos
            if self._line + 2 > MAX_CONTENT_LINE_OCTETS:
                raise PickupFormatError(
                    f"a content line is longer than {MAX_CONTENT_LINE_OCTETS} octets with its CRLF"
                )
            if cr < 0:
                break
            if cr + 1 == n:
                self._pending_cr = True
                break
            if chunk[cr + 1] != 0x0A:
                raise PickupFormatError(f"bare CR in the content at octet {self._offset + cr}")
            self._line = 0
            pos = cr + 2
        self._offset += n

    def finish(self) -> None:
        """Check the end of the content: it is empty or ends with CRLF.

        Raises:
            PickupFormatError: the last line has no CRLF.
        """
        if self._pending_cr:
            raise PickupFormatError("bare CR at the end of the content")
        if self._offset and self._line:
            raise PickupFormatError("the content does not end with CRLF")


def content_problem(content: bytes) -> str | None:
    """What is wrong with ``content`` as pickup content, or None (the CLI checks before writing)."""
    checker = ContentChecker()
    try:
        checker.feed(content)
        checker.finish()
    except PickupFormatError as exc:
        return str(exc)
    return None


# -- reading -------------------------------------------------------------------------------------


def _xtext_decode(value: str, what: str) -> str:
    if not _XTEXT.match(value):
        raise PickupFormatError(f"{what}: bad xtext {value[:60]!r}")
    raw = re.sub(rb"\+([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]), value.encode("ascii"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PickupFormatError(f"{what}: not UTF-8 after xtext decoding") from None


def _path(text: str, what: str, smtputf8: bool, *, sender: bool) -> tuple[str, str]:
    """Split ``<path> rest`` and check the path as smtps would; return (address, rest)."""
    from meta1py.smtp.address import match_path, parse_path
    from meta1py.smtp.errors import SmtpProtocolError

    length = match_path(text)
    if not length:
        raise PickupFormatError(f"{what}: no <address> in {text[:80]!r}")
    try:
        parsed = parse_path(text[:length], smtputf8, allow_null=sender, allow_postmaster=not sender)
    except SmtpProtocolError as exc:
        raise PickupFormatError(f"{what}: {exc}") from None
    address = str(parsed)  # a bare <postmaster> is "postmaster"
    rest = text[length:]
    if rest and not rest.startswith(" "):
        raise PickupFormatError(f"{what}: junk after the address: {rest[:60]!r}")
    return address, rest.strip(" ")


def _recipient(value: str, smtputf8: bool) -> PickupRecipient:
    address, rest = _path(value, "recipient", smtputf8, sender=False)
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    for param in rest.split(" ") if rest else ():
        key, eq, arg = param.partition("=")
        key = key.lower()
        if not eq or not arg:
            raise PickupFormatError(f"recipient <{address}>: bad parameter {param[:60]!r}")
        if key == "notify" and notify is None:
            words = tuple(w.upper() for w in arg.split(","))
            if not set(words) <= NOTIFY_KEYWORDS or len(set(words)) != len(words):
                raise PickupFormatError(f"recipient <{address}>: bad NOTIFY {arg[:60]!r}")
            if "NEVER" in words and len(words) > 1:
                raise PickupFormatError(f"recipient <{address}>: NOTIFY=NEVER stands alone")
            notify = words
        elif key == "orcpt" and orcpt is None:
            kind, semi, xtext = arg.partition(";")
            if not semi or not _ORCPT_TYPE.match(kind):
                raise PickupFormatError(f"recipient <{address}>: bad ORCPT {arg[:60]!r}")
            orcpt = f"{kind};{_xtext_decode(xtext, f'recipient <{address}> ORCPT')}"
        else:
            raise PickupFormatError(f"recipient <{address}>: unknown or repeated parameter {key[:30]!r}")
    return PickupRecipient(address, notify, orcpt)


def _parse_envelope(lines: list[bytes], max_recipients: int) -> PickupEnvelope:
    """The envelope from its lines (after the magic line, up to and including ``content N``)."""
    fields: dict[str, str] = {}
    recipient_lines: list[str] = []
    for number, raw in enumerate(lines, start=2):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PickupFormatError(f"line {number}: not UTF-8") from None
        if not line.isprintable():
            raise PickupFormatError(f"line {number}: control characters")
        keyword, _, value = line.partition(" ")
        if keyword == "recipient":
            if len(recipient_lines) >= max_recipients:
                raise PickupFormatError(f"more than {max_recipients} recipients")
            recipient_lines.append(value)
            continue
        if keyword not in ("sender", "ret", "envid", "body", "smtputf8", "content"):
            raise PickupFormatError(f"line {number}: unknown keyword {keyword[:30]!r}")
        if keyword in fields:
            raise PickupFormatError(f"line {number}: {keyword} given twice")
        if (keyword == "smtputf8") != (value == "" and line == keyword):
            raise PickupFormatError(f"line {number}: bad {keyword} line")
        fields[keyword] = value
    if "content" not in fields:
        raise PickupFormatError("no content line")
    if "sender" not in fields:
        raise PickupFormatError("no sender line")
    if not recipient_lines:
        raise PickupFormatError("no recipient")
    smtputf8 = "smtputf8" in fields
    sender, rest = _path(fields["sender"], "sender", smtputf8, sender=True)
    if rest:
        raise PickupFormatError(f"sender: junk after the address: {rest[:60]!r}")
    recipients = tuple(_recipient(value, smtputf8) for value in recipient_lines)
    ret: DsnRet | None = None
    if "ret" in fields:
        if fields["ret"] not in DSN_RETS:
            raise PickupFormatError(f"bad ret {fields['ret'][:30]!r} (FULL or HDRS)")
        ret = "FULL" if fields["ret"] == "FULL" else "HDRS"
    envid: str | None = None
    if "envid" in fields:
        envid = _xtext_decode(fields["envid"], "envid")
        if len(envid) > MAX_ENVID_CHARS or not envid.isascii() or not envid.isprintable():
            raise PickupFormatError("envid: more than 100 characters, or not printable ASCII")
    body: BodyType = "7BIT"
    if "body" in fields:
        if fields["body"] not in BODY_TYPES - {"BINARYMIME"}:
            raise PickupFormatError(f"bad body {fields['body'][:30]!r} (7BIT or 8BITMIME)")
        body = "8BITMIME" if fields["body"] == "8BITMIME" else "7BIT"
    if not _DIGITS.match(fields["content"]):
        raise PickupFormatError(f"bad content length {fields['content'][:30]!r}")
    return PickupEnvelope(sender, recipients, ret, envid, body, smtputf8, int(fields["content"]))


def read_pickup_envelope(stream: BinaryIO, *, max_content_bytes: int, max_recipients: int) -> PickupEnvelope:
    """Read and check the envelope of a pickup file; the stream is left at the first octet of the
    content (read it with :func:`copy_pickup_content`).

    Args:
        stream: the file, positioned at its start.
        max_content_bytes: the largest content accepted (smtps's ``max_message_size``).
        max_recipients: the most recipients accepted.

    Raises:
        PickupFormatError: the first problem found.
    """
    if stream.read(len(MAGIC)) != MAGIC:
        raise PickupFormatError("not a pickup file (no 'meta1-pickup 1' line)")
    lines: list[bytes] = []
    max_lines = max_recipients + 8
    while True:
        raw = stream.readline(MAX_LINE_OCTETS + 1)
        if not raw.endswith(b"\n"):
            if len(raw) > MAX_LINE_OCTETS:
                raise PickupFormatError(f"line {len(lines) + 2}: longer than {MAX_LINE_OCTETS} octets")
            raise PickupFormatError("the file ends inside the envelope")
        lines.append(raw[:-1])
        if raw.startswith(b"content "):
            break
        if len(lines) > max_lines:
            raise PickupFormatError(f"more than {max_recipients} recipients")
    env = _parse_envelope(lines, max_recipients)
    if env.size > max_content_bytes:
        raise PickupFormatError(
            f"content of {env.size} octets is larger than the limit of {max_content_bytes}"
        )
    return env


def copy_pickup_content(
    stream: BinaryIO, env: PickupEnvelope, sink: Callable[[bytes], None]
) -> PickupEnvelope:
    """Check the content that follows the envelope and pass it to ``sink`` chunk by chunk.

    The content is checked as it goes, so the caller must throw away what ``sink`` got when this
    raises.

    Returns:
        ``env``; 8-bit content declared ``7BIT`` comes back as ``8BITMIME`` (as Postfix's cleanup
        does for local mail).

    Raises:
        PickupFormatError: the first problem found (a bare CR or LF, a line too long, the file
            ending early or going on after the content).
    """
    checker = ContentChecker()
    remaining = env.size
    eight_bit = False
    while remaining:
        chunk = stream.read(min(remaining, _COPY_CHUNK))
        if not chunk:
            raise PickupFormatError(f"the file ends {remaining} octets before the end of the content")
        checker.feed(chunk)
        if not eight_bit and not chunk.isascii():
            eight_bit = True
        sink(chunk)
        remaining -= len(chunk)
    checker.finish()
    if stream.read(1):
        raise PickupFormatError("data after the content")
    if eight_bit and env.body == "7BIT":
        return PickupEnvelope(
            env.sender, env.recipients, env.ret, env.envid, "8BITMIME", env.smtputf8, env.size
        )
    return env


def read_pickup(
    stream: BinaryIO,
    *,
    max_content_bytes: int,
    max_recipients: int,
    sink: Callable[[bytes], None],
) -> PickupEnvelope:
    """Read and check one whole pickup file: :func:`read_pickup_envelope`, then
    :func:`copy_pickup_content` (the envelope is checked in full before ``sink`` gets anything).

    Raises:
        PickupFormatError: the first problem found.
    """
    env = read_pickup_envelope(stream, max_content_bytes=max_content_bytes, max_recipients=max_recipients)
    return copy_pickup_content(stream, env, sink)
