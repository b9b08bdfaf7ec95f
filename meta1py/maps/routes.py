"""The routes map: per-domain overrides of where mail goes.

File format (in the spirit of Postfix transport(5))::

    # domain            transport:nexthop
    example.com         smtp:[10.0.0.5]:2525
    .example.com        smtp:mx.example.net
    lists.example.org   lmtp:unix:/run/dovecot/lmtp
    store.example.org   lmtp:inet:[::1]:24
    local.test          maildir:
    gone.example        error:5.1.1 this domain no longer accepts mail
    *                   smtp:[smarthost.example.net]

Keys: ``domain`` matches that domain only; ``.domain`` matches its subdomains
(any depth, most specific wins); an exact entry wins over any subdomain
entry; ``*`` is the optional default. Keys are case-insensitive and a
trailing dot is ignored. Comments are whole lines starting with ``#``; the
rest of a line after the key is the value (``error:`` texts may contain
spaces and ``#``), so a ``#`` after a value is not a comment.

Values:

=============================  ==============================================
``smtp:[host]:port``           that host (A/AAAA only, no MX lookup), port
``smtp:[host]``                same, at the configured ``smtp_port``
``smtp:domain[:port]``         the MX hosts of ``domain``
``smtp:`` or ``smtp``          the MX hosts of the recipient's own domain
``lmtp:unix:/path``            LMTP over a Unix socket (absolute path)
``lmtp:inet:host[:port]``      LMTP over TCP (port 24 by default; ``[v6]``)
``maildir:``                   local Maildir delivery under ``mail_directory``
``error:[NNN ]X.Y.Z text``     refuse with that enhanced status code
=============================  ==============================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from meta1py.maps.errors import BrokenEntry, MapError, MapErrors
from meta1py.maps.keys import domain_entry, exact_keys, parent_keys
from meta1py.maps.lines import map_entries
from meta1py.maps.source import MapSource, Table, first_entry, lookup_first, read_map_file
from meta1py.smtp.status import PERM_UNDEFINED

LMTP_DEFAULT_PORT = 24


@dataclass(frozen=True, slots=True)
class SmtpRoute:
    """Deliver over SMTP.

    Attributes:
        host: nexthop host or domain; None means the recipient's domain.
        port: None means the configured ``smtp_port``.
        mx: True to look up MX records of ``host``; False for ``[host]``.
    """

    host: str | None
    port: int | None
    mx: bool


@dataclass(frozen=True, slots=True)
class LmtpRoute:
    """Deliver over LMTP to a Unix socket ``path`` or to TCP ``host``:``port``."""

    path: str | None = None
    host: str | None = None
    port: int = LMTP_DEFAULT_PORT


@dataclass(frozen=True, slots=True)
class MaildirRoute:
    """Deliver to the local Maildir tree."""


@dataclass(frozen=True, slots=True)
class ErrorRoute:
    """Refuse the recipient. ``code`` is the SMTP reply code matching ``enhanced``'s class."""

    code: int
    enhanced: str
    text: str

    @property
    def permanent(self) -> bool:
        return self.code >= 500


Route = SmtpRoute | LmtpRoute | MaildirRoute | ErrorRoute


def route_text(route: Route) -> str:
    """A route in the syntax :func:`parse_route` reads back (``meta1 map query`` prints it)."""
    if isinstance(route, SmtpRoute):
        if route.host is None:
            return "smtp:"
        host = route.host if route.mx else f"[{route.host}]"
        return f"smtp:{host}" if route.port is None else f"smtp:{host}:{route.port}"
    if isinstance(route, LmtpRoute):
        if route.path is not None:
            return f"lmtp:unix:{route.path}"
        name = route.host or ""
        return f"lmtp:inet:{f'[{name}]' if ':' in name else name}:{route.port}"
    if isinstance(route, MaildirRoute):
        return "maildir:"
    return f"error:{route.code} {route.enhanced} {route.text}"


_ERROR_RE = re.compile(
    r"^\s*(?:(?P<code>[245]\d\d)(?:\s+|$))?(?:(?P<enhanced>[245]\.\d{1,3}\.\d{1,3})(?:\s+|$))?"
    r"(?P<text>.*)$",
    re.DOTALL,
)
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_][a-z0-9_-]{0,62})*$")
_LITERAL_RE = re.compile(r"^\[[^\[\]\s]+\]$")


