"""Where a recipient goes: smar's routing decisions.

Two questions are answered here, with the same rules:

* :meth:`Router.check_recipient` (smtps, at RCPT time): may this local
  recipient be accepted?
* :meth:`Router.expand_local` then :meth:`Router.route` (qmgr, when
  scheduling): which final recipients does an address expand to, and where
  does each one go? :meth:`Router.resolve_recipient` does both.

Precedence for one final recipient ``local@domain``:

1. ``domain`` in ``local_domains``: Maildir delivery to
   ``mail_directory/<domain>/<local>/`` (local part lower-cased, ``+ext``
   removed) or, with ``home_mailbox`` and a local part that names a user
   (:func:`meta1py.smar.localfiles.home_account`), to the Maildir
   ``$HOME/<home_mailbox>`` written as that user (destination
   ``maildir:USER``), unless the routes map has an entry for the domain
   itself or a ``.parent`` of it (not ``*``). That exception is what lets a
   gateway accept mail for its domains and hand it to a mail store
   (``lmtp:...``); without it a domain could not be both accepted and
   relayed.
2. the routes map (exact, ``.parent``, then ``*``);
3. ``relayhost`` (``[host]:port``: that host; ``host``: its MX);
4. the MX of the domain, at ``smtp_port``.

Local recipients and the aliases map (policy choice, issue 5): when no
aliases map is configured every local part of a local domain is accepted and
gets its own Maildir. When a map is configured it is the list of valid
names: a local recipient is accepted only when its local part (or the part
before ``+``) is a name in the map, or is ``postmaster`` (RFC 5321 §4.5.1
requires it); anything else is ``550 5.1.1`` user unknown. A name that should
be a mailbox is written ``alice: alice``; with ``home_mailbox`` the users
that get a home Maildir are valid too, as Postfix's ``local_recipient_maps``
accepts the password file's users. Targets of an alias need no entry of their
own (the operator wrote them). Local domains routed elsewhere by the routes
map are not checked: the server behind them knows its users.

Commands and files (aliases(5) ``|command`` and ``/file`` targets, also from ``:include:`` and
``.forward`` files): the expansion writes them into the queue as ``origin:|command`` or
``origin:/file`` (:func:`meta1py.maps.aliases.local_target_address`). :meth:`Router.route`
expands ``origin`` again and routes such a target only when that expansion reaches it, only when
``allow_mail_to_commands``/``allow_mail_to_files`` allows its source (else ``550 5.7.1 mail to
command is restricted``, Postfix's words), and as the account Postfix's local(8) would use
(:func:`meta1py.smar.localfiles.account_for`): the ``pipe`` or ``file`` transport, destination
``pipe:USER``. A recipient whose local part reads as a command or a file is refused at RCPT.

Failures to resolve a nexthop the operator configured (routes map host,
relayhost) are temporary even when DNS says the name does not exist: that is
a configuration mistake to fix, not a reason to bounce mail. The recipient's
own domain keeps DNS's verdict (NXDOMAIN and null MX bounce).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar

from meta1py.conf import Config
from meta1py.conf.mapspec import MapSpec
from meta1py.maps import BrokenEntry, ReloadingMap
from meta1py.maps.access import AccessMap, parse_access, parse_access_value
from meta1py.maps.aliases import (
    Aliases,
    Expansion,
    ExpansionFailure,
    LocalKind,
    TargetSource,
    base_local_part,
    parse_aliases,
    parse_local_target_address,
    split_address,
)
from meta1py.maps.routes import (
    ErrorRoute,
    LmtpRoute,
    MaildirRoute,
    Route,
    Routes,
    SmtpRoute,
    parse_routes,
)
from meta1py.maps.source import MapSource, Table
from meta1py.maps.views import (
    AccessSource,
    AccessView,
    AliasesView,
    Format,
    ParsedSource,
    RoutesView,
    SequenceTable,
    UnansweredTable,
    open_member,
)
from meta1py.smar.localfiles import (
    Account,
    AccountError,
    ForwardFiles,
    IncludeFiles,
    account_for,
    home_account,
)
from meta1py.smar.resolver import DnsFailure, MxResult, Resolver
from meta1py.smar.socketmap import SocketmapClient
from meta1py.smtp.status import (
    PERM_BAD_DESTINATION_MAILBOX,
    PERM_BAD_DESTINATION_SYNTAX,
    PERM_BAD_DESTINATION_SYSTEM,
    PERM_NOT_AUTHORIZED,
    PERM_ROUTING_LOOP,
    TEMP_MAIL_SYSTEM_ERROR,
    TEMP_SYSTEM_MISCONFIGURED,
    TEMP_UNABLE_TO_ROUTE,
)

log = logging.getLogger(__name__)

Transport = Literal["smtp", "lmtp", "maildir", "pipe", "file"]
#: Where a local delivery's account comes from: a command or file's source, or home_mailbox.
LocalSource = TargetSource | Literal["home_mailbox"]

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


# -- results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PermanentFailure:
    """The recipient cannot be delivered (bounce / 5xx)."""

    code: int
    enhanced: str
    text: str


@dataclass(frozen=True, slots=True)
class TemporaryFailure:
    """Try again later (defer / 4xx)."""

    code: int
    enhanced: str
    text: str


class SmtpHost(NamedTuple):
    """One address to try: the host's name (for logs and TLS), its IP and port."""

    hostname: str
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """Deliver the recipient with ``transport``.

    Attributes:
        transport: ``"smtp"``, ``"lmtp"``, ``"maildir"``, ``"pipe"`` (a command) or ``"file"``.
        destination: key for per-destination concurrency limits, e.g.
            ``smtp:example.com``, ``smtp:[10.0.0.5]:2525``,
            ``lmtp:unix:/run/lmtp``, ``lmtp:inet:store:24``, ``maildir``, ``pipe:nobody``.
        address: the recipient address to deliver to.
        hosts: smtp only: addresses in the order to try.
        lmtp_socket: lmtp over a Unix socket: its path.
        lmtp_address: lmtp over TCP: ``(host, port)``.
        maildir: maildir only: the Maildir directory (holding tmp/new/cur).
        target: pipe: the command; file: the file.
        account: pipe and file: who runs it; maildir: the user whose home Maildir it is.
        source: pipe and file: where the target came from (``alias``, ``include``, ``forward``);
            ``home_mailbox`` for a home Maildir.
    """

    transport: Transport
    destination: str
    address: str
    hosts: tuple[SmtpHost, ...] = ()
    lmtp_socket: str | None = None
    lmtp_address: tuple[str, int] | None = None
    maildir: Path | None = None
    target: str | None = None
    account: Account | None = None
    source: LocalSource | None = None


