"""The three log formats (``log_format = text|json|postfix``) and journald's priority prefixes.

As in test_log_timestamps.py, each test points ``sys.stderr`` at a real file (journald is
recognised by the file's device and inode), calls ``setup_logging`` and reads back what a reader
of that stream would get: journald, a JSON log shipper, pflogsumm. The Postfix lines are checked
against the real pflogsumm and fail2ban in tests/e2e/test_log_formats.py; here, the mapping of
each maillog event and the line layout.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import pytest

import meta1py.log as meta1_log
from meta1py.conf import ConfigErrors, parse_config
from meta1py.conf.model import LOG_FORMATS as CONF_LOG_FORMATS
from meta1py.log import (
    JSON_BASE_FIELDS,
    JSON_MAILLOG_FIELDS,
    LOG_FORMATS,
    event_fields,
    format_syslog_timestamp,
    maillog,
    postfix_lines,
    setup_logging,
)

PID = os.getpid()
HOST = os.uname().nodename.split(".", 1)[0]
# syslog(3)'s time stamp as Postfix's log files have it.
SYSLOG_TIME = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 1-3]\d \d\d:\d\d:\d\d"

SetupLogging = Callable[..., Path]


@pytest.fixture
def logging_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SetupLogging]:
    """``logging_to(log_format, journal=..., syslog=..., level=..., name=...)``: setup_logging
    with stderr on a file (``journal=True``: the file is journald's stream); returns the file."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_output = meta1_log._output
    files: list[TextIO] = []

    def setup(
        log_format: str = "text",
        journal: bool = False,
        syslog: bool = False,
        level: str = "info",
        name: str = "qmgr",
    ) -> Path:
        path = tmp_path / "stderr.log"
        stream = open(path, "w", encoding="utf-8")  # closed by the fixture
        files.append(stream)
        monkeypatch.setattr(sys, "stderr", stream)
        if journal:
            st = os.fstat(stream.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        for handler in list(root.handlers):
            root.removeHandler(handler)  # setup_logging would close pytest's handlers otherwise
        setup_logging(name, level, syslog=syslog, log_format=log_format)
        return path

    yield setup
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)
    meta1_log._output = saved_output
    for stream in files:
        stream.close()


def _lines(path: Path) -> list[str]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return path.read_text(encoding="utf-8").splitlines()


def _log_every_level() -> None:
    logger = logging.getLogger("meta1py.qmgr")
    logger.debug("a protocol trace")
    logger.info("a session")
    logger.warning("a recoverable problem")
    logger.error("a failure")
    logger.critical("about to exit")
    maillog("removed", "2H55H7URQ8PE")


# -- journald -------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_journal_lines_start_with_their_priority(logging_to: SetupLogging, log_format: str) -> None:
    # sd-daemon(3): <7> debug, <6> info, <4> warning, <3> error, <2> critical; journald takes the
    # prefix off and files the line under that priority, so `journalctl -p err` finds errors.
    path = logging_to(log_format, journal=True, level="debug")
    _log_every_level()
    lines = _lines(path)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>", "<6>"]
    assert "a failure" in lines[3]
    if log_format == "json":
        assert json.loads(lines[3][3:])["level"] == "error"
    else:
        assert not re.match(r"<\d>\d{4}-", lines[3]), "journald records its own time"


@pytest.mark.parametrize("log_format", ["text", "postfix"])
def test_journal_traceback_lines_are_all_errors(logging_to: SetupLogging, log_format: str) -> None:
    # journald stores each line of a multi-line message as an entry of its own.
    path = logging_to(log_format, journal=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("meta1py.qmgr").exception("delivery loop crashed")
    lines = _lines(path)
    assert len(lines) > 3 and any("RuntimeError: boom" in line for line in lines)
    assert all(line.startswith("<3>") for line in lines), lines


def test_no_priority_prefix_off_the_journal(logging_to: SetupLogging) -> None:
    path = logging_to("text")
    logging.getLogger("meta1py.qmgr").error("a failure")
    [line] = _lines(path)
    assert not line.startswith("<")
    assert line.endswith(f"meta1py/qmgr[{PID}]: error: a failure")


# -- json -----------------------------------------------------------------------------------------


def _objects(path: Path) -> list[dict[str, Any]]:
    objects = []
    for line in _lines(path):
        obj = json.loads(line)  # every line is one JSON object
        assert isinstance(obj, dict), line
        objects.append(obj)
    return objects


def test_json_every_line_is_an_object_with_stable_fields(logging_to: SetupLogging) -> None:
    path = logging_to("json", name="smtps")
    before = time.time()
    logging.getLogger("meta1py.smtps").warning("session %s: slow client", "64e2.1")
    maillog(
        "queued",
        "2H55H7URQ8PE",
        session="64e2.1",
        client="192.0.2.1",
        helo="client.example",
        sender="a@example.org",
        nrcpt=2,
        size=1234,
    )
    maillog(
        "delivered",
        "2H55H7URQ8PE",
        to="b@example.net",
        relay="mx.example.net",
        status="sent",
        delay="1.25",
        reply="250 2.0.0 ok",
        dsn="2.0.0",
    )
    maillog("rejected", None, session="64e2.2", client="192.0.2.9", sender="", rcpt="x@elsewhere.test")
    after = time.time()
    plain, queued, delivered, rejected = _objects(path)

    assert list(plain) == list(JSON_BASE_FIELDS)
    assert plain["process"] == "smtps" and plain["pid"] == PID and plain["level"] == "warning"
    assert plain["message"] == "session 64e2.1: slow client"
    stamp = datetime.fromisoformat(plain["time"])
    assert stamp.tzinfo is not None and before - 0.001 <= stamp.timestamp() <= after

    for obj in (queued, delivered, rejected):
        # The common fields come first, in a fixed order, present even when the event lacks them.
        assert list(obj)[: len(JSON_BASE_FIELDS) + len(JSON_MAILLOG_FIELDS)] == [
            *JSON_BASE_FIELDS,
            *JSON_MAILLOG_FIELDS,
        ]
        assert obj["level"] == "info"
    assert queued["event"] == "queued" and queued["queue_id"] == "2H55H7URQ8PE"
    assert (queued["session_id"], queued["client"], queued["from"]) == (
        "64e2.1",
        "192.0.2.1",
        "a@example.org",
    )
    assert (queued["nrcpt"], queued["size"], queued["helo"]) == (2, 1234, "client.example")
    assert queued["to"] is None and queued["delay"] is None
    # The message is the text format's maillog line: greps written for it still work on it.
    assert queued["message"].startswith("queued qid=2H55H7URQ8PE session=64e2.1 client=192.0.2.1")
    assert delivered["to"] == "b@example.net" and delivered["relay"] == "mx.example.net"
    assert (delivered["status"], delivered["dsn"], delivered["delay"]) == ("sent", "2.0.0", 1.25)
    assert rejected["queue_id"] is None and rejected["to"] == "x@elsewhere.test" and rejected["from"] == ""


def test_json_handler_and_fast_path_agree(logging_to: SetupLogging) -> None:
    path = logging_to("json")
    maillog("deferred", "2H55H7URQ8PE", to="b@example.net", status="deferred", delay="3.00")
    meta1_log._output = meta1_log._output.replace(stream=None)  # through the logging handler
    maillog("deferred", "2H55H7URQ8PE", to="b@example.net", status="deferred", delay="3.00")
    first, second = _objects(path)
    del first["time"], second["time"]
    assert first == second


def test_json_values_stay_on_one_line_and_bounded(logging_to: SetupLogging) -> None:
    path = logging_to("json")
    maillog(
        "rejected",
        None,
        helo=b'evil\r\n{"level": "error"}' + b"x" * 500,
        reply="550 5.7.1 first line\nsecond line",
        time="not the time",
    )
    logging.getLogger("meta1py.qmgr").info("line one\nline two")
    [event, plain] = _objects(path)
    assert event["helo"].startswith("b'evil\\r\\n") and len(event["helo"]) < 300
    assert event["reply"] == "550 5.7.1 first line\nsecond line"
    # A field never hides the line's own time.
    assert event["time_"] == "not the time" and datetime.fromisoformat(event["time"])
    assert plain["message"] == "line one\nline two"


def test_json_to_syslog_has_the_object_as_message(logging_to: SetupLogging) -> None:
    logging_to("json", syslog=True)
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.handlers.SysLogHandler)
    assert handler.ident == f"meta1py/qmgr[{PID}]: "
    record = logging.LogRecord("meta1py.qmgr", logging.ERROR, __file__, 1, "disk %s", ("full",), None)
    obj = json.loads(handler.format(record))
    assert (obj["level"], obj["message"], obj["process"]) == ("error", "disk full", "qmgr")


# -- postfix --------------------------------------------------------------------------------------


def test_postfix_lines_on_stderr(logging_to: SetupLogging) -> None:
    path = logging_to("postfix", level="debug")
    _log_every_level()
    lines = _lines(path)
    prefix = rf"{SYSLOG_TIME} {re.escape(HOST)} postfix/qmgr\[{PID}\]: "
    expected = [
        "a protocol trace",
        "a session",
        "warning: a recoverable problem",  # Postfix's msg_warn, msg_error and msg_fatal
        "error: a failure",
        "fatal: about to exit",
        "2H55H7URQ8PE: removed",
    ]
    assert len(lines) == len(expected)
    for line, text in zip(lines, expected, strict=True):
        assert re.fullmatch(prefix + re.escape(text), line), line


def test_postfix_maillog_names_the_program_of_each_line(logging_to: SetupLogging) -> None:
    path = logging_to("postfix", name="smtps")
    maillog("queued", "2H55H7URQ8PE", session="1", client="192.0.2.1", sender="a@b.example", nrcpt=1, size=9)
    fast = _lines(path)
    meta1_log._output = meta1_log._output.replace(stream=None)  # the same through the handler
    maillog("queued", "2H55H7URQ8PE", session="1", client="192.0.2.1", sender="a@b.example", nrcpt=1, size=9)
    handler = _lines(path)[len(fast) :]
    for lines in (fast, handler):
        assert [re.sub(rf"^{SYSLOG_TIME} {re.escape(HOST)} ", "", line) for line in lines] == [
            f"postfix/smtpd[{PID}]: 2H55H7URQ8PE: client=unknown[192.0.2.1]",
            f"postfix/qmgr[{PID}]: 2H55H7URQ8PE: from=<a@b.example>, size=9, nrcpt=1 (queue active)",
        ]


def test_postfix_to_syslog_tags_each_line(logging_to: SetupLogging) -> None:
    # syslog adds time and host; the tag (postfix/<program>[pid]) is part of each message, because
    # one process writes lines of several Postfix programs.
    logging_to("postfix", syslog=True, name="smtps")
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.handlers.SysLogHandler)
    assert handler.ident == ""
    record = logging.LogRecord("meta1py.smtps", logging.WARNING, __file__, 1, "slow %s", ("disk",), None)
    assert handler.format(record) == f"postfix/smtpd[{PID}]: warning: slow disk"
    record = logging.LogRecord("meta1py.maillog", logging.INFO, __file__, 1, "QID: removed", None, None)
    record.postfix_program = "qmgr"
    assert handler.format(record) == f"postfix/qmgr[{PID}]: QID: removed"


