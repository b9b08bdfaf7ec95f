"""Transcript tests: every ``tests/data/dialogs/*.dlg`` run through the server core.

Format, one item per line:

* ``# ...`` comment; blank lines are ignored.
* ``! key value...`` server options before the first ``C:`` line:
  ``! ext FLAG...`` (smtps flag names, see Extensions.from_flags; ``auth``
  offers PLAIN), ``! max_recipients N``, ``! max_bad_commands N``,
  ``! max_message_bytes N``, ``! max_line_bytes N``, ``! max_command_bytes N``,
  ``! bare_newline normalize``, ``! lmtp``.
* ``C: text`` the client sends ``text`` + CRLF. Consecutive ``C:``/``R:`` lines
  are sent as one pipelined block.
* ``R: text`` raw bytes with Python escapes (``\\n``, ``\\r``, ``\\x00``), no CRLF added;
  ``R: <EOF>`` closes the client side.
* ``S: text`` the next reply line the server must send (exact, without CRLF).
* ``= closed`` the session must be over; ``= message N`` the last accepted
  message's content must equal the Python-escaped bytes N.

The whole transcript is run twice: block by block, and byte by byte; the
server's output must be the same.
"""

from __future__ import annotations

import ast
import pathlib

import pytest
from smtp_policy import Policy

from meta1py.smtp.extensions import Extensions
from meta1py.smtp.server import ServerConnection

DIALOGS = sorted((pathlib.Path(__file__).parents[2] / "data" / "dialogs").glob("*.dlg"))


def _unescape(text: str) -> bytes:
    return ast.literal_eval("b'" + text.replace("'", "\\'") + "'")


def _make_server(options: list[list[str]]) -> ServerConnection:
    kwargs: dict[str, object] = {}
    ext = Extensions()
    for opt in options:
        key, args = opt[0], opt[1:]
        if key == "ext":
            kwargs_size = int(str(kwargs.get("max_message_bytes", 10 * 1024 * 1024)))
            ext = Extensions.from_flags(args, kwargs_size, auth_mechanisms=("PLAIN", "LOGIN"))
        elif key == "lmtp":
            kwargs["lmtp"] = True
        elif key == "bare_newline":
            kwargs["bare_newline"] = args[0]
        else:
            kwargs[key] = int(args[0])
    return ServerConnection("mx.test", extensions=ext, **kwargs)  # type: ignore[arg-type]


def _parse(path: pathlib.Path) -> tuple[list[list[str]], list[tuple[str, str]]]:
    options: list[list[str]] = []
    steps: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("! "):
            options.append(line[2:].split())
        elif line[:3] in ("C: ", "R: ", "S: ") or line in ("C:", "S:"):
            steps.append((line[0], line[3:]))
        elif line.startswith("= "):
            steps.append(("=", line[2:]))
        else:
            raise ValueError(f"{path}:{n}: bad line {line!r}")
    return options, steps


def _run(path: pathlib.Path, bytewise: bool) -> list[str]:
    options, steps = _parse(path)
    policy = Policy(_make_server(options))
    out = policy.greet()
    got_lines: list[str] = []

    def take_output() -> None:
        nonlocal out
        text = out.decode("utf-8")
        assert text == "" or text.endswith("\r\n"), text
        got_lines.extend(text.split("\r\n")[:-1])
        out = b""

    expected_pos = 0
    i = 0
    while i < len(steps):
        kind, text = steps[i]
        if kind in "CR":
            block = b""
            eof = False
            while i < len(steps) and steps[i][0] in "CR":
                k, t = steps[i]
                if k == "C":
                    block += t.encode("utf-8") + b"\r\n"
                elif t == "<EOF>":
                    eof = True
                else:
                    block += _unescape(t)
                i += 1
            if bytewise:
                for b in range(len(block)):
                    out += policy.feed(block[b : b + 1])
            elif block:
                out += policy.feed(block)
            if eof:
                out += policy.feed(b"")
            take_output()
            continue
        if kind == "S":
            take_output()
            assert expected_pos < len(got_lines), f"{path.name}: missing reply {text!r}"
            assert got_lines[expected_pos] == text, f"{path.name}: step {i}"
            expected_pos += 1
        elif kind == "=":
            what, _, arg = text.partition(" ")
            if what == "closed":
                assert policy.closed or policy.conn.state.name == "CLOSED"
            elif what == "message":
                assert policy.messages and policy.messages[-1] == _unescape(arg)
            else:
                raise ValueError(f"unknown check {text!r}")
        i += 1
    take_output()
    assert got_lines[expected_pos:] == [], f"{path.name}: unexpected replies"
    return got_lines


@pytest.mark.parametrize("path", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_dialog(path: pathlib.Path) -> None:
    whole = _run(path, bytewise=False)
    assert _run(path, bytewise=True) == whole


def test_there_are_dialogs() -> None:
    assert len(DIALOGS) >= 10
