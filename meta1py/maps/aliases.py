"""The aliases map: local names expanded to other recipients.

File format (a subset of Postfix aliases(5))::

    # comment lines start with '#' (after optional whitespace)
    postmaster: root
    root:       alice, bob@example.org
    team:       alice,
                carol
    alice:      alice, archive@example.org

* A logical line starts with non-whitespace text; a line starting with
  whitespace continues the previous logical line. Empty lines and lines whose
  first non-blank character is ``#`` are ignored anywhere. As in Postfix, a
  ``#`` later in a line is *not* a comment (``#`` is legal in local parts).
* ``name`` is a local part, matched case-insensitively. Targets are separated
  by commas and are either local names (qualified with the domain of the
  address being expanded) or full addresses ``local@domain``.
* Not supported, rejected when parsing: ``|command``, ``/file``,
  ``:include:/file`` targets. meta1py never runs programs or writes files on
  behalf of an alias; deliver to a program through LMTP instead.

Lookup of ``local+ext`` tries ``local+ext`` first, then ``local`` (the
recipient delimiter is ``+``).

Expansion follows chains. A name whose targets include itself is delivered to
itself (sendmail/Postfix behaviour, e.g. ``alice: alice, archive``); any
longer cycle (``a: b`` / ``b: a``) is an error, as are chains deeper than
``max_depth`` and expansions larger than ``max_recipients``. The result has
duplicates removed, first occurrence kept.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from meta1py.maps.errors import BrokenEntry, MapError, MapErrors
from meta1py.maps.lines import map_entries
from meta1py.maps.source import MapSource, Table, first_entry, lookup_first, read_map_file

RECIPIENT_DELIMITER = "+"
DEFAULT_MAX_DEPTH = 20
DEFAULT_MAX_RECIPIENTS = 1000


@dataclass(frozen=True, slots=True)
class Expansion:
    """The final recipients of an address (at least one)."""

    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExpansionFailure:
    """Expansion failed for a configuration reason (loop, depth, size, a broken entry).

    Attributes:
        reason: ``"loop"``, ``"depth"`` or ``"size"`` (permanent), or ``"broken"``: the expansion
            reached a name whose line in the file has an error (temporary: 451 4.3.5 until the
            file is fixed).
        text: a human-readable explanation naming the aliases involved.
    """

    reason: str
    text: str


ExpansionResult = Expansion | ExpansionFailure


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


def _check_target(target: str) -> str | None:
    """Return an error message for a target we refuse, else None."""
    bare = target[1:-1] if len(target) >= 2 and target[0] == target[-1] == '"' else target
    if bare.startswith("|"):
        return f"program targets are not supported: {target!r}"
    if bare.startswith("/"):
        return f"file targets are not supported: {target!r}"
    if bare.lower().startswith(":include:"):
        return f":include: targets are not supported: {target!r}"
    if any(c.isspace() for c in target):
        return f"target contains whitespace (missing comma?): {target!r}"
    local, domain = split_address(target)
    if not local:
        return f"target has an empty local part: {target!r}"
    if domain is not None and not domain:
        return f"target has an empty domain: {target!r}"
    return None


def alias_keys(local: str) -> list[str]:
    """The keys tried for ``local``, in order: ``local+ext`` (lower-cased), then ``local``."""
    key = local.lower()
    base = base_local_part(key)
    return [key] if base == key else [key, base]


async def lookup_alias(
    source: MapSource[tuple[str, ...]], local: str, *, deadline: float
) -> tuple[str, ...] | None:
    """The targets of ``local`` in ``source`` (one level: :meth:`Aliases.lookup` over a source).

    Expansion (:meth:`Aliases.expand`) still runs on the in-memory file map only.

    Raises:
        MapTempError: the source cannot answer now.
    """
    return await lookup_first(source, alias_keys(local), deadline=deadline)


class Aliases(Table[tuple[str, ...]]):
    """A parsed aliases map. Build it with :func:`parse_aliases` or :func:`load_aliases`.

    Args:
        entries: lower-cased name -> targets (as written).
        max_depth: longest chain followed.
        max_recipients: largest expansion allowed.
        broken: lower-cased names whose line has an error (``strict=False`` parsing): expanding
            one fails temporarily.
        errors: the file's bad lines (``strict=False`` parsing), for the log.
    """

    def __init__(
        self,
        entries: dict[str, tuple[str, ...]],
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_recipients: int = DEFAULT_MAX_RECIPIENTS,
        broken: dict[str, BrokenEntry] | None = None,
        errors: tuple[MapError, ...] = (),
    ) -> None:
        self._entries = entries
        self.max_depth = max_depth
        self.max_recipients = max_recipients
        self.broken: dict[str, BrokenEntry] = broken or {}
        self.errors = errors

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> tuple[str, ...] | None:
        """The targets of exactly ``key`` (a lower-case name), or None."""
        return self._entries.get(key)

    def broken_entry(self, key: str) -> BrokenEntry | None:
        """Why exactly ``key`` (a lower-case name) cannot be expanded, when its entry is broken."""
        return self.broken.get(key)

    def lookup_key(self, local: str) -> str | None:
        """The entry name that ``local`` matches (exact, then without ``+ext``), or None.

        A broken entry counts as a match (its name exists; expanding it fails temporarily).
        """
        for key in alias_keys(local):
            if self.get(key) is not None or self.broken_entry(key) is not None:
                return key
        return None

    def lookup(self, local: str) -> tuple[str, ...] | None:
        """The targets of ``local`` as written in the file, or None."""
        return first_entry(self, alias_keys(local))

    def expand(self, address: str, local_domains: Collection[str] = ()) -> ExpansionResult:
        """Expand ``address`` into its final recipients.

        An address is subject to aliasing when it has no domain or its domain
        (case-insensitively) is in ``local_domains``. Local recipients in the
        result have their local part and domain lower-cased; other addresses
        are returned as written. An address with no entry expands to itself.

        Args:
            address: ``local`` or ``local@domain``.
            local_domains: lower-case domains whose addresses are aliased.

        Returns:
            :class:`Expansion` or :class:`ExpansionFailure`.
        """
        out: dict[str, None] = {}  # ordered set of final recipients
        try:
            self._expand(address, local_domains, (), out)
        except _Failure as f:
            return ExpansionFailure(f.reason, f.text)
        return Expansion(tuple(out))

    def _node(self, address: str, local_domains: Collection[str]) -> tuple[str | None, str]:
        """``(entry key or None, canonical address)`` for one address."""
        local, domain = split_address(address)
        if domain is not None:
            domain = domain.lower()
            if domain not in local_domains:
                return None, address
        canonical = local.lower() if domain is None else f"{local.lower()}@{domain}"
        return self.lookup_key(local), canonical

    def _expand(
        self,
        address: str,
        local_domains: Collection[str],
        path: tuple[tuple[str, str | None], ...],
        out: dict[str, None],
    ) -> None:
        key, canonical = self._node(address, local_domains)
        if key is None:
            self._add(canonical, out)
            return
        broken = self.broken_entry(key)
        if broken is not None:
            raise _Failure("broken", f"alias {key!r}: {broken.text}")
        _local, domain = split_address(canonical)
        node = (key, domain)
        if node in path:
            chain = " -> ".join(n for n, _ in (*path, node))
            raise _Failure("loop", f"alias loop: {chain}")
        if len(path) >= self.max_depth:
            raise _Failure("depth", f"alias chain deeper than {self.max_depth} at {key!r}")
        inner = (*path, node)
        for target in self.get(key) or ():
            qualified = target if domain is None or "@" in target else f"{target}@{domain}"
            tkey, tcanonical = self._node(qualified, local_domains)
            if tkey is not None and (tkey, split_address(tcanonical)[1]) == node:
                # The name lists itself: deliver to its own mailbox (sendmail/Postfix).
                self._add(tcanonical, out)
            else:
                self._expand(qualified, local_domains, inner, out)

    def _add(self, recipient: str, out: dict[str, None]) -> None:
        if recipient in out:
            return
        if len(out) >= self.max_recipients:
            raise _Failure("size", f"alias expansion exceeds {self.max_recipients} recipients")
        out[recipient] = None


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

    Raises:
        MapErrors: (``strict`` only) every problem in the file, as ``path:line: message``.
    """
    errors: list[MapError] = []
    broken: dict[str, BrokenEntry] = {}
    entries: dict[str, tuple[str, ...]] = {}
    for _line, key, value in alias_entries(text, path, errors):
        if isinstance(value, BrokenEntry):
            broken[key] = value
        else:
            entries[key] = value
    errors.sort(key=lambda e: e.line)
    if errors and strict:
        raise MapErrors(errors)
    return Aliases(
        entries, max_depth=max_depth, max_recipients=max_recipients, broken=broken, errors=tuple(errors)
    )


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
        if not name or any(c.isspace() for c in name):
            errors.append(MapError(path, first, f"bad alias name {name!r}"))
            continue
        if name.startswith('"') and name.endswith('"') and len(name) >= 2:
            name = name[1:-1]
        if "@" in name:
            errors.append(MapError(path, first, f"alias name {name!r} must be a local part (no '@domain')"))
            continue
        key = name.lower()
        targets: list[str] = []
        problems: list[MapError] = []
        for lineno, chunk in [(first, rest), *entry.more]:
            for part in chunk.split(","):
                target = part.strip()
                if not target:
                    continue
                problem = _check_target(target)
                if problem is not None:
                    problems.append(MapError(path, lineno, problem))
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
    targets = tuple(t for t in (part.strip() for part in text.split(",")) if t)
    for target in targets:
        problem = _check_target(target)
        if problem is not None:
            raise ValueError(problem)
    if not targets:
        raise ValueError("no targets")
    return targets


def load_aliases(path: str | os.PathLike[str], *, strict: bool = True) -> Aliases:
    """Read and parse an aliases file (see :func:`parse_aliases`)."""
    name = os.fspath(path)
    return parse_aliases(read_map_file(name), name, strict=strict)
