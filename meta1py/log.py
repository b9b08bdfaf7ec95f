"""Logging setup shared by every process, and maillog events.

Every line carries the process name and pid (``meta1py/smtps[1234]: info: message``) so that the
interleaved stderr of mcp and its workers stays readable in journald or a test's log file.
``maillog`` writes one ``key=value`` line per message state change under the logger
``meta1py.maillog``, so that operators can grep and parse them.

On stderr each line starts with an RFC 3339 local time with milliseconds and the UTC offset
(``2026-12-03T07:12:44.123+00:00 meta1py/qmgr[123]: info: ...``), except when stderr is
journald's stream: systemd then sets ``JOURNAL_STREAM=<device>:<inode>`` and, as systemd.exec(5)
advises, we compare it with ``fstat(stderr)`` (the variable alone may be inherited by a process
whose stderr was redirected elsewhere). journald and syslog add their own timestamps. Under
journald each line starts instead with its syslog priority in sd-daemon(3)'s form (``<3>`` error,
``<4>`` warning, ``<6>`` info, ``<7>`` debug, ``<2>`` critical), which journald takes off and
records, so that ``journalctl -p err`` finds errors.

``log_format`` chooses the layout (docs/logs.md): ``text`` (above), ``json`` (one JSON object per
line with stable field names; maillog events carry their fields) or ``postfix`` (Postfix's own
lines, ``Dec  3 07:12:44 HOST postfix/smtpd[123]: 2H55H7URQ8PE: client=unknown[192.0.2.1]``, which
pflogsumm and fail2ban's postfix filter read unchanged; :func:`postfix_lines` maps each maillog
event to them).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time
from typing import Any, Literal, TextIO, get_args

MAILLOG_LOGGER = "meta1py.maillog"
# Maillog events named in design.md §7; others are allowed but these are the ones tools expect.
MAILLOG_EVENTS = frozenset({"queued", "delivered", "deferred", "bounced", "rejected"})

#: The values of ``log_format`` (meta1py.conf.model.LOG_FORMATS declares the same words).
LogFormat = Literal["text", "json", "postfix"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)

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

#: The Postfix program each process stands for in ``log_format = postfix`` (docs/logs.md). smar
#: answers what Postfix's trivial-rewrite answers (where does this address go?).
POSTFIX_PROGRAMS = {
    "mcp": "master",
    "smtps": "smtpd",
    "smtpc": "smtp",
    "qmgr": "qmgr",
    "smar": "trivial-rewrite",
}
# Postfix's prefixes for msg_warn, msg_error and msg_fatal; info and debug lines have none.
_POSTFIX_LEVEL_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "fatal: "}
# syslog(3) month names, whatever the locale says (pflogsumm and fail2ban expect these).
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Maillog field names as the json format spells them; the rest keep their names.
_JSON_NAMES = {"qid": "queue_id", "session": "session_id", "sender": "from", "rcpt": "to"}
#: The maillog fields every json maillog object has (null when the event has no such field).
JSON_MAILLOG_FIELDS = (
    "event",
    "queue_id",
    "session_id",
    "client",
    "from",
    "to",
    "relay",
    "status",
    "dsn",
    "delay",
)
JSON_BASE_FIELDS = ("time", "process", "pid", "level", "message")

log = logging.getLogger(__name__)
_maillog_logger = logging.getLogger(MAILLOG_LOGGER)


class _Output:
    """How this process writes its lines; set by :func:`setup_logging` and replaced whole (never
    changed in place), so that a thread reading it never sees half of an old setting and half of
    a new one. A plain class: this module is imported by every process at start-up.

    Attributes:
        process_name: ``mcp``, ``qmgr``, ...
        log_format: ``text``, ``json`` or ``postfix``.
        stream: where maillog writes its lines directly (stderr); None: through logging (syslog).
        prefix: the text format's ``meta1py/<name>[<pid>]: `` (computed once).
        timestamps: stderr lines start with a timestamp (not under journald, not to syslog).
        journal: stderr is journald's stream: lines start with their ``<priority>``.
        hostname: the host name of postfix lines on stderr (what syslog would write).
    """

    __slots__ = ("hostname", "journal", "log_format", "prefix", "process_name", "stream", "timestamps")

    def __init__(
        self,
        process_name: str = "",
        log_format: str = "text",
        stream: TextIO | None = None,
        prefix: str = "",
        timestamps: bool = False,
        journal: bool = False,
        hostname: str = "",
    ) -> None:
        self.process_name = process_name
        self.log_format = log_format
        self.stream = stream
        self.prefix = prefix
        self.timestamps = timestamps
        self.journal = journal
        self.hostname = hostname

    def replace(self, **changes: Any) -> _Output:
        """A copy with ``changes`` (as ``dataclasses.replace``)."""
        values = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return _Output(**values)


_output = _Output()
# (second since the epoch, "YYYY-MM-DDTHH:MM:SS", "+HH:MM") of the last timestamp: the part that
# changes once a second is formatted once a second. One tuple, replaced whole, so that a thread
# reading it never sees the date of one second with the offset of another.
_second_cache: tuple[int, str, str] = (-1, "", "")
# (second since the epoch, "Mmm dd HH:MM:SS"): the same for syslog(3)'s time stamps.
_syslog_second_cache: tuple[int, str] = (-1, "")


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


def format_syslog_timestamp(second: int) -> str:
    """syslog(3)'s local time, as Postfix's log files have it: ``Dec  3 07:12:44``.

    English month names whatever the locale, the day padded with a space, no year and no
    fraction: the form pflogsumm and fail2ban read (pflogsumm takes no fraction of a second).
    """
    global _syslog_second_cache
    cached = _syslog_second_cache
    if cached[0] != second:
        local = time.localtime(second)
        text = f"{_MONTHS[local.tm_mon - 1]} {local.tm_mday:2d} {time.strftime('%H:%M:%S', local)}"
        cached = _syslog_second_cache = (second, text)
    return cached[1]


def syslog_severity(levelno: int) -> int:
    """The syslog severity (RFC 5424) of a ``logging`` level: 2 critical, 3 error, 4 warning,
    6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _journal_prefixed(levelno: int, text: str) -> str:
    """``text`` with sd-daemon(3)'s ``<N>`` at the start of each line: journald stores each line
    as an entry of its own, and every line of a traceback belongs to the error."""
    prefix = f"<{syslog_severity(levelno)}>"
    if "\n" not in text:
        return prefix + text
    return "\n".join(prefix + line for line in text.split("\n"))


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