def test_syslog_timestamp_layout() -> None:
    second = int(time.mktime((2026, 12, 3, 7, 12, 44, 0, 0, -1)))
    assert format_syslog_timestamp(second) == "Dec  3 07:12:44"  # day padded with a space
    assert format_syslog_timestamp(second + 10 * 86400) == "Dec 13 07:12:44"


Q = "2H55H7URQ8PE"
CLIENT = {"session": "64e2.1", "client": "192.0.2.1"}


@pytest.mark.parametrize(
    ("process", "event", "qid", "fields", "expected"),
    [
        ("smtps", "connect", None, CLIENT, [("smtpd", "connect from unknown[192.0.2.1]")]),
        (
            "smtps",
            "disconnect",
            None,
            {**CLIENT, "messages": 1, "client_name": "mail.example.org"},
            [("smtpd", "disconnect from mail.example.org[192.0.2.1]")],
        ),
        (
            "smtps",
            "disconnect",
            None,
            {**CLIENT, "messages": 0, "commands": "ehlo=2 starttls=1 auth=0/1 quit=1 commands=4/5"},
            [("smtpd", "disconnect from unknown[192.0.2.1] ehlo=2 starttls=1 auth=0/1 quit=1 commands=4/5")],
        ),
        (
            "smtps",
            "lost",
            None,
            {**CLIENT, "after": "RCPT"},
            [("smtpd", "lost connection after RCPT from unknown[192.0.2.1]")],
        ),
        (
            "smtps",
            "timeout",
            None,
            {**CLIENT, "after": "DATA"},
            [("smtpd", "timeout after DATA from unknown[192.0.2.1]")],
        ),
        (
            "smtps",
            "rejected",
            None,
            {
                **CLIENT,
                "sender": "a@b.example",
                "rcpt": "x@y.example",
                "reply": "554 5.7.1 <x@y.example>: Relay access denied",
                "helo": "h.example",
                "proto": "ESMTP",
            },
            [
                (
                    "smtpd",
                    "NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 <x@y.example>: Relay access "
                    "denied; from=<a@b.example> to=<x@y.example> proto=ESMTP helo=<h.example>",
                )
            ],
        ),
        (
            "smtps",
            "rejected",
            None,
            {
                **CLIENT,
                "reason": "pregreet",
                "reply": "554 5.5.1 Protocol error: talking before the greeting",
            },
            [
                (
                    "smtpd",
                    "NOQUEUE: reject: CONNECT from unknown[192.0.2.1]: "
                    "554 5.5.1 Protocol error: talking before the greeting",
                )
            ],
        ),
        (
            "smtps",
            "rejected",
            Q,
            {**CLIENT, "sender": "", "nrcpt": 1, "reply": "550 5.7.1 spam"},
            [("smtpd", f"{Q}: reject: END-OF-MESSAGE from unknown[192.0.2.1]: 550 5.7.1 spam; from=<>")],
        ),
        (
            "smtps",
            "discarded",
            Q,
            {**CLIENT, "sender": "a@b.example", "nrcpt": 1, "reason": "access map"},
            [
                ("smtpd", f"{Q}: client=unknown[192.0.2.1]"),
                (
                    "smtpd",
                    f"{Q}: discard: END-OF-MESSAGE from unknown[192.0.2.1]: access map; from=<a@b.example>",
                ),
            ],
        ),
        (
            "qmgr",
            "queued",
            "2H55BOUNCE00",
            {"sender": "", "nrcpt": 1, "size": 2048, "origin": Q, "kind": "bounce"},
            [
                ("bounce", f"{Q}: sender non-delivery notification: 2H55BOUNCE00"),
                ("qmgr", "2H55BOUNCE00: from=<>, size=2048, nrcpt=1 (queue active)"),
            ],
        ),
        (
            "qmgr",
            "queued",
            Q,
            {"origin": "pickup", "uid": 1000, "sender": "u@localhost", "nrcpt": 1, "size": 300},
            [
                ("pickup", f"{Q}: uid=1000 from=<u@localhost>"),
                ("qmgr", f"{Q}: from=<u@localhost>, size=300, nrcpt=1 (queue active)"),
            ],
        ),
        (
            "qmgr",
            "delivered",
            Q,
            {
                "to": "b@example.net",
                "relay": "mx.example.net[198.51.100.7]:25",
                "status": "sent",
                "delay": "1.25",
                "reply": "250 2.0.0 ok",
                "dsn": "2.0.0",
                "transport": "lmtp",
            },
            [
                (
                    "lmtp",
                    f"{Q}: to=<b@example.net>, relay=mx.example.net[198.51.100.7]:25, delay=1.25, dsn=2.0.0, "
                    "status=sent (250 2.0.0 ok)",
                )
            ],
        ),
        (
            "qmgr",
            "delivered",
            Q,
            {
                "to": "u@localhost",
                "relay": "maildir",
                "delay": "0.02",
                "reply": "250 2.0.0 ok",
                "transport": "maildir",
            },
            [
                (
                    "local",
                    f"{Q}: to=<u@localhost>, relay=local, delay=0.02, dsn=2.0.0, status=sent (250 2.0.0 ok)",
                )
            ],
        ),
        (
            "qmgr",
            "bounced",
            Q,
            {"to": "g@example.net", "relay": "192.0.2.5", "status": "expired", "reply": "450 4.2.1 later"},
            [
                (
                    "smtp",
                    f"{Q}: to=<g@example.net>, relay=192.0.2.5[192.0.2.5], delay=0, dsn=5.0.0, "
                    "status=bounced (450 4.2.1 later)",
                )
            ],
        ),
        (
            "qmgr",
            "deferred",
            Q,
            {
                "to": "l@example.net",
                "relay": "192.0.2.5",
                "status": "deferred",
                "reason": "450 4.2.1 try later",
                "dsn": "4.2.1",
                "delay": "9.00",
                "delays": "0/8.5/0/0.52",
            },
            [
                (
                    "smtp",
                    f"{Q}: to=<l@example.net>, relay=192.0.2.5[192.0.2.5], delay=9.00, delays=0/8.5/0/0.52, "
                    "dsn=4.2.1, status=deferred (450 4.2.1 try later)",
                )
            ],
        ),
        (
            "smtps",
            "tls",
            None,
            {
                **CLIENT,
                "protocol": "TLSv1.3",
                "cipher": "TLS_AES_256_GCM_SHA384",
                "bits": 256,
                "trust": "anonymous",
            },
            [
                (
                    "smtpd",
                    "Anonymous TLS connection established from unknown[192.0.2.1]: TLSv1.3 with cipher "
                    "TLS_AES_256_GCM_SHA384 (256/256 bits)",
                )
            ],
        ),
        (
            "qmgr",
            "deferred",
            Q,
            {"to": "l@example.net", "status": "deferred", "reason": "451 4.4.1 no answer", "delay": "9.00"},
            [
                (
                    "smtp",
                    f"{Q}: to=<l@example.net>, relay=none, delay=9.00, dsn=4.0.0, "
                    "status=deferred (451 4.4.1 no answer)",
                )
            ],
        ),
        (
            "qmgr",
            "delivered",
            Q,
            {
                "to": "u@localhost",
                "relay": "pipe:u",
                "delay": "0.30",
                "reply": "250 2.0.0 ok",
                "transport": "pipe",
            },
            [
                (
                    "local",
                    f"{Q}: to=<u@localhost>, relay=local, delay=0.30, dsn=2.0.0, status=sent (250 2.0.0 ok)",
                )
            ],
        ),
        ("qmgr", "removed", Q, {}, [("qmgr", f"{Q}: removed")]),
        ("qmgr", "removed", Q, {"reason": "deleted by operator"}, [("postsuper", f"{Q}: removed")]),
        ("qmgr", "requeued", Q, {"reason": "requeued by operator"}, [("postsuper", f"{Q}: requeued")]),
        (
            "qmgr",
            "requeued",
            Q,
            {"to": "b@example.net", "relay": "smtp:example.net", "reason": "delivery agent unavailable"},
            [("qmgr", f"{Q}: to=<b@example.net>, requeued (delivery agent unavailable)")],
        ),
        # An event with no Postfix counterpart keeps its key=value fields.
        ("smtps", "quarantined", Q, {"reason": "virus"}, [("smtpd", f"{Q}: quarantined reason=virus")]),
    ],
)
def test_postfix_line_of_each_event(
    process: str, event: str, qid: str | None, fields: dict[str, object], expected: list[tuple[str, str]]
) -> None:
    assert postfix_lines(process, event, qid, fields) == expected


