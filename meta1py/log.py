"""Logging setup shared by every process, and maillog events.

Every line carries the process name and pid (``meta1py/smtps[1234]: info: message``) so that the
interleaved stderr of mcp and its workers stays readable in journald or a test's log file.
``maillog`` writes one ``key=value`` line per message state change under the logger
``meta1py.maillog``, so that operators can grep and parse them.

On stderr each line starts with an RFC 3339 local time with milliseconds and the UTC offset
(``2026-12-03T07:12:44.123+00:00 meta1py/qmgr[123]: info: ...``), except when stderr is
journald's stream: systemd then sets ``JOURNAL_STREAM=<device>:<inode>`` and, as systemd.exec(5)
advises, we compare it with ``fstat(stderr)`` (the variable alone may be inherited by a process
whose stderr was redirected elsewhere). journald and syslog add their own timestamps.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time
from typing import TextIO

MAILLOG_LOGGER = "meta1py.maillog"
# Maillog events named in design.md §7; others are allowed but these are the ones tools expect.
MAILLOG_EVENTS = frozenset({"queued", "delivered", "deferred", "bounced", "rejected"})

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# A value that needs no quoting: no spaces, quotes, '=' or control characters.
_BARE_VALUE = re.compile(r"[A-Za-z0-9_.,:;@<>+\-/\[\]()!#$%&*?^{}|~]*\Z")
_DEFAULT_VALUE_LIMIT = 200

log = logging.getLogger(__name__)
_maillog_logger = logging.getLogger(MAILLOG_LOGGER)
# Where maillog writes its lines directly (stderr, set by setup_logging; None: use logging).
_fast_stream: TextIO | None = None
_fast_prefix = ""
# Whether maillog's fast path starts its lines with a timestamp (set by setup_logging).
_fast_timestamps = False
# (second since the epoch, "YYYY-MM-DDTHH:MM:SS", "+HH:MM") of the last timestamp: the part that
# changes once a second is formatted once a second. One tuple, replaced whole, so that a thread
# reading it never sees the date of one second with the offset of another.
_second_cache: tuple[int, str, str] = (-1, "", "")


def _format_second(second: int) -> tuple[int, str, str]:
    local = time.localtime(second)
    offset_min = (local.tm_gmtoff or 0) // 60
    sign = "-" if offset_min < 0 else "+"
    hours, minutes = divmod(abs(offset_min), 60)
    return second, time.strftime("%Y-%m-%dT%H:%M:%S", local), f"{sign}{hours:02d}:{minutes:02d}"


def format_timestamp(second: int, millisecond: int) -> str:
    """RFC 3339 local time with milliseconds and UTC offset: ``2026-12-03T07:12:44.123+00:00``.

    The date, time and offset are formatted once per second and cached; maillog writes hundreds of
    lines a second.
    """
    global _second_cache
    cached = _second_cache
    if cached[0] != second:
        cached = _second_cache = _format_second(second)
    return f"{cached[1]}.{millisecond:03d}{cached[2]}"


def stream_is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journald stream named by ``$JOURNAL_STREAM`` (``dev:inode``).

    systemd sets the variable for a service whose stdout or stderr goes to the journal; comparing
    it with the stream's own device and inode (systemd.exec(5)) tells whether this stream is still
    that one, and not a file or pipe that an inherited variable no longer describes.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        # No file descriptor (a test's StringIO), a closed stream, or a malformed variable.
        return False


class _ProcessFormatter(logging.Formatter):
    """``[<timestamp> ]meta1py/<name>[<pid>]: <level>: <message>``; the pid is read per record
    (fork-safe). Without ``with_prefix`` (syslog, whose ident carries name and pid) only
    ``<level>: <message>``.
    """

    def __init__(self, process_name: str, with_prefix: bool = True, timestamps: bool = False) -> None:
        super().__init__()
        self._process_name = process_name
        self._with_prefix = with_prefix
        self._timestamps = timestamps and with_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        level = record.levelname.lower()
        if not self._with_prefix:
            return f"{level}: {text}"
        line = f"meta1py/{self._process_name}[{os.getpid()}]: {level}: {text}"
        if self._timestamps:
            # The record's own time (when it was made, not when it is written).
            return f"{format_timestamp(int(record.created), int(record.msecs))} {line}"
        return line


def parse_level(level: str) -> int:
    """Map a ``log_level`` config value to a ``logging`` level (unknown values mean info)."""
    return _LEVELS.get(level.lower(), logging.INFO)


def setup_logging(process_name: str, level: str, syslog: bool = False) -> None:
    """Send this process's log records to stderr (default) or syslog.

    Replaces any handlers on the root logger, so calling it again (after a config reload)
    just changes the level. Lines on stderr start with a timestamp unless stderr is journald's
    stream (:func:`stream_is_journal`).

    Args:
        process_name: ``mcp``, ``qmgr``, ``smar``, ``smtpc`` or ``smtps``.
        level: ``debug``, ``info``, ``warning`` or ``error``.
        syslog: log to the local syslog socket (facility mail) instead of stderr.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    timestamps = False
    if syslog:
        handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        # syslog adds its own timestamp and host; the ident carries name and pid.
        handler.ident = f"meta1py/{process_name}[{os.getpid()}]: "
        handler.setFormatter(_ProcessFormatter(process_name, with_prefix=False))
    else:
        handler = logging.StreamHandler(sys.stderr)
        timestamps = not stream_is_journal(sys.stderr)
        handler.setFormatter(_ProcessFormatter(process_name, timestamps=timestamps))
    global _fast_stream, _fast_prefix, _fast_timestamps
    _fast_stream = None if syslog else sys.stderr
    _fast_prefix = f"meta1py/{process_name}[{os.getpid()}]: "
    _fast_timestamps = timestamps
    root.addHandler(handler)
    root.setLevel(parse_level(level))