def _record_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text = f"{text}\n{formatter.formatException(record.exc_info)}"
    if record.stack_info:
        text = f"{text}\n{formatter.formatStack(record.stack_info)}"
    return text


class _ProcessFormatter(logging.Formatter):
    """``[<timestamp> ]meta1py/<name>[<pid>]: <level>: <message>``; the pid is read per record
    (fork-safe). Without ``with_prefix`` (syslog, whose ident carries name and pid) only
    ``<level>: <message>``. With ``journal`` each line starts with its ``<priority>`` instead of a
    timestamp.
    """

    def __init__(
        self, process_name: str, with_prefix: bool = True, timestamps: bool = False, journal: bool = False
    ) -> None:
        super().__init__()
        self._process_name = process_name
        self._with_prefix = with_prefix
        self._timestamps = timestamps and with_prefix
        self._journal = journal and with_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = _record_text(self, record)
        level = record.levelname.lower()
        if not self._with_prefix:
            return f"{level}: {text}"
        line = f"meta1py/{self._process_name}[{os.getpid()}]: {level}: {text}"
        if self._timestamps:
            # The record's own time (when it was made, not when it is written).
            return f"{format_timestamp(int(record.created), int(record.msecs))} {line}"
        if self._journal:
            return _journal_prefixed(record.levelno, line)
        return line