@pytest.mark.parametrize(
    ("transport", "relay", "expected"),
    [
        ("smtp", "mx.example.net", "mx.example.net"),
        ("smtp", "192.0.2.5", "192.0.2.5[192.0.2.5]"),
        ("smtp", "2001:db8::5", "2001:db8::5[2001:db8::5]"),
        ("smtp", "cafe.example", "cafe.example"),
        ("smtp", "smtp:example.net", "none"),  # no host answered: the route's key stands in
        ("smtp", "", "none"),
        ("lmtp", "store[192.0.2.9]:24", "store[192.0.2.9]:24"),
        ("maildir", "maildir", "local"),
        ("file", "file:bob", "local"),
    ],
)
def test_postfix_relay(transport: str, relay: str, expected: str) -> None:
    [(_program, text)] = postfix_lines(
        "qmgr", "delivered", Q, {"to": "u@x", "relay": relay, "transport": transport}
    )
    assert f", relay={expected}, " in text


def test_postfix_values_cannot_start_a_line() -> None:
    [(_program, text)] = postfix_lines(
        "qmgr", "bounced", Q, {"to": "g@example.net", "reply": "550 5.1.1 no\r\nJan  1 00:00:00 h postfix/x"}
    )
    assert "\n" not in text and "\r" not in text
    assert text.endswith("(550 5.1.1 no\\r\\nJan  1 00:00:00 h postfix/x)")


