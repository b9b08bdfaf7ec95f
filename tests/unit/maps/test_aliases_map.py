"""Aliases map: parsing, errors and expansion (pure, no event loop)."""

from __future__ import annotations

import pytest

from meta1py.maps import MapErrors
from meta1py.maps.aliases import (
    Expansion,
    ExpansionFailure,
    base_local_part,
    parse_aliases,
    parse_local_target_address,
    parse_target,
)

LOCAL = frozenset({"example.com", "example.net"})


def expand(text: str, address: str, **limits: int) -> Expansion | ExpansionFailure:
    return parse_aliases(text, "aliases", **limits).expand(address, LOCAL)


def recipients(text: str, address: str) -> tuple[str, ...]:
    result = expand(text, address)
    assert isinstance(result, Expansion), result
    return result.recipients


def errors_of(text: str) -> list[str]:
    with pytest.raises(MapErrors) as info:
        parse_aliases(text, "/etc/meta1/aliases")
    return [str(e) for e in info.value.errors]


def test_parse_comments_blank_lines_and_continuations() -> None:
    text = """\
# a comment
postmaster: root

   # an indented comment
root:  alice,
       bob@example.org,
\tcarol
"""
    aliases = parse_aliases(text, "aliases")
    assert len(aliases) == 2
    assert aliases.lookup("ROOT") == ("alice", "bob@example.org", "carol")
    assert aliases.lookup("postmaster") == ("root",)
    assert aliases.lookup("nobody") is None


def test_names_are_case_insensitive() -> None:
    assert recipients("Alice: bob\n", "ALICE@Example.COM") == ("bob@example.com",)


def test_no_entry_expands_to_itself_lowercased() -> None:
    assert recipients("a: b\n", "Carol@Example.com") == ("carol@example.com",)


def test_non_local_address_is_not_aliased() -> None:
    # "a" is an alias, but a@elsewhere.org is not in a local domain.
    assert recipients("a: b\n", "a@elsewhere.org") == ("a@elsewhere.org",)


def test_chain_is_followed_across_local_domains() -> None:
    text = "a: b\nb: c@example.net\nc: final@remote.org, d\n"
    assert recipients(text, "a@example.com") == ("final@remote.org", "d@example.net")


def test_bare_names_are_qualified_with_the_domain_expanded() -> None:
    assert recipients("team: alice, bob\n", "team@example.net") == (
        "alice@example.net",
        "bob@example.net",
    )


def test_bare_address_without_domain() -> None:
    assert recipients("team: alice, x@remote.org\n", "team") == ("alice", "x@remote.org")


def test_self_reference_is_delivered_to_itself() -> None:
    text = "alice: alice, archive@remote.org\n"
    assert recipients(text, "alice@example.com") == ("alice@example.com", "archive@remote.org")


def test_self_reference_through_extension() -> None:
    assert recipients("alice: alice\n", "alice+news@example.com") == ("alice@example.com",)


def test_longer_cycle_is_an_error() -> None:
    result = expand("a: b\nb: c\nc: a\n", "a@example.com")
    assert isinstance(result, ExpansionFailure)
    assert result.reason == "loop"
    assert "a -> b -> c -> a" in result.text


def test_cycle_back_to_an_ancestor_after_a_self_reference() -> None:
    result = expand("a: b\nb: b, a\n", "a@example.com")
    assert isinstance(result, ExpansionFailure) and result.reason == "loop"


def test_depth_limit() -> None:
    text = "".join(f"n{i}: n{i + 1}\n" for i in range(30))
    result = expand(text, "n0@example.com", max_depth=10)
    assert isinstance(result, ExpansionFailure) and result.reason == "depth"
    assert recipients(text, "n25@example.com") == ("n30@example.com",)


def test_size_limit() -> None:
    targets = ", ".join(f"u{i}@remote.org" for i in range(20))
    result = expand(f"big: {targets}\n", "big@example.com", max_recipients=10)
    assert isinstance(result, ExpansionFailure) and result.reason == "size"


