"""The line syntax shared by aliases, routes and tls_policy (meta1py.maps.lines)."""

from __future__ import annotations

import pytest

from meta1py.maps import MapError, MapErrors
from meta1py.maps.aliases import parse_aliases
from meta1py.maps.lines import Entry, map_entries
from meta1py.maps.routes import parse_routes
from meta1py.maps.tls_policy import parse_tls_policy

TEXT = """\
# a comment
  # an indented comment

first   value one # not a comment
second
third:x  y
  more 1
\tmore 2
"""


def entries(text: str, **kw: object) -> tuple[list[Entry], list[str]]:
    errors: list[MapError] = []
    found = list(map_entries(text, "m", errors, **kw))  # type: ignore[arg-type]
    return found, [str(e) for e in errors]


def test_whitespace_separator_and_continuations_as_errors() -> None:
    found, errors = entries(TEXT, continuation_error="no continuations here")
    assert [(e.line, e.key, e.value) for e in found] == [
        (4, "first", "value one # not a comment"),
        (5, "second", None),
        (6, "third:x", "y"),
    ]
    assert found[1].text == "second"
    assert errors == ["m:7: no continuations here", "m:8: no continuations here"]


def test_character_separator_joins_continuation_lines() -> None:
    found, errors = entries(
        " orphan\n" + TEXT, separator=":", continuation="join", continuation_error="orphan"
    )
    assert errors == ["m:1: orphan"]
    assert [(e.line, e.key, e.value) for e in found] == [
        (5, "first   value one # not a comment", None),
        (6, "second", None),
        (7, "third", "x  y"),
    ]
    assert found[2].more == ((8, "more 1"), (9, "more 2"))
    assert found[0].more == ()


def test_indented_lines_can_be_plain_entries() -> None:
    found, errors = entries(TEXT, continuation="entry")
    assert errors == []
    assert [(e.line, e.key, e.value) for e in found][-2:] == [(7, "more", "1"), (8, "more", "2")]


def test_the_three_formats_report_line_errors_in_file_order() -> None:
    with pytest.raises(MapErrors) as routes:
        parse_routes("  indented smtp:\nnovalue\na.test bogus:\n", "routes")
    assert str(routes.value).splitlines() == [
        "routes:1: continuation lines are not allowed in routes",
        "routes:2: expected 'domain transport:nexthop', got 'novalue'",
        "routes:3: unknown transport 'bogus' (smtp, lmtp, maildir, error)",
    ]
    with pytest.raises(MapErrors) as aliases:
        parse_aliases("  orphan\nno colon\na: :include:lists/a\n", "aliases")
    assert str(aliases.value).splitlines() == [
        "aliases:1: continuation line without an alias before it",
        "aliases:2: expected 'name: target, ...', got 'no colon'",
        "aliases:3: relative :include: path in ':include:lists/a' (it must start with /)",
    ]
    with pytest.raises(MapErrors) as policy:
        parse_tls_policy("example.com\n  example.org bogus\n", "tls_policy")
    first, second = policy.value.errors
    assert (first.line, first.message) == (1, "'example.com' has no tls_requirements")
    assert second.line == 2 and "bogus" in second.message
