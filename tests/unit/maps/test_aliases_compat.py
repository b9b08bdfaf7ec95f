"""aliases(5) compatibility: stock Debian files, Postfix's own parser, user@domain keys,
commands, files, :include: lists, .forward files and the queue form of commands and files."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from meta1py.maps import MapErrors, MapTempError
from meta1py.maps.aliases import (
    Expansion,
    ExpansionFailure,
    ForwardFile,
    ForwardReader,
    IncludeReader,
    LocalTarget,
    alias_entries,
    load_aliases,
    local_target_address,
    parse_aliases,
    parse_local_target_address,
    parse_target,
    parse_target_list,
    split_targets,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "aliases"
LOCAL = frozenset({"localhost", "example.org"})

SAMPLE = """\
# A richer file in aliases(5) syntax
postmaster:   root
root:         alice
team:         alice,
              bob, carol@remote.test
tickets:      "|/usr/local/bin/ticket --queue=new", /var/spool/tickets.mbox, \\tickets
pager:        |/usr/local/bin/page
staff:        :include:/etc/meta1/staff.list
archive:      "/var/spool/mail archive"
"quoted":     alice
Info@Example.org:  sales
sales:        bob
"""


def expand(
    text: str, address: str, *, includes: IncludeReader | None = None, forwards: ForwardReader | None = None
) -> Expansion:
    result = parse_aliases(text, "/etc/aliases").expand(address, LOCAL, includes=includes, forwards=forwards)
    assert isinstance(result, Expansion), result
    return result


@pytest.mark.parametrize("name", ["debian-postfix.aliases", "debian-exim4.aliases"])
def test_stock_debian_aliases_files_parse(name: str) -> None:
    aliases = load_aliases(DATA / name)
    assert aliases.lookup("postmaster") == ("root",)
    assert aliases.errors == ()


def test_debian_exim4_file_expands_the_usual_names_to_roots_reader() -> None:
    aliases = load_aliases(DATA / "debian-exim4.aliases")
    for name in ("mailer-daemon", "postmaster", "nobody", "hostmaster", "webmaster", "abuse", "security"):
        result = aliases.expand(f"{name}@localhost", LOCAL)
        assert result == Expansion(("admin@localhost",)), name
    # Names are case-insensitive, as Postfix's are.
    assert aliases.expand("MAILER-DAEMON@localhost", LOCAL) == Expansion(("admin@localhost",))


def test_debian_postfix_file_sends_postmaster_to_root() -> None:
    aliases = load_aliases(DATA / "debian-postfix.aliases")
    assert aliases.expand("postmaster@example.org", LOCAL) == Expansion(("root@example.org",))
    assert aliases.expand("root@localhost", LOCAL) == Expansion(("root@localhost",))


def _keys(text: str) -> list[str]:
    return [key for _line, key, _targets in alias_entries(text, "aliases", [])]


def _postalias(tmp_path: Path, text: str) -> dict[str, str] | None:
    """Every key of ``text`` as Postfix's own postalias(1) reads it (None: not installed)."""
    postalias = shutil.which("postalias") or (
        "/usr/sbin/postalias" if Path("/usr/sbin/postalias").exists() else None
    )
    if postalias is None:
        return None
    (tmp_path / "main.cf").write_text("")
    source = tmp_path / "aliases"
    source.write_text(text)
    # Postfix waits for files changed within the last second or so to settle: date them back.
    an_hour_ago = time.time() - 3600
    for made in (tmp_path / "main.cf", source):
        os.utime(made, (an_hour_ago, an_hour_ago))
    build = subprocess.run([postalias, "-c", str(tmp_path), f"hash:{source}"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    keys = "".join(f"{key}\n" for key in _keys(text))
    query = subprocess.run(
        [postalias, "-c", str(tmp_path), "-q", "-", f"hash:{source}"],
        input=keys,
        capture_output=True,
        text=True,
    )
    answers = {}
    for line in query.stdout.splitlines():
        key, _, value = line.partition(":\t")
        answers[key] = value
    return answers


@pytest.mark.parametrize("name", ["debian-postfix.aliases", "debian-exim4.aliases", "sample"])
def test_postfix_reads_the_same_targets(tmp_path: Path, name: str) -> None:
    text = SAMPLE if name == "sample" else (DATA / name).read_text()
    answers = _postalias(tmp_path, text)
    if answers is None:
        pytest.skip("postalias not installed (Debian package 'postfix')")
    ours = parse_aliases(text)
    local_keys = [k for k in _keys(text) if "@" not in k]
    # Postfix's aliases(5) has no user@domain keys (meta1py's are virtual(5)-style); every other
    # name has the same targets for both.
    assert sorted(answers) == sorted(local_keys)
    for key in local_keys:
        # Postfix drops the backslash of "\\name" (to local(8) it is the name itself, its mailbox).
        mine = [t.removeprefix("\\") for t in ours.lookup(key) or ()]
        assert split_targets(answers[key]) == mine, key


def test_targets_of_every_kind() -> None:
    assert parse_target('"|/usr/bin/x --a=b, c"') == parse_target('"|/usr/bin/x --a=b, c"')
    assert parse_target("|/usr/bin/x").kind == "command"
    assert parse_target('"|/usr/bin/x --a"').value == "/usr/bin/x --a"
    assert parse_target("/var/mail/x").kind == "file"
    assert parse_target('"/var/mail/a b"').value == "/var/mail/a b"
    assert parse_target(":include:/etc/list").value == "/etc/list"
    assert parse_target(":INCLUDE: /etc/list").kind == "include"
    assert parse_target("\\alice").literal and parse_target("\\alice").value == "alice"
    assert parse_target('"john smith"@example.org').kind == "address"
    assert split_targets('"|a, b", c ,,"d" ') == ['"|a, b"', "c", '"d"']
    assert parse_target("/var/mail/dir/").value == "/var/mail/dir/"  # a Maildir: still a file
    for bad in ("|x y", "/a b", ":include:rel", "/", '"|"', "|/bin/sh@example.org x"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_commands_files_and_literal_mailboxes_expand_with_their_origin() -> None:
    result = expand(SAMPLE, "tickets@localhost")
    assert result.recipients == (
        "tickets@localhost:|/usr/local/bin/ticket --queue=new",
        "tickets@localhost:/var/spool/tickets.mbox",
        "tickets@localhost",
    )
    assert result.local == (
        LocalTarget(
            "command", "/usr/local/bin/ticket --queue=new", "tickets@localhost", "alias", "/etc/aliases"
        ),
        LocalTarget("file", "/var/spool/tickets.mbox", "tickets@localhost", "alias", "/etc/aliases"),
    )
    assert expand(SAMPLE, "archive@localhost").recipients == ("archive@localhost:/var/spool/mail archive",)
    # An extension keeps its origin (it is $EXTENSION for the command).
    assert expand(SAMPLE, "pager+urgent@localhost").recipients == (
        "pager+urgent@localhost:|/usr/local/bin/page",
    )


def test_user_at_domain_keys_are_virtual_aliases_of_that_domain_only() -> None:
    assert expand(SAMPLE, "info@example.org").recipients == ("bob@example.org",)
    assert expand(SAMPLE, "INFO+x@EXAMPLE.org").recipients == ("bob@example.org",)
    # The same local part in another local domain has no entry.
    assert expand(SAMPLE, "info@localhost").recipients == ("info@localhost",)
    assert parse_aliases(SAMPLE).lookup_key("info", "example.org") == "info@example.org"
    assert parse_aliases(SAMPLE).lookup_key("sales", "example.org") == "sales"
    assert parse_aliases('"quoted": x\n').lookup("quoted") == ("x",)


def test_include_files_are_read_through_the_reader() -> None:
    files: dict[str, tuple[str, ...]] = {
        "/etc/meta1/staff.list": ("dave", "|/usr/bin/staff-log", ":include:/etc/meta1/more.list"),
        "/etc/meta1/more.list": ("erin@remote.test", "staff"),
    }
    result = expand(SAMPLE, "staff@localhost", includes=files.__getitem__)
    assert result.recipients == (
        "dave@localhost",
        "staff@localhost:|/usr/bin/staff-log",
        "erin@remote.test",
        "staff@localhost",  # an include list naming its alias: the alias's own mailbox
    )
    assert result.local[0].source == "include" and result.local[0].source_path == "/etc/meta1/staff.list"


def test_include_problems_are_temporary_or_config_failures() -> None:
    aliases = parse_aliases(SAMPLE)

    def unreadable(path: str) -> tuple[str, ...]:
        raise MapTempError(f"{path}: smar (user meta1r) cannot read it: Permission denied")

    failure = aliases.expand("staff@localhost", LOCAL, includes=unreadable)
    assert failure == ExpansionFailure(
        "unavailable",
        ":include:/etc/meta1/staff.list: /etc/meta1/staff.list: smar (user meta1r) cannot read it:"
        " Permission denied",
    )
    loop = aliases.expand("staff@localhost", LOCAL, includes=lambda p: (":include:/etc/meta1/staff.list",))
    assert isinstance(loop, ExpansionFailure) and loop.reason == "loop"
    assert "staff -> :include:/etc/meta1/staff.list -> :include:/etc/meta1/staff.list" in loop.text
    # Without a reader (meta1 map query, say) an include cannot be expanded: not "no entry".
    none = aliases.expand("staff@localhost", LOCAL)
    assert isinstance(none, ExpansionFailure) and none.reason == "unavailable"
    deep = parse_aliases(SAMPLE, max_depth=3)
    chain = deep.expand(
        "staff@localhost", LOCAL, includes=lambda p: (f":include:{p}x",) if len(p) < 40 else ("dave",)
    )
    assert isinstance(chain, ExpansionFailure) and chain.reason == "depth"


def test_include_and_forward_file_syntax() -> None:
    assert parse_target_list("# mine\n\\alice,  |/usr/bin/vacation\n\nbob@remote.test\n", "f") == (
        "\\alice",
        "|/usr/bin/vacation",
        "bob@remote.test",
    )
    with pytest.raises(MapErrors) as info:
        parse_target_list("ok\n|vacation -a me\n:include:x\n", "/home/a/.forward")
    assert [str(e) for e in info.value.errors] == [
        '/home/a/.forward:2: quote a command or file name with spaces: "|vacation -a me" (or is a comma'
        " missing?)",
        "/home/a/.forward:3: relative :include: path in ':include:x' (it must start with /)",
    ]


def test_forward_files_replace_the_mailbox() -> None:
    forwards = {
        "alice": ForwardFile("alice", "/home/alice/.forward", ("\\alice", '"|/usr/bin/vacation alice"')),
        "bob": ForwardFile("bob", "/home/bob/.forward", ("bob@elsewhere.test",)),
    }
    result = expand("root: alice, bob\n", "root@localhost", forwards=forwards.get)
    assert result.recipients == (
        "alice@localhost",
        "alice@localhost:|/usr/bin/vacation alice",
        "bob@elsewhere.test",
    )
    assert result.local == (
        LocalTarget(
            "command",
            "/usr/bin/vacation alice",
            "alice@localhost",
            "forward",
            "/home/alice/.forward",
            "alice",
        ),
    )
    # A .forward naming its owner without the backslash still means the mailbox.
    forwards["carol"] = ForwardFile("carol", "/home/carol/.forward", ("carol", "carol@elsewhere.test"))
    assert expand("", "carol@localhost", forwards=forwards.get).recipients == (
        "carol@localhost",
        "carol@elsewhere.test",
    )
    # Forwarding in a circle is a loop, as alias cycles are.
    forwards["x"] = ForwardFile("x", "/home/x/.forward", ("y",))
    forwards["y"] = ForwardFile("y", "/home/y/.forward", ("x",))
    cycle = parse_aliases("").expand("x@localhost", LOCAL, forwards=forwards.get)
    assert isinstance(cycle, ExpansionFailure) and cycle.reason == "loop"
    # Remote addresses have no .forward.
    assert expand("", "bob@remote.test", forwards=forwards.get).recipients == ("bob@remote.test",)


def test_queue_form_of_commands_and_files_cannot_come_from_smtp() -> None:
    address = local_target_address("root@example.org", "command", "/usr/bin/x --to=a@b:/c")
    assert address == "root@example.org:|/usr/bin/x --to=a@b:/c"
    assert parse_local_target_address(address) == ("root@example.org", "command", "/usr/bin/x --to=a@b:/c")
    assert parse_local_target_address("root@example.org:/var/x") == ("root@example.org", "file", "/var/x")
    # Everything an SMTP client can send as a recipient (RFC 5321 §4.1.2) is a plain address.
    for smtp in ('"|/bin/sh"@localhost', "|/bin/sh@localhost", "/etc/passwd@localhost", '"a:|b"@localhost'):
        assert parse_local_target_address(smtp) is None, smtp
