"""The aliases map: local names expanded to other recipients, commands and files (aliases(5)).

File format (Postfix's and sendmail's aliases(5); a Debian ``/etc/aliases`` reads unchanged)::

    # comment lines start with '#' (after optional whitespace)
    mailer-daemon: postmaster
    postmaster:    root
    root:          alice, bob@example.org
    team:          alice,
                   carol
    info@example.org:  sales            # a virtual alias: only info@example.org
    archive:       /var/spool/mail-archive          # append to a file (mbox)
    backup:        /var/spool/mail-backup/          # deliver into a Maildir
    tickets:       "|/usr/local/bin/ticket --new"   # pipe to a command
    staff:         :include:/etc/meta1/staff.list   # the targets in another file
    alice:         \\alice, alice@home.example       # \\name: this mailbox, no more aliasing

* A logical line starts with non-whitespace text; a line starting with whitespace continues the
  previous logical line. Empty lines and lines whose first non-blank character is ``#`` are
  ignored anywhere. As in Postfix, a ``#`` later in a line is *not* a comment.
* ``name`` is a local part (it applies to every local domain) or ``local@domain`` (only that
  address: a virtual alias; the domain must be one of ``local_domains`` to be used), matched
  case-insensitively. Targets are separated by commas outside double quotes.
* A target is one of:

  - an address: a local name (qualified with the domain of the address being expanded) or
    ``local@domain``; ``\\name`` is the mailbox ``name`` itself, not aliased again and not
    forwarded;
  - ``|command`` (quoted as ``"|command arg"`` when it has spaces or commas): the message is
    piped to ``/bin/sh -c command``;
  - ``/path``: the message is appended to the file in mbox format; ``/path/`` (ending in ``/``,
    Postfix's Maildir form) is delivered into that directory as a Maildir (a ``file`` target
    too, its path keeping the ``/``);
  - ``:include:/path``: the targets listed in that file (one or more per line, comma
    separated, ``#`` comments), which may hold further targets of every kind. The path must be
    absolute.

Whether commands and files are delivered, and as whom, is not this module's business: smar
decides that when it routes them (``allow_mail_to_commands``, ``allow_mail_to_files``,
``default_privs``; docs/smar.md). Here they are parsed and carried through the expansion with
where they came from (:class:`LocalTarget`), and written into the queue as an envelope address
that no SMTP client can send (:func:`local_target_address`).

Lookup of ``local+ext@domain`` tries ``local+ext@domain``, ``local@domain``, ``local+ext`` and
``local`` (the recipient delimiter is ``+``).

Expansion follows chains, ``:include:`` files and (when smar passes a reader) ``.forward`` files.
A name whose targets include itself is delivered to itself (sendmail/Postfix behaviour, e.g.
``alice: alice, archive``); any longer cycle (``a: b`` / ``b: a``, an include file including
itself) is an error, as are chains deeper than ``max_depth`` and expansions larger than
``max_recipients``. The result has duplicates removed, first occurrence kept. Reading include
and ``.forward`` files is I/O that smar provides (:class:`IncludeReader`, :class:`ForwardReader`);
this module stays pure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from meta1py.maps.errors import BrokenEntry, MapError, MapErrors, MapTempError
from meta1py.maps.lines import map_entries
from meta1py.maps.source import MapSource, Table, first_entry, lookup_first, read_map_file

RECIPIENT_DELIMITER = "+"
DEFAULT_MAX_DEPTH = 20
DEFAULT_MAX_RECIPIENTS = 1000
#: The longest envelope address a command or file target may become (origin, ``:`` and the
#: target): the queue's recipient addresses are capped at 1024 characters.
MAX_LOCAL_TARGET_ADDRESS = 1000
#: The largest ``:include:`` or ``.forward`` file read (bigger ones fail temporarily).
MAX_LIST_FILE_BYTES = 1024 * 1024

TargetKind = Literal["address", "command", "file", "include"]
LocalKind = Literal["command", "file"]
#: Where a command or file target came from (Postfix's classes of ``allow_mail_to_commands``).
TargetSource = Literal["alias", "include", "forward"]
TARGET_SOURCES: tuple[TargetSource, ...] = ("alias", "forward", "include")


@dataclass(frozen=True, slots=True)
class Target:
    """One parsed target of an alias, an include file or a ``.forward`` file.

    Attributes:
        kind: ``address``, ``command``, ``file`` or ``include``.
        value: the address (without a leading backslash), the command (without ``|``, shell
            syntax as written), or the absolute path (file, include; a Maildir file target's
            ends in ``/``).
        text: the target as written (quotes included).
        literal: ``\\name``: this mailbox itself, no aliases and no ``.forward``.
    """

    kind: TargetKind
    value: str
    text: str
    literal: bool = False


@dataclass(frozen=True, slots=True)
class LocalTarget:
    """A command or file that an expansion reached, with where it came from.

    Attributes:
        kind: ``command`` or ``file``.
        target: the command (without ``|``) or the absolute file path.
        origin: the address whose alias entry (or ``.forward`` file) named it, e.g.
            ``root@example.org``: what ``Delivered-To:`` shows and ``$RECIPIENT`` holds.
        source: ``alias``, ``include`` or ``forward``.
        source_path: the aliases file, include file or ``.forward`` file that named it (smar
            runs an alias's or include file's targets as that file's owner).
        user: ``forward`` only: the user whose ``.forward`` it is.
    """

    kind: LocalKind
    target: str
    origin: str
    source: TargetSource
    source_path: str
    user: str | None = None

    @property
    def address(self) -> str:
        """The envelope address that stands for it in the queue (:func:`local_target_address`)."""
        return local_target_address(self.origin, self.kind, self.target)


@dataclass(frozen=True, slots=True)
class Expansion:
    """The final recipients of an address (at least one).

    Attributes:
        recipients: envelope addresses, in order: mailboxes and remote addresses, and the
            commands and files as :func:`local_target_address` writes them.
        local: the commands and files among them, with their origin and source.
    """

    recipients: tuple[str, ...]
    local: tuple[LocalTarget, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class ExpansionFailure:
    """Expansion failed for a configuration reason (loop, depth, size, a broken entry).

    Attributes:
        reason: ``"loop"``, ``"depth"`` or ``"size"`` (permanent), ``"broken"``: the expansion
            reached a name whose line has an error, or an include or ``.forward`` file with a bad
            line (temporary: 451 4.3.5 until the file is fixed), or ``"unavailable"``: such a file
            cannot be read now (temporary: 451 4.3.0).
        text: a human-readable explanation naming the aliases involved.
    """

    reason: str
    text: str


ExpansionResult = Expansion | ExpansionFailure


class ForwardFile(NamedTuple):
    """A user's ``.forward`` file as smar read it.

    Attributes:
        user: the account name.
        path: the file.
        targets: its targets as written (:func:`parse_target_list`).
    """

    user: str
    path: str
    targets: tuple[str, ...]


#: Reads an ``:include:`` file: ``reader(path)`` -> its targets as written. Raises
#: :class:`~meta1py.maps.errors.MapTempError` (cannot be read now) or
#: :class:`~meta1py.maps.errors.MapErrors` (a bad line).
IncludeReader = Callable[[str], tuple[str, ...]]
#: Reads a local user's ``.forward``: ``reader(name)`` -> the file, or None (no such user, no
#: file). Raises as :data:`IncludeReader` does.
ForwardReader = Callable[[str], ForwardFile | None]


def split_address(address: str) -> tuple[str, str | None]:
    """Split ``local@domain`` at the last ``@``; ``(address, None)`` when there is none."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, None
    return local, domain


def base_local_part(local: str) -> str:
    """``local+ext`` -> ``local`` (unchanged when there is no extension)."""
    base, sep, _ext = local.partition(RECIPIENT_DELIMITER)
    return base if sep and base else local


# -- targets ---------------------------------------------------------------------------------------


def _quoting(text: str) -> tuple[list[bool], list[int], bool]:
    """Scan ``text`` for double quotes, in which a backslash escapes the next character.

    Returns:
        for each character, whether it is outside quotes (a quote mark itself is not); the
        indices of the quote marks that open or close; whether a quote is left open.
    """
    outside: list[bool] = []
    marks: list[int] = []
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
            outside.append(False)
        elif quoted and ch == "\\":
            escaped = True
            outside.append(False)
        elif ch == '"':
            quoted = not quoted
            marks.append(i)
            outside.append(False)
        else:
            outside.append(not quoted)
    return outside, marks, quoted


def split_targets(text: str) -> list[str]:
    """The targets of one line: split at commas outside double quotes, stripped, empty ones
    dropped. Inside quotes a backslash escapes the next character.

    Raises:
        ValueError: a quote is not closed.
    """
    outside, _marks, unclosed = _quoting(text)
    if unclosed:
        raise ValueError(f"unterminated quote in {text.strip()!r}")
    cuts = [i for i, ch in enumerate(text) if ch == "," and outside[i]]
    parts = [text[a + 1 : b] for a, b in zip([-1, *cuts], [*cuts, len(text)], strict=True)]
    return [p.strip() for p in parts if p.strip()]


def _unquote(inner: str) -> str:
    """The text of a quoted string's inside (``\\x`` -> ``x``)."""
    return re.sub(r"\\(.)", r"\1", inner)


def _whole_quoted(text: str) -> bool:
    """Whether ``text`` is one quoted string (``"..."``, nothing outside the quotes)."""
    _outside, marks, unclosed = _quoting(text)
    return not unclosed and marks == [0, len(text) - 1] and len(text) >= 2


def _space_outside_quotes(text: str) -> bool:
    outside, _marks, _unclosed = _quoting(text)
    return any(ch.isspace() and out for ch, out in zip(text, outside, strict=True))


_INCLUDE = ":include:"


def parse_target(text: str) -> Target:
    """Parse one target as written (see the module docstring).

    Raises:
        ValueError: what is wrong with it, for an operator.
    """
    special = text
    if _whole_quoted(text):
        special = _unquote(text[1:-1])
    elif text[:1] in ("|", "/") and _space_outside_quotes(text):
        return _refuse(f'quote a command or file name with spaces: "{text}" (or is a comma missing?)')
    if special.startswith("|"):
        command = special[1:].strip()
        if not command:
            return _refuse(f"empty command: {text!r}")
        if "\0" in command or "\n" in command:
            return _refuse(f"command contains a NUL or newline: {text!r}")
        return Target("command", command, text)
    if special.startswith("/"):
        # A path ending in "/" is a Maildir (Postfix's local(8)); it stays a "file" target, with
        # the same switch (allow_mail_to_files) and the same account as an mbox file.
        if "\0" in special or "\n" in special:
            return _refuse(f"file name contains a NUL or newline: {text!r}")
        if special.endswith("/") and special.rstrip("/").rsplit("/", 1)[-1] in ("", ".", ".."):
            return _refuse(f"a Maildir target must name its directory: {text!r}")
        return Target("file", special, text)
    if special[: len(_INCLUDE)].lower() == _INCLUDE:
        path = special[len(_INCLUDE) :].strip()
        if not path.startswith("/"):
            return _refuse(f"relative :include: path in {text!r} (it must start with /)")
        return Target("include", path, text)
    literal = text.startswith("\\")
    address = text[1:] if literal else text
    if _space_outside_quotes(address):
        return _refuse(f"target contains whitespace (missing comma?): {text!r}")
    local, domain = split_address(address)
    if not local:
        return _refuse(f"target has an empty local part: {text!r}")
    if domain is not None and not domain:
        return _refuse(f"target has an empty domain: {text!r}")
    if local[:1] in ("|", "/"):
        return _refuse(f"an address cannot start with {local[0]!r}: {text!r}")
    return Target("address", address, text, literal=literal)


def _refuse(message: str) -> Target:
    raise ValueError(message)


def parse_target_list(text: str, path: str) -> tuple[str, ...]:
    """The targets of an ``:include:`` or ``.forward`` file, as written, in order.

    Targets are separated by commas and newlines; empty lines and lines starting with ``#`` are
    ignored. Every target is checked (:func:`parse_target`).

    Raises:
        MapErrors: every bad line, as ``path:line: message``.
    """
    errors: list[MapError] = []
    targets: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parts = split_targets(line)
            for part in parts:
                parse_target(part)
        except ValueError as exc:
            errors.append(MapError(path, lineno, str(exc)))
            continue
        targets.extend(parts)
    if errors:
        raise MapErrors(errors)
    return tuple(targets)


def local_target_address(origin: str, kind: LocalKind, target: str) -> str:
    """The envelope address of a command or file target: ``origin:|command`` or ``origin:/path``.

    ``root@example.org:|/usr/bin/procmail`` cannot come from an SMTP client: a domain never holds
    ``:``, ``|`` or ``/`` (RFC 5321 §4.1.2). smar still never trusts the form alone: before it
    routes one it expands ``origin`` again and delivers only a target that expansion reaches.
    """
    return f"{origin}:{'|' if kind == 'command' else ''}{target}"


# The origin is the shortest prefix ending in "@domain:" followed by "|" or "/" (a command may
# hold "@" and ":" itself; a domain holds neither ":" nor a quote nor a space).
_LOCAL_TARGET = re.compile(r"(?P<origin>[^\s]*?@[A-Za-z0-9._\-\[\]]+):(?P<target>[|/].*)\Z", re.DOTALL)


def parse_local_target_address(address: str) -> tuple[str, LocalKind, str] | None:
    """``(origin, kind, target)`` of an address that :func:`local_target_address` wrote, else None."""
    match = _LOCAL_TARGET.match(address)
    if match is None:
        return None
    target = match["target"]
    if target.startswith("|"):
        return match["origin"], "command", target[1:]
    return match["origin"], "file", target


# -- keys ------------------------------------------------------------------------------------------


def alias_keys(local: str, domain: str | None = None) -> list[str]:
    """The keys tried for ``local`` (and its ``domain``), in order: ``local+ext@domain``,
    ``local@domain``, ``local+ext``, ``local`` (lower-cased)."""
    key = local.lower()
    base = base_local_part(key)
    names = [key] if base == key else [key, base]
    if domain:
        suffix = "@" + domain.lower()
        return [name + suffix for name in names] + names
    return names


async def lookup_alias(
    source: MapSource[tuple[str, ...]], local: str, *, deadline: float, domain: str | None = None
) -> tuple[str, ...] | None:
    """The targets of ``local`` in ``source`` (one level: :meth:`Aliases.lookup` over a source).

    Expansion (:meth:`Aliases.expand`) still runs on the in-memory file map only.

    Raises:
        MapTempError: the source cannot answer now.
    """
    return await lookup_first(source, alias_keys(local, domain), deadline=deadline)


# -- the map ---------------------------------------------------------------------------------------

# A node of the expansion graph: ("alias", key, domain), ("include", path, None) or
# ("forward", user, domain).
_Node = tuple[str, str, str | None]


@dataclass
class _Walk:
    """The state of one expansion."""

    local_domains: Collection[str]
    includes: IncludeReader | None
    forwards: ForwardReader | None
    out: dict[str, None] = field(default_factory=dict)  # ordered set of final recipients
    local: list[LocalTarget] = field(default_factory=list)


class Aliases(Table[tuple[str, ...]]):
    """A parsed aliases map. Build it with :func:`parse_aliases` or :func:`load_aliases`.

    Args:
        entries: lower-cased name -> targets (as written).
        max_depth: longest chain followed (aliases, include files and ``.forward`` files).
        max_recipients: largest expansion allowed.
        broken: lower-cased names whose line has an error (``strict=False`` parsing): expanding
            one fails temporarily.
        errors: the file's bad lines (``strict=False`` parsing), for the log.
        path: the file the entries came from (the owner of an alias's commands and files).
    """

    def __init__(
        self,
        entries: dict[str, tuple[str, ...]],
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_recipients: int = DEFAULT_MAX_RECIPIENTS,
        broken: dict[str, BrokenEntry] | None = None,
        errors: tuple[MapError, ...] = (),
        path: str = "<string>",
    ) -> None:
        self._entries = entries
        self.max_depth = max_depth
        self.max_recipients = max_recipients
        self.broken: dict[str, BrokenEntry] = broken or {}
        self.errors = errors
        self.path = path

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> tuple[str, ...] | None:
        """The targets of exactly ``key`` (a lower-case name), or None."""
        return self._entries.get(key)

    def broken_entry(self, key: str) -> BrokenEntry | None:
        """Why exactly ``key`` (a lower-case name) cannot be expanded, when its entry is broken."""
        return self.broken.get(key)

    def source_of(self, key: str) -> str:
        """The file that holds ``key``'s entry."""
        return self.path

    def lookup_key(self, local: str, domain: str | None = None) -> str | None:
        """The entry name that ``local`` (at ``domain``) matches (:func:`alias_keys` order), or None.

        A broken entry counts as a match (its name exists; expanding it fails temporarily).
        """
        for key in alias_keys(local, domain):
            if self.get(key) is not None or self.broken_entry(key) is not None:
                return key
        return None

    def lookup(self, local: str, domain: str | None = None) -> tuple[str, ...] | None:
        """The targets of ``local`` (at ``domain``) as written in the file, or None."""
        return first_entry(self, alias_keys(local, domain))

    def expand(
        self,
        address: str,
        local_domains: Collection[str] = (),
        *,
        includes: IncludeReader | None = None,
        forwards: ForwardReader | None = None,
    ) -> ExpansionResult:
        """Expand ``address`` into its final recipients.

        An address is subject to aliasing when it has no domain or its domain
        (case-insensitively) is in ``local_domains``. Local recipients in the
        result have their local part and domain lower-cased; other addresses
        are returned as written. An address with no entry expands to itself,
        or to its ``.forward`` file's targets when ``forwards`` finds one.

        Args:
            address: ``local`` or ``local@domain``.
            local_domains: lower-case domains whose addresses are aliased.
            includes: reads ``:include:`` files; None: an include target fails temporarily.
            forwards: reads local users' ``.forward`` files; None: no ``.forward`` is read.

        Returns:
            :class:`Expansion` or :class:`ExpansionFailure`.
        """
        walk = _Walk(local_domains, includes, forwards)
        try:
            self._address(address, (), walk)
        except _Failure as f:
            return ExpansionFailure(f.reason, f.text)
        return Expansion(tuple(walk.out), tuple(walk.local))

    def _node(self, address: str, local_domains: Collection[str]) -> tuple[str | None, str]:
        """``(entry key or None, canonical address)`` for one address."""
        local, domain = split_address(address)
        if domain is not None:
            domain = domain.lower()
            if domain not in local_domains:
                return None, address
        canonical = local.lower() if domain is None else f"{local.lower()}@{domain}"
        return self.lookup_key(local, domain), canonical

    def _address(self, address: str, path: tuple[_Node, ...], walk: _Walk) -> None:
        key, canonical = self._node(address, walk.local_domains)
        if key is None:
            self._mailbox(canonical, path, walk)
            return
        broken = self.broken_entry(key)
        if broken is not None:
            raise _Failure("broken", f"alias {key!r}: {broken.text}")
        domain = split_address(canonical)[1]
        node: _Node = ("alias", key, domain)
        self._enter(node, path)
        self._targets(self.get(key) or (), canonical, node, "alias", self.source_of(key), (*path, node), walk)

    def _enter(self, node: _Node, path: tuple[_Node, ...]) -> None:
        if node in path:
            chain = " -> ".join(_node_name(n) for n in (*path, node))
            raise _Failure("loop", f"alias loop: {chain}")
        if len(path) >= self.max_depth:
            raise _Failure("depth", f"alias chain deeper than {self.max_depth} at {_node_name(node)}")

    def _targets(
        self,
        texts: tuple[str, ...],
        origin: str,
        node: _Node,
        source: TargetSource,
        source_path: str,
        path: tuple[_Node, ...],
        walk: _Walk,
        user: str | None = None,
    ) -> None:
        """Expand the targets of ``node`` (an alias, or the ``.forward`` of ``user``); ``origin``
        is its canonical address, ``source``/``source_path`` where ``texts`` were written."""
        domain = split_address(origin)[1]
        for text in texts:
            try:
                target = parse_target(text)
            except ValueError as exc:  # a compiled map written by an older version, say
                raise _Failure("broken", f"{source_path}: {exc}") from None
            if target.kind == "command" or target.kind == "file":
                self._add_local(
                    LocalTarget(target.kind, target.value, origin, source, source_path, user), walk
                )
            elif target.kind == "include":
                self._include(target.value, origin, node, path, walk)
            else:
                value = target.value
                qualified = value if domain is None or "@" in value else f"{value}@{domain}"
                tkey, tcanonical = self._node(qualified, walk.local_domains)
                if target.literal:
                    self._add(tcanonical, walk)
                elif _names_itself(node, tkey, tcanonical):
                    # The name lists itself: its own mailbox (sendmail/Postfix); a .forward that
                    # lists its owner means the mailbox without forwarding again.
                    if node[0] == "forward":
                        self._add(tcanonical, walk)
                    else:
                        self._mailbox(tcanonical, path, walk)
                else:
                    self._address(qualified, path, walk)

    def _include(self, file: str, origin: str, node: _Node, path: tuple[_Node, ...], walk: _Walk) -> None:
        inode: _Node = ("include", file, None)
        self._enter(inode, path)
        if walk.includes is None:
            raise _Failure("unavailable", f":include:{file}: include files are not read here")
        try:
            texts = walk.includes(file)
        except MapTempError as exc:
            raise _Failure("unavailable", f":include:{file}: {exc}") from None
        except MapErrors as exc:
            raise _Failure("broken", f":include:{file}: {exc.errors[0]}") from None
        # The include file's addresses expand as the alias's own would (a name listing the alias
        # itself means its mailbox); its commands and files are the include file's, run as its
        # owner (Postfix), wherever it was included from.
        self._targets(texts, origin, node, "include", file, (*path, inode), walk)

    def _mailbox(self, canonical: str, path: tuple[_Node, ...], walk: _Walk) -> None:
        """A final local name: its ``.forward`` file when it has one, else its mailbox."""
        local, domain = split_address(canonical)
        if walk.forwards is None or (domain is not None and domain not in walk.local_domains):
            self._add(canonical, walk)
            return
        name = base_local_part(local)
        node: _Node = ("forward", name, domain)
        try:
            found = walk.forwards(name)
        except MapTempError as exc:
            raise _Failure("unavailable", f"~{name}/.forward: {exc}") from None
        except MapErrors as exc:
            raise _Failure("broken", f"{exc.errors[0]}") from None
        if found is None:
            self._add(canonical, walk)
            return
        self._enter(node, path)
        self._targets(found.targets, canonical, node, "forward", found.path, (*path, node), walk, found.user)

    def _add(self, recipient: str, walk: _Walk) -> None:
        if recipient in walk.out:
            return
        if len(walk.out) >= self.max_recipients:
            raise _Failure("size", f"alias expansion exceeds {self.max_recipients} recipients")
        walk.out[recipient] = None

    def _add_local(self, target: LocalTarget, walk: _Walk) -> None:
        address = target.address
        if len(address) > MAX_LOCAL_TARGET_ADDRESS:
            raise _Failure(
                "broken",
                f"{target.source_path}: {target.kind} target of {target.origin} longer than"
                f" {MAX_LOCAL_TARGET_ADDRESS} characters",
            )
        if address not in walk.out:
            self._add(address, walk)
            walk.local.append(target)


def _names_itself(node: _Node, key: str | None, canonical: str) -> bool:
    """Whether a target (``key``, ``canonical``) is the alias or ``.forward`` owner ``node``."""
    local, domain = split_address(canonical)
    if node[0] == "alias":
        return key is not None and (key, domain) == (node[1], node[2])
    if node[0] == "forward":
        return base_local_part(local) == node[1] and domain == node[2]
    return False


def _node_name(node: _Node) -> str:
    kind, name, _domain = node
    if kind == "include":
        return f":include:{name}"
    if kind == "forward":
        return f"~{name}/.forward"
    return name


class _Failure(Exception):
    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


def parse_aliases(
    text: str,
    path: str = "<string>",
    *,
    strict: bool = True,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_recipients: int = DEFAULT_MAX_RECIPIENTS,
    progress: Callable[[int], None] | None = None,
) -> Aliases:
    """Parse the text of an aliases file.

    Args:
        text: file contents.
        path: file name used in error messages.
        strict: raise on any error (``meta1 newaliases``, tests). With False (smar at run time)
            the good lines are kept, the errors are in :attr:`Aliases.errors`, and a bad line
            whose name could be read makes that name :attr:`Aliases.broken`; of two entries for
            one name the first is kept.
        max_depth: passed to :class:`Aliases`.
        max_recipients: passed to :class:`Aliases`.
        progress: called now and then with the number of the line reached (``meta1
            newaliases`` draws its progress bar with it).

    Raises:
        MapErrors: (``strict`` only) every problem in the file, as ``path:line: message``.
    """
    errors: list[MapError] = []
    broken: dict[str, BrokenEntry] = {}
    entries: dict[str, tuple[str, ...]] = {}
    next_report = 0
    for line, key, value in alias_entries(text, path, errors):
        if progress is not None and line >= next_report:
            progress(line)
            next_report = line + 1_000
        if isinstance(value, BrokenEntry):
            broken[key] = value
        else:
            entries[key] = value
    errors.sort(key=lambda e: e.line)
    if errors and strict:
        raise MapErrors(errors)
    return Aliases(
        entries,
        max_depth=max_depth,
        max_recipients=max_recipients,
        broken=broken,
        errors=tuple(errors),
        path=path,
    )


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an alias name (None: it can)."""
    if not name or any(c.isspace() for c in name):
        return f"bad alias name {name!r}"
    if "@" in name:
        local, domain = split_address(name)
        if not local or not domain:
            return f"alias name {name!r} needs a local part and a domain (local@domain)"
    return None


def alias_entries(
    text: str, path: str, errors: list[MapError]
) -> Iterator[tuple[int, str, tuple[str, ...] | BrokenEntry]]:
    """The entries of an aliases file's text, in file order: ``(line, name, targets)`` with the
    name lower-cased, each name once (the first entry).

    An entry with a bad target (or none) gives a :class:`BrokenEntry`; every problem is appended
    to ``errors`` as it is met (:func:`parse_aliases` builds the map from this; ``meta1 makemap``
    writes it to a compiled file as it goes).
    """
    first_seen: dict[str, int] = {}
    lines = map_entries(
        text,
        path,
        errors,
        separator=":",
        continuation="join",
        continuation_error="continuation line without an alias before it",
    )
    for entry in lines:
        first, name, rest = entry.line, entry.key, entry.value
        if rest is None:
            errors.append(MapError(path, first, f"expected 'name: target, ...', got {entry.text!r}"))
            continue
        if name.startswith('"') and name.endswith('"') and len(name) >= 2:
            name = name[1:-1]
        problem = _name_problem(name)
        if problem is not None:
            errors.append(MapError(path, first, problem))
            continue
        key = name.lower()
        targets: list[str] = []
        problems: list[MapError] = []
        for lineno, chunk in [(first, rest), *entry.more]:
            try:
                parts = split_targets(chunk)
            except ValueError as exc:
                problems.append(MapError(path, lineno, str(exc)))
                continue
            for target in parts:
                try:
                    parse_target(target)
                except ValueError as exc:
                    problems.append(MapError(path, lineno, str(exc)))
                    continue
                targets.append(target)
        if not targets and not problems:
            problems.append(MapError(path, first, f"alias {name!r} has no targets"))
        where = first_seen.get(key)
        if problems:
            errors.extend(problems)
            if where is None:
                first_seen[key] = first
                yield first, key, BrokenEntry(problems[0])
            continue
        if where is not None:
            errors.append(MapError(path, first, f"duplicate alias {name!r} (first defined on line {where})"))
            continue
        first_seen[key] = first
        yield first, key, tuple(targets)


def parse_alias_targets(text: str) -> tuple[str, ...]:
    """The targets of a compiled entry (``", ".join(targets)``, as :func:`alias_entries` gave them).

    Raises:
        ValueError: a target that a file would not allow, or none at all.
    """
    targets = tuple(split_targets(text))
    for target in targets:
        parse_target(target)
    if not targets:
        raise ValueError("no targets")
    return targets


def load_aliases(path: str | os.PathLike[str], *, strict: bool = True) -> Aliases:
    """Read and parse an aliases file (see :func:`parse_aliases`)."""
    name = os.fspath(path)
    return parse_aliases(read_map_file(name), name, strict=strict)
