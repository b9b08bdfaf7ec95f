"""Timestamps on stderr log lines (meta1py.log), and their absence when journald reads stderr.

Each test points ``sys.stderr`` at a real file (``stream_is_journal`` needs a file descriptor),
calls ``setup_logging`` and reads back what was written. The ``logging_to`` fixture puts the root
logger's handlers and meta1py.log's fast-path state back afterwards, so pytest's own log capture is
not disturbed.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO

import pytest

import meta1py.log as meta1_log
from meta1py.log import format_timestamp, maillog, setup_logging, stream_is_journal

# "<timestamp> meta1py/<name>[<pid>]: <level>: <message>"
_LINE = re.compile(
    r"(?P<ts>\S+) (?P<rest>meta1py/(?P<name>\w+)\[(?P<pid>\d+)\]: (?P<level>\w+): (?P<msg>.*))"
)
# RFC 3339 with exactly three fractional digits and a numeric offset (never "Z").
_RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}")

SetupLogging = Callable[..., Path]


@pytest.fixture
def logging_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SetupLogging]:
    """``logging_to(journal=...)``: run setup_logging with stderr on a file; return the file.

    ``journal=True`` sets ``JOURNAL_STREAM`` to that file's device and inode (what systemd does
    when stderr is the journal); ``journal="other"`` to another file's; ``None`` unsets it.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_output = meta1_log._output
    files: list[TextIO] = []

    def setup(journal: bool | str | None = None, syslog: bool = False) -> Path:
        path = tmp_path / "stderr.log"
        stream = open(path, "w", encoding="utf-8")  # closed by the fixture
        files.append(stream)
        monkeypatch.setattr(sys, "stderr", stream)
        if journal is True:
            st = os.fstat(stream.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        elif journal == "other":
            other = tmp_path / "other"
            other.write_text("")
            st = other.stat()
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        for handler in list(root.handlers):
            root.removeHandler(handler)  # setup_logging would close pytest's handlers otherwise
        setup_logging("qmgr", "info", syslog=syslog)
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


def _parse(line: str) -> tuple[datetime, re.Match[str]]:
    match = _LINE.fullmatch(line)
    assert match, f"not a timestamped log line: {line!r}"
    assert _RFC3339_MS.fullmatch(match["ts"]), f"not RFC 3339 with milliseconds: {match['ts']!r}"
    stamp = datetime.fromisoformat(match["ts"])
    assert stamp.tzinfo is not None
    return stamp, match


def test_log_line_starts_with_a_parseable_timestamp(logging_to: SetupLogging) -> None:
    path = logging_to()
    before = time.time()
    logging.getLogger("meta1py.qmgr").warning("disk %s is slow", "sda")
    after = time.time()
    [line] = _lines(path)
    stamp, match = _parse(line)
    # The line after the timestamp is unchanged, so existing greps keep working.
    assert match["rest"] == f"meta1py/qmgr[{os.getpid()}]: warning: disk sda is slow"
    # Milliseconds are truncated, not rounded: the stamp is within [before - 1 ms, after].
    assert before - 0.001 <= stamp.timestamp() <= after
    # Local time with the local offset.
    assert stamp.utcoffset() == timedelta(seconds=time.localtime(int(stamp.timestamp())).tm_gmtoff)


def test_no_timestamp_when_journal_stream_is_stderr(logging_to: SetupLogging) -> None:
    # journald records the time; the line starts with its priority instead (sd-daemon(3)), which
    # journald takes off (tests/unit/test_log_lines.py has every level).
    path = logging_to(journal=True)
    logging.getLogger("meta1py.qmgr").info("hello")
    maillog("queued", "2H55H7URQ8PE", nrcpt=1)
    assert _lines(path) == [
        f"<6>meta1py/qmgr[{os.getpid()}]: info: hello",
        f"<6>meta1py/qmgr[{os.getpid()}]: info: queued qid=2H55H7URQ8PE nrcpt=1",
    ]


def test_timestamp_when_journal_stream_names_another_file(logging_to: SetupLogging) -> None:
    # An inherited JOURNAL_STREAM whose stderr was redirected elsewhere: journald does not read
    # this stream, so nothing else will timestamp it.
    path = logging_to(journal="other")
    logging.getLogger("meta1py.qmgr").info("hello")
    [line] = _lines(path)
    _stamp, match = _parse(line)
    assert match["msg"] == "hello"


@pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "1:2:3"])
def test_malformed_journal_stream_means_not_the_journal(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", value)
    with open(tmp_path / "f", "w") as stream:
        assert not stream_is_journal(stream)


def test_stream_without_a_descriptor_is_not_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not stream_is_journal(io.StringIO())


def test_maillog_fast_path_has_the_timestamp(logging_to: SetupLogging) -> None:
    path = logging_to()
    assert meta1_log._output.stream is sys.stderr, "maillog should take its fast path here"
    before = time.time()
    maillog("delivered", "2H55H7URQ8PE", to="alice@localhost", relay="maildir")
    after = time.time()
    [line] = _lines(path)
    stamp, match = _parse(line)
    assert match["rest"] == (
        f"meta1py/qmgr[{os.getpid()}]: info: delivered qid=2H55H7URQ8PE to=alice@localhost relay=maildir"
    )
    assert before - 0.001 <= stamp.timestamp() <= after


def test_handler_and_fast_path_lines_look_alike(logging_to: SetupLogging) -> None:
    path = logging_to()
    maillog("queued", "2H55H7URQ8PE", nrcpt=1)
    meta1_log._output = meta1_log._output.replace(stream=None)  # the logging-handler path, same event
    maillog("queued", "2H55H7URQ8PE", nrcpt=1)
    first, second = (_parse(line)[1]["rest"] for line in _lines(path))
    assert first == second


def test_syslog_lines_have_no_timestamp(logging_to: SetupLogging) -> None:
    logging_to(syslog=True)
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.handlers.SysLogHandler)
    record = logging.LogRecord("meta1py.qmgr", logging.INFO, __file__, 1, "hello", None, None)
    assert handler.format(record) == "info: hello"
    assert meta1_log._output.stream is None


def test_timestamp_format_and_second_cache() -> None:
    second = int(time.time())
    first = format_timestamp(second, 7)
    again = format_timestamp(second, 999)
    assert _RFC3339_MS.fullmatch(first) and _RFC3339_MS.fullmatch(again)
    # Same second: only the milliseconds differ.
    assert first[:19] == again[:19] and first[-6:] == again[-6:]
    assert (first[19:23], again[19:23]) == (".007", ".999")
    parsed = datetime.fromisoformat(first)
    assert (int(parsed.timestamp()), parsed.microsecond) == (second, 7000)
    # The next second is formatted afresh, not served from the cache.
    assert datetime.fromisoformat(format_timestamp(second + 1, 0)).timestamp() == second + 1