RouteResult = Delivery | PermanentFailure | TemporaryFailure


@dataclass(frozen=True, slots=True)
class RecipientAccepted:
    """``check_recipient``: accept. ``local`` tells whether the domain is ours; ``expanded`` holds
    a local recipient's final recipients after alias expansion (empty for other domains)."""

    local: bool
    expanded: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class RecipientRejected:
    """``check_recipient``: reject with this reply."""

    code: int
    enhanced: str
    text: str


RecipientCheck = RecipientAccepted | RecipientRejected


# -- the router -----------------------------------------------------------------

_UNSAFE_LOCAL = re.compile(r"[/\\\x00-\x1f\x7f]")
_SAFE_DOMAIN = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


def _domain(domain: str) -> str:
    return domain.strip().lower().rstrip(".")


def _names_a_command_or_file(local: str) -> bool:
    """Whether a local part (quoted or not) reads as an aliases(5) command, file or include."""
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return local.startswith(("|", "/")) or local[:9].lower() == ":include:"


_NO_ALIASES = Aliases({}, path="<none>")


class Router:
    """smar's routing logic over a config, the maps and a :class:`Resolver`.

    Args:
        config: the parsed configuration.
        resolver: DNS resolver.
        map_check_interval_s: how often map files are checked for changes.

    Raises:
        meta1py.maps.MapErrors: a configured map file is missing or invalid.
    """

    def __init__(self, config: Config, resolver: Resolver, *, map_check_interval_s: float = 1.0) -> None:
        self.config = config
        self.resolver = resolver
        self.local_domains = frozenset(_domain(d) for d in config.local_domains)
        self._default_domain = _domain(config.local_domains[0]) if config.local_domains else ""
        check = map_check_interval_s
        self._aliases: _Current[Aliases] | None = _file_map(config.smar.aliases, "aliases", check)
        self._routes: _Current[Routes] | None = _file_map(config.smar.routes, "routes", check)
        self._access: _Current[AccessMap] | None = None
        #: The access map as smar fetches it before a decision (None: no access map). Its
        #: ``await snapshot(keys, deadline=...)`` asks the members that must be asked (socketmap).
        self.access_source: AccessSource | None = None
        if config.smar.access is not None:
            self._access, self.access_source = _access_map(config.smar.access, check)
        #: Reads :include: files and (with forward_path) .forward files during expansions.
        self.includes = IncludeFiles()
        self.forwards: ForwardFiles | None = (
            ForwardFiles(config.forward_path) if config.forward_path else None
        )

    @property
    def access(self) -> AccessMap | None:
        """The current access map, or None when none is configured.

        Synchronous: text and compiled members answer; a socketmap member answers every key with
        a temporary failure here (a :class:`BrokenEntry`), so that a caller that cannot wait
        defers rather than decides without it. :attr:`access_source` asks it.
        """
        return self._access.current if self._access is not None else None

    # -- public API --------------------------------------------------------------

    def is_local(self, domain: str) -> bool:
        """Whether ``domain`` is one of ``local_domains``."""
        return _domain(domain) in self.local_domains

    def check_recipient(self, address: str) -> RecipientCheck:
        """RCPT-time check (smtps). Non-local addresses are accepted here
        with ``local=False``: whether the client may relay is the caller's
        question (``relay_clients``)."""
        local, domain = self._split(address)
        if domain not in self.local_domains:
            return RecipientAccepted(local=False)
        if _names_a_command_or_file(local):
            # Commands and files come from the operator's files only, never from a client.
            return RecipientRejected(
                550, PERM_BAD_DESTINATION_SYNTAX, f"<{address}>: a command or file name is not a mail address"
            )
        expanded = self.expand_local(f"{local}@{domain}")
        if isinstance(expanded, PermanentFailure | TemporaryFailure):
            return RecipientRejected(expanded.code, expanded.enhanced, expanded.text)
        return RecipientAccepted(local=True, expanded=tuple(expanded))

    def expand_local(self, address: str) -> list[str] | PermanentFailure | TemporaryFailure:
        """Final recipients of ``address`` after alias expansion (aliases, :include: files,
        ``.forward`` files with ``forward_path``).

        A non-local address is returned unchanged. Local addresses come back
        with lower-cased local part and domain; commands and files as
        :func:`~meta1py.maps.aliases.local_target_address` writes them.
        """
        local, domain = self._split(address)
        if domain not in self.local_domains:
            return [address]
        failure = self._local_failure(local, domain)
        if failure is not None:
            return failure
        result = self._expansion(local, domain)
        if isinstance(result, Expansion):
            return list(result.recipients)
        return result

    def _expansion(self, local: str, domain: str) -> Expansion | PermanentFailure | TemporaryFailure:
        """The expansion of the local address ``local@domain`` (with its commands and files)."""
        qualified = f"{local}@{domain}"
        aliases = self._aliases.current if self._aliases is not None else None
        if aliases is None:
            if self.forwards is None:
                return Expansion((f"{local.lower()}@{domain}",))
            aliases = _NO_ALIASES
        result = aliases.expand(qualified, self.local_domains, includes=self.includes, forwards=self.forwards)
        if isinstance(result, ExpansionFailure):
            log.error("aliases: %s (for %s)", result.text, qualified)
            if result.reason == "broken":
                return TemporaryFailure(451, TEMP_SYSTEM_MISCONFIGURED, result.text)
            if result.reason == "unavailable":
                return TemporaryFailure(451, TEMP_MAIL_SYSTEM_ERROR, result.text)
            return PermanentFailure(550, PERM_ROUTING_LOOP, result.text)
        return result

    async def route(self, address: str) -> RouteResult:
        """Where one final (already expanded) recipient goes."""
        command_or_file = parse_local_target_address(address)
        if command_or_file is not None:
            return self._route_local(address, *command_or_file)
        local, domain = self._split(address)
        address = f"{local}@{domain}"
        routes = self._routes.current if self._routes is not None else None
        if domain in self.local_domains:
            route = routes.lookup(domain, use_default=False) if routes is not None else None
            if route is None or isinstance(route, MaildirRoute):
                return self._home_maildir(local, domain) or self._maildir(local, domain)
            return await self._follow(route, address, local, domain)
        route = routes.lookup(domain) if routes is not None else None
        if route is not None:
            return await self._follow(route, address, local, domain)
        relay = self.config.smtpc.relayhost
        if relay is not None:
            return await self._smtp(address, relay.host, relay.port, relay.mx, configured=True)
        return await self._smtp(address, domain, self.config.smtpc.smtp_port, True, configured=False)

    async def resolve_recipient(self, address: str) -> list[tuple[str, RouteResult]]:
        """:meth:`expand_local`, then :meth:`route` for each final recipient."""
        expanded = self.expand_local(address)
        if isinstance(expanded, PermanentFailure | TemporaryFailure):
            return [(address, expanded)]
        return [(rcpt, await self.route(rcpt)) for rcpt in expanded]

    # -- helpers -----------------------------------------------------------------

    def _split(self, address: str) -> tuple[str, str]:
        local, domain = split_address(address.strip())
        # A bare local part (e.g. RCPT TO:<postmaster>, RFC 5321 §4.1.1.3)
        # belongs to the first local domain.
        return local, _domain(domain) if domain is not None else self._default_domain

    def _route_local(self, address: str, origin: str, kind: LocalKind, target: str) -> RouteResult:
        """A command or file: delivered only when expanding ``origin`` again reaches it (so only
        targets from the operator's files ever run, whatever the queue holds), when
        ``allow_mail_to_commands``/``allow_mail_to_files`` allows its source, as the account
        Postfix would use."""
        local, domain = self._split(origin)
        if domain not in self.local_domains:
            return PermanentFailure(550, PERM_BAD_DESTINATION_SYNTAX, f"<{address}>: not a local address")
        expansion = self._expansion(local, domain)
        if not isinstance(expansion, Expansion):
            return expansion
        found = next((t for t in expansion.local if t.kind == kind and t.target == target), None)
        if found is None:
            return PermanentFailure(
                550, PERM_BAD_DESTINATION_MAILBOX, f"<{origin}>: no {kind} {target!r} among its targets"
            )
        allowed = self.config.allow_mail_to_commands if kind == "command" else self.config.allow_mail_to_files
        if found.source not in allowed:
            # Postfix's words (local(8)), and its status: the operator did not allow it.
            return PermanentFailure(550, PERM_NOT_AUTHORIZED, f"mail to {kind} is restricted")
        try:
            account = account_for(found, self.config.default_privs)
        except AccountError as exc:
            log.error("%s: %s", address, exc)
            return TemporaryFailure(451, TEMP_SYSTEM_MISCONFIGURED, str(exc))
        transport: Transport = "pipe" if kind == "command" else "file"
        return Delivery(
            transport,
            f"{transport}:{account.user}",
            address,
            target=target,
            account=account,
            source=found.source,
        )

    def _local_failure(self, local: str, domain: str) -> PermanentFailure | None:
        if self._aliases is None:
            return None
        if self._routes is not None:
            route = self._routes.current.lookup(domain, use_default=False)
            if route is not None and not isinstance(route, MaildirRoute):
                return None
        if self._aliases.current.lookup_key(local, domain) is not None:
            return None
        if base_local_part(local).lower() == "postmaster":
            return None
        if self._home_account(local) is not None:
            # Postfix's local_recipient_maps: the password file's users exist with home_mailbox.
            return None
        return PermanentFailure(550, PERM_BAD_DESTINATION_MAILBOX, f"<{local}@{domain}>: user unknown")

    def _home_account(self, local: str) -> Account | None:
        """The local user whose home Maildir gets ``local``'s mail, when ``home_mailbox`` is set."""
        if self.config.home_mailbox is None:
            return None
        name = base_local_part(local).lower()
        if _UNSAFE_LOCAL.search(name):
            return None
        return home_account(name)

    def _home_maildir(self, local: str, domain: str) -> Delivery | None:
        """``home_mailbox`` for a local user (:func:`~meta1py.smar.localfiles.home_account`): the
        Maildir below the home, written as the user; None for everyone else."""
        account = self._home_account(local)
        if account is None:
            return None
        assert self.config.home_mailbox is not None
        path = Path(account.home) / self.config.home_mailbox
        return Delivery(
            "maildir",
            f"maildir:{account.user}",
            f"{local}@{domain}",
            maildir=path,
            account=account,
            source="home_mailbox",
        )

    def _maildir(self, local: str, domain: str) -> RouteResult:
        name = base_local_part(local).lower()
        # The local part and domain become path components: refuse anything
        # that could leave mail_directory or hide files.
        if not name or name.startswith((".", "|")) or _UNSAFE_LOCAL.search(name):
            return PermanentFailure(
                550, PERM_BAD_DESTINATION_SYNTAX, f"<{local}@{domain}>: mailbox name not allowed"
            )
        if not _SAFE_DOMAIN.match(domain):
            return PermanentFailure(
                550, PERM_BAD_DESTINATION_SYSTEM, f"domain {domain!r} not allowed for Maildir"
            )
        path = Path(self.config.mail_directory) / domain / name
        return Delivery("maildir", "maildir", f"{local}@{domain}", maildir=path)

    async def _follow(self, route: Route | BrokenEntry, address: str, local: str, domain: str) -> RouteResult:
        if isinstance(route, BrokenEntry):
            log.error("routes: %s (for %s)", route.text, address)
            return TemporaryFailure(451, TEMP_SYSTEM_MISCONFIGURED, f"routes: {route.text}")
        if isinstance(route, MaildirRoute):
            return self._maildir(local, domain)
        if isinstance(route, ErrorRoute):
            if route.permanent:
                return PermanentFailure(route.code, route.enhanced, route.text)
            return TemporaryFailure(route.code, route.enhanced, route.text)
        if isinstance(route, LmtpRoute):
            if route.path is not None:
                return Delivery("lmtp", f"lmtp:unix:{route.path}", address, lmtp_socket=route.path)
            assert route.host is not None
            return Delivery(
                "lmtp",
                f"lmtp:inet:{route.host}:{route.port}",
                address,
                lmtp_address=(route.host, route.port),
            )
        assert isinstance(route, SmtpRoute)
        port = self.config.smtpc.smtp_port if route.port is None else route.port
        if route.host is None:
            return await self._smtp(address, domain, port, True, configured=False)
        return await self._smtp(address, route.host, port, route.mx, configured=True)

    async def _smtp(self, address: str, host: str, port: int, mx: bool, *, configured: bool) -> RouteResult:
        if mx:
            result = await self.resolver.resolve_mx(host)
            default_port = port == self.config.smtpc.smtp_port
            destination = f"smtp:{result.domain}" + ("" if default_port else f":{port}")
        else:
            result = await self.resolver.resolve_host(host)
            bracketed = result.domain if result.domain.startswith("[") else f"[{result.domain}]"
            destination = f"smtp:{bracketed}:{port}"
        if result.failure is not None:
            return _dns_failure(result.failure, host, configured)
        return Delivery("smtp", destination, address, hosts=_hosts(result, port))


