"""Every enhanced status code meta1py uses is spelled out in one of two modules.

smtps's replies are built in :mod:`meta1py.smtp.replies`; the delivery side (smar, qmgr, smtpc)
names its codes in :mod:`meta1py.smtp.status`. A string literal anywhere else in the package that
is an RFC 3463 code (``"4.4.1"``, as a reply's or a result's enhanced code is written) fails this
test, so a new code gets a name there instead. Texts that mention a code in passing (docstrings,
comments, option docs, log messages, the scripted replies of the test peers in
``testing/meta1py_testing``) are not codes a process decides and are left alone.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from meta1py.smtp import replies, status

PACKAGE = Path(replies.__file__).resolve().parents[1]
ALLOWED = {Path(replies.__file__).resolve(), Path(status.__file__).resolve()}
# class.subject.detail (RFC 3463 §2).
ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the string constants that are docstrings (module, class, function, attribute)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for stmt in body:
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                out.add(id(stmt.value))
    return out


def literals_with_codes(source: str, filename: str) -> list[str]:
    """``file:line: 'literal'`` for each string literal that is an enhanced code (docstrings aside)."""
    tree = ast.parse(source, filename)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if ENHANCED.fullmatch(node.value.strip()):
                found.append(f"{filename}:{node.lineno}: {node.value!r}")
    return found


def test_no_enhanced_status_code_literal_outside_the_code_modules() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() in ALLOWED:
            continue
        found += literals_with_codes(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not found, "enhanced status codes outside smtp/replies.py and smtp/status.py:\n" + "\n".join(found)


def test_the_scan_finds_code_literals_wherever_they_stand() -> None:
    source = (
        '"""Module docstring may say 4.4.1."""\n'
        'A = "4.4.1"\n'
        "B = Reply(554, '5.1.10', ('text',))\n"
        'C = "4.3.1" if full else "4.3.0"\n'
        'def f(x: str = "2.0.0") -> None:\n'
        '    """Returns 5.0.0."""\n'
        'D = "127.0.0.1"\n'
        'E = "refused with 452 4.3.1 (0: off)"\n'
        "# a comment may say 5.7.1\n"
    )
    found = literals_with_codes(source, "m.py")
    assert [f.split(":")[1] for f in found] == ["2", "3", "4", "4", "5"], found


def test_the_delivery_side_codes_are_well_formed_and_named_for_their_class() -> None:
    codes = {name: value for name, value in vars(status).items() if name.isupper()}
    assert len(set(codes.values())) == len(codes), "one name per code"
    for name, value in codes.items():
        assert ENHANCED.fullmatch(value), (name, value)
        expected = "4" if name.startswith("TEMP_") else "5" if name.startswith("PERM_") else "2"
        assert value[0] == expected, (name, value)


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (replies.too_many_hops(), b"554 5.4.6 Too many hops: mail forwarding loop\r\n"),
        (
            replies.too_many_auth_failures(),
            b"421 4.7.0 Too many authentication failures, try again later\r\n",
        ),
        (replies.auth_data_undecodable(), b"501 5.5.2 Cannot decode the authentication data\r\n"),
        (
            replies.policy_tempfail_greeting("mx.example.test"),
            b"421 4.7.0 mx.example.test Service temporarily unavailable, closing connection\r\n",
        ),
        (replies.policy_tempfail(), b"451 4.7.1 Temporarily refused by policy, try again later\r\n"),
        (replies.policy_held(), b"451 4.7.1 Message held by policy, try again later\r\n"),
    ],
)
def test_replies_that_moved_into_replies_py_keep_their_bytes(reply: replies.Reply, wire: bytes) -> None:
    assert reply.to_bytes() == wire