def _json_value(key: str, value: object) -> object:
    """A maillog field value for json: numbers stay numbers, peer bytes are repr()'d and cut."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return truncate_peer(value)
    text = str(value)
    if key == "delay":
        try:
            return float(text)
        except ValueError:
            pass
    if len(text) > _DEFAULT_VALUE_LIMIT:
        text = f"{text[:_DEFAULT_VALUE_LIMIT]}..."
    return text


def json_object(
    process_name: str,
    pid: int,
    levelno: int,
    created: float,
    message: str,
    event: tuple[str, str | None, dict[str, object]] | None = None,
) -> dict[str, object]:
    """The object of one json log line (docs/logs.md lists its fields).

    Args:
        process_name: ``mcp``, ``qmgr``, ...
        pid: the writing process.
        levelno: the ``logging`` level.
        created: seconds since the epoch.
        message: the text line's message (for a maillog event its ``key=value`` form).
        event: a maillog event's ``(event, qid, fields)``: adds :data:`JSON_MAILLOG_FIELDS`
            (null when absent) and the event's other fields under their own names.
    """
    second = int(created)
    obj: dict[str, object] = {
        "time": format_timestamp(second, int((created - second) * 1000)),
        "process": process_name,
        "pid": pid,
        "level": logging.getLevelName(levelno).lower(),
        "message": message,
    }
    if event is None:
        return obj
    name, qid, fields = event
    obj.update(dict.fromkeys(JSON_MAILLOG_FIELDS))
    obj["event"] = name
    obj["queue_id"] = qid
    for key, value in fields.items():
        json_key = _JSON_NAMES.get(key, key)
        if json_key in JSON_BASE_FIELDS or json_key in ("event", "queue_id"):
            json_key = f"{json_key}_"  # never let a field hide the line's own time or process
        obj[json_key] = _json_value(json_key, value)
    return obj


def _json_line(obj: dict[str, object]) -> str:
    import json  # only processes that write json pay for the import

    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class _JsonFormatter(logging.Formatter):
    """One JSON object per record (:func:`json_object`); under journald ``<priority>`` first."""

    def __init__(self, process_name: str, journal: bool = False) -> None:
        super().__init__()
        self._process_name = process_name
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "meta1_event", None)
        obj = json_object(
            self._process_name, os.getpid(), record.levelno, record.created, _record_text(self, record), event
        )
        line = _json_line(obj)
        if self._journal:
            return f"<{syslog_severity(record.levelno)}>{line}"
        return line


class _PostfixFormatter(logging.Formatter):
    """``[<time> <host> ]postfix/<program>[<pid>]: [warning: |error: |fatal: ]<message>``.

    The program is the process's Postfix counterpart (:data:`POSTFIX_PROGRAMS`), the one a
    maillog line names (``record.postfix_program``), or those of the lines of an event a record
    carries (``record.meta1_event``, see :func:`event_fields`). On stderr every line carries
    syslog's time and host, also under journald (after its ``<priority>``), so that
    ``journalctl -o cat`` prints lines that pflogsumm reads. To syslog (``with_header`` off) the
    whole line is the message: the ident is empty, so that syslog takes
    ``postfix/<program>[<pid>]`` as the tag of each line.
    """

    def __init__(
        self, process_name: str, with_header: bool = True, journal: bool = False, hostname: str = ""
    ) -> None:
        super().__init__()
        self._process_name = process_name
        self._program = POSTFIX_PROGRAMS.get(process_name, process_name)
        self._with_header = with_header
        self._journal = journal and with_header
        self._hostname = hostname

    def format(self, record: logging.LogRecord) -> str:
        pid = os.getpid()
        event = getattr(record, "meta1_event", None)
        program = getattr(record, "postfix_program", None)
        if event is not None:
            lines = postfix_lines(self._process_name, *event)
        elif program is not None:  # a maillog line, already in Postfix's words
            lines = [(program, record.getMessage())]
        else:
            level = _POSTFIX_LEVEL_PREFIX.get(record.levelno, "")
            text = _record_text(self, record)
            if not self._with_header:
                return f"postfix/{self._program}[{pid}]: {level}{text}"
            # Postfix never writes a line break; a traceback becomes lines that each say who
            # wrote them and how bad it is.
            lines = [(self._program, level + part) for part in text.split("\n")]
        if not self._with_header:
            return "\n".join(f"postfix/{name}[{pid}]: {text}" for name, text in lines)
        head = f"{format_syslog_timestamp(int(record.created))} {self._hostname} "
        line = "\n".join(f"{head}postfix/{name}[{pid}]: {text}" for name, text in lines)
        return _journal_prefixed(record.levelno, line) if self._journal else line


def parse_level(level: str) -> int:
    """Map a ``log_level`` config value to a ``logging`` level (unknown values mean info)."""
    return _LEVELS.get(level.lower(), logging.INFO)


def setup_logging(process_name: str, level: str, syslog: bool = False, log_format: str = "text") -> None:
    """Send this process's log records to stderr (default) or syslog.

    Replaces any handlers on the root logger, so calling it again (after a config reload)
    just changes the level and format. Lines on stderr start with a timestamp unless stderr is
    journald's stream (:func:`stream_is_journal`); then they start with their priority.

    Args:
        process_name: ``mcp``, ``qmgr``, ``smar``, ``smtpc`` or ``smtps``.
        level: ``debug``, ``info``, ``warning`` or ``error``.
        syslog: log to the local syslog socket (facility mail) instead of stderr.
        log_format: ``text``, ``json`` or ``postfix`` (docs/logs.md).

    Raises:
        ValueError: ``log_format`` is none of :data:`LOG_FORMATS`.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if log_format == "json":
        # Now: a worker calls this before it drops its privileges, after which it may not be able
        # to read the standard library any more (meta1py.worker imports such modules early too).
        import json  # noqa: F401
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    timestamps = journal = False
    # What syslog would write as the host: the first label of the node name.
    hostname = os.uname().nodename.split(".", 1)[0] or "localhost"
    formatter: logging.Formatter
    if syslog:
        syslog_handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        # syslog adds its own timestamp and host; the ident carries name and pid, except for
        # postfix lines, which carry their own tag (the program differs from line to line).
        if log_format == "postfix":
            syslog_handler.ident = ""
            formatter = _PostfixFormatter(process_name, with_header=False)
        else:
            syslog_handler.ident = f"meta1py/{process_name}[{os.getpid()}]: "
            if log_format == "json":
                formatter = _JsonFormatter(process_name)
            else:
                formatter = _ProcessFormatter(process_name, with_prefix=False)
        handler = syslog_handler
    else:
        handler = logging.StreamHandler(sys.stderr)
        journal = stream_is_journal(sys.stderr)
        timestamps = not journal
        if log_format == "json":
            formatter = _JsonFormatter(process_name, journal=journal)
        elif log_format == "postfix":
            formatter = _PostfixFormatter(process_name, journal=journal, hostname=hostname)
        else:
            formatter = _ProcessFormatter(process_name, timestamps=timestamps, journal=journal)
    handler.setFormatter(formatter)
    global _output
    _output = _Output(
        process_name=process_name,
        log_format=log_format,
        stream=None if syslog else sys.stderr,
        prefix=f"meta1py/{process_name}[{os.getpid()}]: ",
        timestamps=timestamps,
        journal=journal,
        hostname=hostname,
    )
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