def _hosts(result: MxResult, port: int) -> tuple[SmtpHost, ...]:
    return tuple(SmtpHost(h.name, ip, port) for h in result.hosts for ip in h.addresses)


def _dns_failure(failure: DnsFailure, host: str, configured: bool) -> RouteResult:
    if not failure.permanent:
        return TemporaryFailure(failure.code, failure.enhanced, failure.text)
    if configured:
        log.error("configured nexthop %s does not resolve: %s", host, failure.text)
        return TemporaryFailure(451, TEMP_UNABLE_TO_ROUTE, f"nexthop {host}: {failure.text}")
    return PermanentFailure(failure.code, failure.enhanced, failure.text)


# -- the maps ---------------------------------------------------------------------


class _Current(Protocol[_T_co]):
    """A map in its current version (a :class:`ReloadingMap`, or a :class:`_Fixed` view)."""

    @property
    def current(self) -> _T_co: ...


class _Fixed(Generic[_T]):
    """A map that follows its files by itself (a view over compiled or sequence members)."""

    def __init__(self, value: _T) -> None:
        self.current = value


_TEXT_PARSERS: dict[Format, Callable[..., Any]] = {
    "access": parse_access,
    "routes": parse_routes,
    "aliases": parse_aliases,
}


def _members(spec: MapSpec, fmt: Format, check_interval_s: float) -> list[Table[Any]]:
    """The members of ``spec`` as tables, in order (a socketmap as :class:`UnansweredTable`).

    Raises:
        MapErrors: a file cannot be read, or a compiled file holds another format.
    """
    tables: list[Table[Any]] = []
    for member in spec.members:
        if member.kind == "socketmap":
            tables.append(UnansweredTable(str(member)))
        else:
            assert member.path is not None
            tables.append(open_member(fmt, member.kind, member.path, check_interval_s=check_interval_s))
    return tables