# -- a log record that is also an event ----------------------------------------------------------


def _auth_failure() -> None:
    logging.getLogger("meta1py.smtps.session").info(
        "session %s: authentication failed user=%r mechanism=%s client=%s",
        "64e2.1",
        "alice",
        "PLAIN",
        "192.0.2.1",
        extra=event_fields(
            "auth_failed", session="64e2.1", client="192.0.2.1", mechanism="PLAIN", user="alice"
        ),
    )


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_auth_failure_in_each_format(logging_to: SetupLogging, log_format: str) -> None:
    path = logging_to(log_format, name="smtps")
    _auth_failure()
    [line] = _lines(path)
    if log_format == "text":  # unchanged by the event
        assert line.endswith(
            f"meta1py/smtps[{PID}]: info: session 64e2.1: authentication failed user='alice' "
            "mechanism=PLAIN client=192.0.2.1"
        )
    elif log_format == "json":
        obj = json.loads(line)
        assert (obj["event"], obj["session_id"], obj["client"]) == ("auth_failed", "64e2.1", "192.0.2.1")
        assert (obj["mechanism"], obj["user"]) == ("PLAIN", "alice")
        assert obj["message"].startswith("session 64e2.1: authentication failed")
    else:
        # What fail2ban's postfix filter (mode auth, aggressive) looks for.
        assert re.fullmatch(
            rf"{SYSLOG_TIME} {re.escape(HOST)} postfix/smtpd\[{PID}\]: warning: unknown\[192\.0\.2\.1\]: "
            r"SASL PLAIN authentication failed: authentication failure, sasl_username=alice",
            line,
        ), line


# -- the option -----------------------------------------------------------------------------------


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log_format must be one of text, json, postfix"):
        setup_logging("qmgr", "info", log_format="xml")


def test_log_format_option() -> None:
    assert CONF_LOG_FORMATS.values == LOG_FORMATS
    assert parse_config("").log_format == "text"
    assert parse_config("log_format = JSON;").log_format == "json"
    with pytest.raises(ConfigErrors) as caught:
        parse_config("log_format = postfx;", path="meta1.conf")
    assert str(caught.value).startswith("meta1.conf:1:14: log_format: invalid value 'postfx'\n")
    assert "did you mean 'postfix'?" in str(caught.value)