def _pf(value: object) -> str:
    """A field value inside a postfix line: as it is, cut, and never with a line break in it."""
    if value is None:
        return ""
    text = truncate_peer(value) if isinstance(value, bytes) else str(value)
    if len(text) > _DEFAULT_VALUE_LIMIT:
        text = f"{text[:_DEFAULT_VALUE_LIMIT]}..."
    if not text.isprintable():
        # A line break or other control character (from a peer's reply, say): escaped, as the
        # text format does, so that no value can start a line of its own.
        text = text.encode("unicode_escape").decode("ascii")
    return text


def _pf_client(fields: dict[str, Any]) -> str:
    """Postfix's ``name[address]``; the name is ``unknown`` when the event does not carry one."""
    return f"{_pf(fields.get('client_name')) or 'unknown'}[{_pf(fields.get('client')) or 'unknown'}]"


def _pf_relay(transport: str, relay: str) -> str:
    """Postfix's ``relay=``: ``local``, ``none`` (no host answered), or the host."""
    if _PF_AGENTS.get(transport) == "local":
        return "local"
    if not relay or (transport and relay.startswith(f"{transport}:")):
        return "none"  # the route's destination key (smtp:example.com): no host was reached
    if relay.replace(".", "").isdigit() or (":" in relay and not relay.strip(_IPV6_CHARS)):
        return f"{relay}[{relay}]"  # an address with no name: Postfix writes it twice
    return relay


_IPV6_CHARS = "0123456789abcdefABCDEF:."
# The program of a delivery line, by transport (Postfix's delivery agents: local(8) delivers to
# mailboxes, commands and files).
_PF_AGENTS = {"maildir": "local", "pipe": "local", "file": "local", "lmtp": "lmtp", "smtp": "smtp"}
# A notification's words in Postfix's bounce(8) line, by message kind.
_PF_NOTIFICATIONS = {
    "bounce": "sender non-delivery notification",
    "double_bounce": "postmaster non-delivery notification",
    "delay_warning": "sender delay notification",
}