_VIEWS: dict[Format, Callable[[Table[Any]], Any]] = {
    "access": AccessView,
    "routes": RoutesView,
    "aliases": AliasesView,
}


def _view(tables: list[Table[Any]], fmt: Format) -> _Fixed[Any]:
    return _Fixed(_VIEWS[fmt](tables[0] if len(tables) == 1 else SequenceTable(tables)))


def _file_map(spec: MapSpec | None, fmt: Format, check_interval_s: float) -> Any:
    """The map of an option: one text file as before (a :class:`ReloadingMap`), anything else (a
    compiled file, a sequence) as a view over its members."""
    if spec is None:
        return None
    if len(spec.members) == 1 and spec.members[0].kind == "text":
        path = spec.members[0].path
        assert path is not None
        parse = functools.partial(_TEXT_PARSERS[fmt], strict=False)
        return ReloadingMap(path, parse, check_interval_s=check_interval_s)
    return _view(_members(spec, fmt, check_interval_s), fmt)


def _access_map(spec: MapSpec, check_interval_s: float) -> tuple[_Current[AccessMap], AccessSource]:
    """The synchronous access map and the source smar asks before a decision (each file is
    opened once and serves both)."""
    if all(m.kind != "socketmap" for m in spec.members):
        current: _Current[AccessMap] = _file_map(spec, "access", check_interval_s)
        return current, AccessSource(lambda: current.current)
    tables: list[Table[Any]] = []
    sources: list[MapSource[Any]] = []
    for member in spec.members:
        if member.kind == "socketmap":
            unix, inet = member.unix_path, member.inet_address
            client = SocketmapClient(member.name, unix_path=unix, inet_address=inet)
            sources.append(ParsedSource(client, parse_access_value, str(member)))
            tables.append(UnansweredTable(str(member)))
        else:
            assert member.path is not None
            table = open_member("access", member.kind, member.path, check_interval_s=check_interval_s)
            sources.append(table)
            tables.append(table)
    view = _view(tables, "access")
    return view, AccessSource(lambda: view.current, sources)
