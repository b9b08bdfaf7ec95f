"""The ``tls_policy`` map: which ``tls_requirements`` apply to which destination.

File format (one entry per line, ``#`` comments on whole lines; the line syntax is
:mod:`meta1py.maps.lines`, and a line starting with whitespace is an entry like any other)::

    # key                 tls_requirements
    example.com           verify; hostnames=mx1.example.com,mx2.example.com
    .example.com          encrypt
    bank.example          cert_fps=3E:1F:...:9A
    [smtp.example.net]:587  verify
    [192.0.2.7]           none
    *                     may

Keys:

- ``domain``: recipients in that domain (exact match);
- ``.domain``: recipients in any subdomain of it (most specific wins; an exact entry wins over it);
- ``[host]:port`` and ``[host]``: jobs whose nexthop is that bracketed host (a routes map entry
  ``smtp:[host]:port`` or a ``relayhost``); checked before the recipient domain, with the port first;
- ``*``: everything else (default: the ``tls_requirements`` option).

The rest of the line is a ``tls_requirements`` value in the syntax of
:func:`meta1py.tls.requirements.parse_tls_requirements` (no quotes needed around the whole value). Keys are
case-insensitive and a trailing dot is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from meta1py.maps.errors import BrokenEntry, MapError, MapErrors
from meta1py.maps.keys import domain_entry, exact_keys, parent_keys
from meta1py.maps.lines import map_entries
from meta1py.maps.source import MapSource, Table, first_entry, lookup_first
from meta1py.tls.requirements import TlsRequirements, parse_tls_requirements

__all__ = ["TlsPolicy", "destination_nexthop", "lookup_tls_policy", "parse_tls_policy", "tls_policy_keys"]


def _norm(key: str) -> str:
    return key.strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class TlsPolicy(Table[TlsRequirements | BrokenEntry]):
    """A parsed ``tls_policy`` map (build it with :func:`parse_tls_policy`).

    A value is a :class:`BrokenEntry` where the key's line has an error (``strict=False``
    parsing): smtpc defers that mail rather than send it under weaker requirements.

    Attributes:
        exact: ``domain`` and ``[host]``/``[host]:port`` entries.
        subdomains: ``.domain`` entries, keyed without the leading dot.
        default: the ``*`` entry, if any.
        errors: the file's bad lines (``strict=False`` parsing), for the log.
    """

    exact: dict[str, TlsRequirements | BrokenEntry]
    subdomains: dict[str, TlsRequirements | BrokenEntry]
    default: TlsRequirements | BrokenEntry | None = None
    errors: tuple[MapError, ...] = ()

    def get(self, key: str) -> TlsRequirements | BrokenEntry | None:
        """The entry of exactly ``key``: ``domain``, ``.domain``, ``[host]:port``, ``[host]`` or
        ``*`` (normalised), or None."""
        return domain_entry(key, self.exact, self.subdomains, self.default)

    def lookup(self, nexthop: str | None, domain: str) -> TlsRequirements | BrokenEntry | None:
        """The requirements for one recipient of a job.

        Args:
            nexthop: the bracketed nexthop of the job (``[host]:port``), or None for MX delivery.
            domain: the recipient's domain.

        Returns:
            The most specific entry, or None when the map has none (use the configured default).
        """
        return first_entry(self, tls_policy_keys(nexthop, domain))


def tls_policy_keys(nexthop: str | None, domain: str) -> list[str]:
    """The keys tried for one recipient, in order: the bracketed ``nexthop`` with its port, then
    without, then ``domain``, ``.parent`` from the most specific, then ``*``."""
    keys: list[str] = []
    if nexthop is not None:
        nexthop = _norm(nexthop)
        keys += exact_keys(nexthop)
        if not nexthop.endswith("]"):
            keys += exact_keys(nexthop.rpartition(":")[0])
    name = _norm(domain)
    keys += exact_keys(name) + parent_keys(name)
    keys.append("*")
    return keys


async def lookup_tls_policy(
    source: MapSource[TlsRequirements | BrokenEntry], nexthop: str | None, domain: str, *, deadline: float
) -> TlsRequirements | BrokenEntry | None:
    """:meth:`TlsPolicy.lookup` over a source.

    Raises:
        MapTempError: the source cannot answer now.
    """
    return await lookup_first(source, tls_policy_keys(nexthop, domain), deadline=deadline)


def destination_nexthop(destination: str) -> str | None:
    """The ``[host]:port`` part of a route destination such as ``smtp:[192.0.2.1]:25`` (else None)."""
    _transport, _sep, rest = destination.partition(":")
    return rest if rest.startswith("[") else None


def parse_tls_policy(text: str, path: str = "<string>", *, strict: bool = True) -> TlsPolicy:
    """Parse a ``tls_policy`` map.

    ``strict=False`` (smtpc at run time): keep the good lines; a line with a usable key but a bad
    or missing value leaves a :class:`BrokenEntry` under its key; the errors are in
    :attr:`TlsPolicy.errors`.

    Raises:
        MapErrors: (``strict`` only) every bad line (unknown syntax, a bad requirement, a
            duplicate key).
    """
    errors: list[MapError] = []
    exact: dict[str, TlsRequirements | BrokenEntry] = {}
    subdomains: dict[str, TlsRequirements | BrokenEntry] = {}
    default: TlsRequirements | BrokenEntry | None = None
    for entry in map_entries(text, path, errors, continuation="entry"):
        number, key, value = entry.line, entry.key, entry.value
        req: TlsRequirements | BrokenEntry
        if not value:
            error = MapError(path, number, f"{key!r} has no tls_requirements")
            errors.append(error)
            req = BrokenEntry(error)
        else:
            try:
                req = parse_tls_requirements(value)
            except ValueError as exc:
                error = MapError(path, number, str(exc))
                errors.append(error)
                req = BrokenEntry(error)
        name = _norm(key)
        if name == "*":
            if default is not None:
                errors.append(MapError(path, number, "duplicate key '*'"))
            else:
                default = req
            continue
        table = subdomains if name.startswith(".") else exact
        name = name.removeprefix(".")
        if not name or " " in name or (name.startswith("[") and "]" not in name):
            errors.append(MapError(path, number, f"bad key {key!r}"))
            continue
        if name in table:
            errors.append(MapError(path, number, f"duplicate key {key!r}"))
            continue
        table[name] = req
    errors.sort(key=lambda e: e.line)
    if errors and strict:
        raise MapErrors(errors)
    return TlsPolicy(exact, subdomains, default, tuple(errors))