def _default_dsn(status: str) -> str:
    """The DSN code of a delivery line whose event carries none: X.0.0 of its class, as Postfix
    assumes for a reply without one."""
    # Imported here: meta1py.smtp is large, and only the processes that deliver log these lines.
    from meta1py.smtp.status import PERM_UNDEFINED, SUCCESS, TEMP_UNDEFINED

    return {"sent": SUCCESS, "bounced": PERM_UNDEFINED}.get(status, TEMP_UNDEFINED)


def postfix_lines(
    process_name: str, event: str, qid: str | None, fields: dict[str, Any]
) -> list[tuple[str, str]]:
    """The Postfix log lines of one maillog event, as ``(program, text after "program[pid]: ")``.

    Postfix spreads a message's story over several programs (smtpd, qmgr, smtp, local, bounce);
    the mapping, field by field, is in docs/logs.md. An event with no Postfix counterpart is
    written as ``QID: <event> key=value ...`` under the process's own program.
    """
    q = qid or "NOQUEUE"
    own = POSTFIX_PROGRAMS.get(process_name, process_name)
    if event == "connect":
        return [("smtpd", f"connect from {_pf_client(fields)}")]
    if event == "disconnect":
        commands = f" {_pf(fields['commands'])}" if fields.get("commands") else ""
        return [("smtpd", f"disconnect from {_pf_client(fields)}{commands}")]
    if event in ("lost", "timeout"):
        what = "lost connection" if event == "lost" else "timeout"
        return [("smtpd", f"{what} after {_pf(fields.get('after')) or 'CONNECT'} from {_pf_client(fields)}")]
    if event == "queued":
        lines = []
        if "client" in fields:
            lines.append(("smtpd", f"{q}: client={_pf_client(fields)}"))
        origin = fields.get("origin")
        if origin == "pickup":
            # Submitted locally (meta1 sendmail): Postfix's pickup line, which pflogsumm counts
            # as received.
            lines.append(("pickup", f"{q}: uid={_pf(fields.get('uid'))} from=<{_pf(fields.get('sender'))}>"))
        elif origin:
            words = _PF_NOTIFICATIONS.get(str(fields.get("kind")), "sender delivery status notification")
            lines.append(("bounce", f"{_pf(origin)}: {words}: {q}"))
        lines.append(
            (
                "qmgr",
                f"{q}: from=<{_pf(fields.get('sender'))}>, size={_pf(fields.get('size', 0))}, "
                f"nrcpt={_pf(fields.get('nrcpt', 0))} (queue active)",
            )
        )
        return lines
    if event in ("rejected", "discarded"):
        if "rcpt" in fields:
            stage = "RCPT"
        elif fields.get("reason") == "pregreet":
            stage = "CONNECT"
        else:
            stage = "END-OF-MESSAGE" if qid else "DATA"
        why = _pf(fields.get("reply") or fields.get("reason"))
        tail = []
        if "sender" in fields:
            tail.append(f"from=<{_pf(fields['sender'])}>")
        if "rcpt" in fields:
            tail.append(f"to=<{_pf(fields['rcpt'])}>")
        if "proto" in fields:
            tail.append(f"proto={_pf(fields['proto'])}")
        if "helo" in fields:
            tail.append(f"helo=<{_pf(fields['helo'])}>")
        action = "reject" if event == "rejected" else "discard"
        text = f"{q}: {action}: {stage} from {_pf_client(fields)}: {why}"
        if tail:
            text = f"{text}; {' '.join(tail)}"
        if event == "discarded":
            # The client was told 250: Postfix's smtpd has logged the message as received.
            return [("smtpd", f"{q}: client={_pf_client(fields)}"), ("smtpd", text)]
        return [("smtpd", text)]
    if event in ("delivered", "bounced", "deferred"):
        status = {"delivered": "sent", "bounced": "bounced", "deferred": "deferred"}[event]
        transport = _pf(fields.get("transport"))
        relay = _pf_relay(transport, _pf(fields.get("relay")))
        dsn = _pf(fields.get("dsn")) or _default_dsn(status)
        why = _pf(fields.get("reply") or fields.get("reason"))
        # Postfix's delays=a/b/c/d (postfix_exporter reads delivery lines only with it).
        delays = f"delays={_pf(fields['delays'])}, " if fields.get("delays") else ""
        return [
            (
                _PF_AGENTS.get(transport, "smtp"),
                f"{q}: to=<{_pf(fields.get('to'))}>, relay={relay}, delay={_pf(fields.get('delay')) or '0'}, "
                f"{delays}dsn={dsn}, status={status} ({why})",
            )
        ]
    if event == "tls":
        bits = _pf(fields.get("bits"))
        trust = _pf(fields.get("trust")).capitalize()
        text = f"{trust} TLS connection established from {_pf_client(fields)}: {_pf(fields.get('protocol'))}"
        return [("smtpd", f"{text} with cipher {_pf(fields.get('cipher'))} ({bits}/{bits} bits)")]
    if event == "auth_failed":
        # Postfix's smtpd logs a failed AUTH as a warning, with the SASL library's reason.
        text = f"warning: {_pf_client(fields)}: SASL {_pf(fields.get('mechanism'))} authentication failed: "
        text += "authentication failure"
        if fields.get("user"):
            text += f", sasl_username={_pf(fields['user'])}"
        return [("smtpd", text)]
    if event == "requeued":
        if "to" not in fields:  # by the operator, as Postfix's postsuper -r logs it
            return [("postsuper", f"{q}: requeued")]
        # The delivery agent went away: not a deferral (which would blame the destination), so
        # written in a form pflogsumm does not count (no delay= or status=).
        return [("qmgr", f"{q}: to=<{_pf(fields['to'])}>, requeued ({_pf(fields.get('reason'))})")]
    if event == "removed":
        # Removed by an operator: Postfix's postsuper says so; otherwise qmgr at the end of delivery.
        return [("postsuper" if "reason" in fields else "qmgr", f"{q}: removed")]
    parts = [event, *(f"{key}={format_value(value)}" for key, value in fields.items())]
    return [(own, f"{q}: {' '.join(parts)}")]