def truncate_peer(data: bytes | str, limit: int = 200) -> str:
    """Render bytes or text received from a peer for a log line: ``repr()``'d and cut to ``limit``.

    ``repr`` escapes control characters and CR/LF, so a peer cannot forge log lines; the cut keeps a
    hostile peer from filling the log.
    """
    text = repr(data)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(data)} {'bytes' if isinstance(data, bytes) else 'chars'})"


def format_value(value: object) -> str:
    """Render one maillog field value: bare when safe, otherwise double-quoted with escapes."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes):
        # Bytes are peer data by definition here: repr()'d (already escaped, one line) and
        # truncated; only the quote character needs escaping.
        return '"' + truncate_peer(value).replace('"', '\\"') + '"'
    text = str(value)
    if len(text) > _DEFAULT_VALUE_LIMIT:
        text = f"{text[:_DEFAULT_VALUE_LIMIT]}..."
    if text and _BARE_VALUE.match(text):
        return text
    escaped = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{escaped}"'


def maillog(event: str, qid: str | None, **fields: object) -> None:
    """Write one maillog line: ``<event> qid=<qid> key=value ...``.

    Args:
        event: ``queued``, ``delivered``, ``deferred``, ``bounced`` or ``rejected``.
        qid: the queue id, or None before one exists (logged as ``qid=-``).
        **fields: further fields in the given order; ``bytes`` values are treated as peer data
            (repr()'d and truncated), strings with spaces or quotes are quoted. Never pass AUTH data.
    """
    if not _maillog_logger.isEnabledFor(logging.INFO):
        return
    parts = [event, f"qid={format_value(qid)}"]
    parts.extend(f"{key}={format_value(value)}" for key, value in fields.items())
    text = " ".join(parts)
    stream = _fast_stream
    if stream is not None:
        # The common case (stderr): the same line the handler would write, without building a
        # LogRecord; maillog lines are a large part of qmgr's logging work.
        line = f"{_fast_prefix}info: {text}\n"
        if _fast_timestamps:
            now_ns = time.time_ns()
            line = f"{format_timestamp(now_ns // 1_000_000_000, now_ns // 1_000_000 % 1000)} {line}"
        try:
            stream.write(line)
            stream.flush()
            return
        except (OSError, ValueError):
            pass
    _maillog_logger.info("%s", text)