def _normalize_domain(domain: str) -> str:
    return domain.lower().rstrip(".")


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text!r}")
    return int(text)


def _split_host_port(text: str) -> tuple[str, bool, int | None]:
    """``[host]:port`` / ``[host]`` / ``host:port`` / ``host`` -> (host, bracketed, port)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in {text!r}")
        host = text[1:end]
        if host.lower().startswith("ipv6:"):
            host = host[5:]
        rest = text[end + 1 :]
        if not host:
            raise ValueError(f"empty host in {text!r}")
        if not rest:
            return host, True, None
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']'")
        return host, True, _parse_port(rest[1:])
    host, colon, port = text.partition(":")
    if not _DOMAIN_RE.match(_normalize_domain(host)):
        raise ValueError(f"bad host name {host!r}")
    return _normalize_domain(host), False, _parse_port(port) if colon else None


def parse_route(value: str) -> Route:
    """Parse one ``transport:nexthop`` value.

    Raises:
        ValueError: with a message for the operator.
    """
    transport, colon, nexthop = value.partition(":")
    transport = transport.lower()
    if transport == "smtp":
        nexthop = nexthop.strip()
        if not nexthop:
            return SmtpRoute(None, None, True)
        host, bracketed, port = _split_host_port(nexthop)
        return SmtpRoute(host, port, not bracketed)
    if transport == "lmtp":
        kind, _, where = nexthop.partition(":")
        if kind == "unix":
            if not where.startswith("/"):
                raise ValueError(f"lmtp:unix: needs an absolute socket path, got {where!r}")
            return LmtpRoute(path=where)
        if kind == "inet":
            if not where:
                raise ValueError("lmtp:inet: needs host[:port]")
            host, _bracketed, port = _split_host_port(where)
            return LmtpRoute(host=host, port=LMTP_DEFAULT_PORT if port is None else port)
        raise ValueError(f"lmtp needs 'unix:/path' or 'inet:host:port', got {nexthop!r}")
    if transport == "maildir":
        if nexthop.strip():
            raise ValueError(f"maildir: takes no nexthop, got {nexthop!r}")
        return MaildirRoute()
    if transport == "error":
        m = _ERROR_RE.match(nexthop)
        assert m is not None  # the pattern matches any text
        code = int(m["code"]) if m["code"] else None
        enhanced = m["enhanced"] or PERM_UNDEFINED
        text = m["text"].strip() or "delivery not allowed"
        cls = enhanced[0]
        if cls == "2":
            raise ValueError(f"error: needs a 4.x.x or 5.x.x code, got {enhanced}")
        if code is None:
            code = 550 if cls == "5" else 450
        elif str(code)[0] != cls:
            raise ValueError(f"reply code {code} does not match enhanced code {enhanced}")
        return ErrorRoute(code, enhanced, text)
    if not colon:
        raise ValueError(f"expected 'transport:nexthop', got {value!r}")
    raise ValueError(f"unknown transport {transport!r} (smtp, lmtp, maildir, error)")


class Routes(Table[Route | BrokenEntry]):
    """A parsed routes map. Build it with :func:`parse_routes` or :func:`load_routes`.

    A value is a :class:`BrokenEntry` where the key's line has an error (``strict=False``
    parsing): mail for that domain is deferred, not routed by a less specific entry.
    """

    def __init__(
        self,
        exact: dict[str, Route | BrokenEntry],
        subdomains: dict[str, Route | BrokenEntry],
        default: Route | BrokenEntry | None,
        errors: tuple[MapError, ...] = (),
    ) -> None:
        self._exact = exact
        self._subdomains = subdomains
        self.default = default
        #: The file's bad lines (``strict=False`` parsing), for the log.
        self.errors = errors

    def __len__(self) -> int:
        return len(self._exact) + len(self._subdomains) + (self.default is not None)

    def get(self, key: str) -> Route | BrokenEntry | None:
        """The route of exactly ``key``: ``domain``, ``.domain`` or ``*`` (normalised), or None."""
        return domain_entry(key, self._exact, self._subdomains, self.default)

    def lookup(self, domain: str, *, use_default: bool = True) -> Route | BrokenEntry | None:
        """The route for ``domain``: exact entry, else the most specific ``.parent``
        entry, else ``*`` (when ``use_default``), else None."""
        return first_entry(self, route_keys(domain, use_default=use_default))


def route_keys(domain: str, *, use_default: bool = True) -> list[str]:
    """The keys tried for ``domain``, in order: ``domain``, ``.parent`` from the most specific
    (not for an address literal ``[...]``), then ``*`` when ``use_default``."""
    name = _normalize_domain(domain)
    keys = exact_keys(name)
    if not name.startswith("["):
        keys += parent_keys(name)
    if use_default:
        keys.append("*")
    return keys


async def lookup_route(
    source: MapSource[Route | BrokenEntry], domain: str, *, use_default: bool = True, deadline: float
) -> Route | BrokenEntry | None:
    """:meth:`Routes.lookup` over a source.

    Raises:
        MapTempError: the source cannot answer now.
    """
    return await lookup_first(source, route_keys(domain, use_default=use_default), deadline=deadline)


def parse_routes(text: str, path: str = "<string>", *, strict: bool = True) -> Routes:
    """Parse the text of a routes file.

    ``strict=False`` (smar at run time): keep the good lines; a line whose key is a valid domain
    but whose value is bad leaves a :class:`BrokenEntry` under its key; the errors are in
    :attr:`Routes.errors`.

    Raises:
        MapErrors: (``strict`` only) every problem in the file, as ``path:line: message``.
    """
    errors: list[MapError] = []
    exact: dict[str, Route | BrokenEntry] = {}
    subdomains: dict[str, Route | BrokenEntry] = {}
    default: Route | BrokenEntry | None = None
    for _line, key, route in route_entries(text, path, errors):
        if key == "*":
            default = route
        elif key.startswith("."):
            subdomains[key[1:]] = route
        else:
            exact[key] = route
    if errors and strict:
        raise MapErrors(errors)
    return Routes(exact, subdomains, default, tuple(errors))


def route_entries(
    text: str, path: str, errors: list[MapError]
) -> Iterator[tuple[int, str, Route | BrokenEntry]]:
    """The entries of a routes file's text, in file order: ``(line, key, route)`` with the key
    normalised as :meth:`Routes.get` takes it (``domain``, ``.parent``, ``*``), each key once.

    A line whose key is good but whose value is not gives a :class:`BrokenEntry`; every problem is
    appended to ``errors`` as it is met (:func:`parse_routes` builds the map from this;
    ``meta1 makemap`` writes it to a compiled file as it goes).
    """
    seen: dict[str, int] = {}
    lines = map_entries(text, path, errors, continuation_error="continuation lines are not allowed in routes")
    for entry in lines:
        lineno, key, value = entry.line, entry.key, entry.value
        if value is None:
            errors.append(MapError(path, lineno, f"expected 'domain transport:nexthop', got {entry.text!r}"))
            continue
        key_norm = key if key == "*" else _normalize_domain(key)
        if key_norm != "*":
            is_parent = key_norm.startswith(".")
            bare = key_norm[1:] if is_parent else key_norm
            if not (_DOMAIN_RE.match(bare) or (not is_parent and _LITERAL_RE.match(bare))):
                errors.append(MapError(path, lineno, f"bad domain {key!r}"))
                continue
        if key_norm in seen:
            errors.append(MapError(path, lineno, f"duplicate key {key!r} (first on line {seen[key_norm]})"))
            continue
        route: Route | BrokenEntry
        try:
            route = parse_route(value)
        except ValueError as e:
            error = MapError(path, lineno, str(e))
            errors.append(error)
            route = BrokenEntry(error)
        seen[key_norm] = lineno
        yield lineno, key_norm, route


def load_routes(path: str | os.PathLike[str]) -> Routes:
    """Read and parse a routes file (see :func:`parse_routes`)."""
    name = os.fspath(path)
    return parse_routes(read_map_file(name), name)