def event_fields(event: str, qid: str | None = None, **fields: object) -> dict[str, object]:
    """``extra=`` for a log record that is also an event: the text line stays as it is, the json
    format adds the fields (as a maillog event's) and the postfix format writes Postfix's line.

    ``log.info("session %s: authentication failed ...", ..., extra=event_fields("auth_failed",
    client=ip, mechanism="PLAIN", user=name))`` becomes Postfix's ``warning: unknown[ip]: SASL
    PLAIN authentication failed: ...``, which fail2ban's postfix-sasl jail counts.
    """
    return {"meta1_event": (event, qid, fields)}


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
    out = _output
    if out.log_format == "postfix":
        _maillog_postfix(out, event, qid, fields)
        return
    parts = [event, f"qid={format_value(qid)}"]
    parts.extend(f"{key}={format_value(value)}" for key, value in fields.items())
    text = " ".join(parts)
    stream = out.stream
    if out.log_format == "json":
        if stream is not None:
            obj = json_object(
                out.process_name, os.getpid(), logging.INFO, time.time(), text, (event, qid, fields)
            )
            line = _json_line(obj)
            if _write(stream, f"<6>{line}\n" if out.journal else f"{line}\n"):
                return
        _maillog_logger.info("%s", text, extra={"meta1_event": (event, qid, fields)})
        return
    if stream is not None:
        # The common case (stderr): the same line the handler would write, without building a
        # LogRecord; maillog lines are a large part of qmgr's logging work.
        line = f"{out.prefix}info: {text}\n"
        if out.timestamps:
            now_ns = time.time_ns()
            line = f"{format_timestamp(now_ns // 1_000_000_000, now_ns // 1_000_000 % 1000)} {line}"
        elif out.journal:
            line = f"<6>{line}"
        if _write(stream, line):
            return
    _maillog_logger.info("%s", text)


def _maillog_postfix(out: _Output, event: str, qid: str | None, fields: dict[str, Any]) -> None:
    lines = postfix_lines(out.process_name, event, qid, fields)
    stream = out.stream
    if stream is not None:
        head = f"{'<6>' if out.journal else ''}{format_syslog_timestamp(int(time.time()))} {out.hostname} "
        pid = os.getpid()
        if _write(stream, "".join(f"{head}postfix/{program}[{pid}]: {text}\n" for program, text in lines)):
            return
    for program, text in lines:
        _maillog_logger.info("%s", text, extra={"postfix_program": program})


def _write(stream: TextIO, text: str) -> bool:
    try:
        stream.write(text)
        stream.flush()
        return True
    except (OSError, ValueError):
        return False