def test_duplicates_removed_first_kept() -> None:
    text = "all: x, y, group\ngroup: y, X, z\n"
    assert recipients(text, "all@example.com") == (
        "x@example.com",
        "y@example.com",
        "z@example.com",
    )


def test_diamond_is_not_a_loop() -> None:
    text = "top: left, right\nleft: shared\nright: shared\n"
    assert recipients(text, "top@example.com") == ("shared@example.com",)


def test_extension_lookup_exact_first_then_base() -> None:
    text = "alice+lists: lists@remote.org\nalice: alice@remote.org\n"
    assert recipients(text, "alice+lists@example.com") == ("lists@remote.org",)
    assert recipients(text, "alice+other@example.com") == ("alice@remote.org",)
    assert base_local_part("+x") == "+x"
    assert base_local_part("a+b+c") == "a"


def test_bad_command_file_and_include_targets_rejected() -> None:
    errs = errors_of('a: |/usr/bin/prog arg\nb: /var/mail/..//\nc: :include:lists/c\nd: "|"\ne: "|prog, f\n')
    assert errs == [
        '/etc/meta1/aliases:1: quote a command or file name with spaces: "|/usr/bin/prog arg" (or is a'
        " comma missing?)",
        "/etc/meta1/aliases:2: a Maildir target must name its directory: '/var/mail/..//'",
        "/etc/meta1/aliases:3: relative :include: path in ':include:lists/c' (it must start with /)",
        "/etc/meta1/aliases:4: empty command: '\"|\"'",
        "/etc/meta1/aliases:5: unterminated quote in '\"|prog, f'",
    ]


def test_maildir_targets_are_file_targets_ending_in_a_slash() -> None:
    # Postfix's local(8): "/path/" is a Maildir; it keeps its "/" (smtpc tells the two apart by it).
    for text, path in (
        ("/var/mail/archive/", "/var/mail/archive/"),
        ('"/var/mail/the archive/"', "/var/mail/the archive/"),
    ):
        target = parse_target(text)
        assert (target.kind, target.value, target.text) == ("file", path, text)
    result = expand("archive: /var/mail/archive/, \\archive\n", "archive@example.com")
    assert isinstance(result, Expansion)
    assert result.recipients == ("archive@example.com:/var/mail/archive/", "archive@example.com")
    assert [(t.kind, t.target, t.origin) for t in result.local] == [
        ("file", "/var/mail/archive/", "archive@example.com")
    ]
    assert parse_local_target_address(result.recipients[0]) == (
        "archive@example.com",
        "file",
        "/var/mail/archive/",
    )
    for bad, why in (
        ('"/var/mail/a\nb/"', "file name contains a NUL or newline"),
        ("/var/mail/a\0b/", "file name contains a NUL or newline"),
        ("/", "a Maildir target must name its directory"),
        ("/var/mail/./", "a Maildir target must name its directory"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_target(bad)


def test_all_errors_reported_with_physical_line_numbers() -> None:
    text = """\
  orphan
good: x
no colon here
@example.com: x
empty:
dup: x
dup: y
multi: ok,
   bad target
"""
    errs = errors_of(text)
    assert errs == [
        "/etc/meta1/aliases:1: continuation line without an alias before it",
        "/etc/meta1/aliases:3: expected 'name: target, ...', got 'no colon here'",
        "/etc/meta1/aliases:4: alias name '@example.com' needs a local part and a domain (local@domain)",
        "/etc/meta1/aliases:5: alias 'empty' has no targets",
        "/etc/meta1/aliases:7: duplicate alias 'dup' (first defined on line 6)",
        "/etc/meta1/aliases:9: target contains whitespace (missing comma?): 'bad target'",
    ]


def test_empty_file_is_an_empty_map() -> None:
    assert len(parse_aliases("# nothing\n\n")) == 0
