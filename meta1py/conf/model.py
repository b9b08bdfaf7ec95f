"""The configuration model: frozen dataclasses, which are also the schema.

Each option is declared exactly once below, with `opt()`: its type and range, its default in
configuration syntax, a one-line doc and an example. Each section is declared with `sect()`.
Attribute names are the option names lower-cased. After parsing, every path is absolute
(`queue_directory` relative to the current directory, smar's greylisting ``database`` relative
to smar's data directory ``queue_directory/smar``, every other path relative to
`queue_directory`), times are float seconds and sizes int bytes.

To add an option, add one `opt(...)` field to the class of its section; the parser, `dump_config`,
``check-config --defaults`` and docs/meta1.conf.md pick it up.
"""

# opt()/sect() return dataclasses.field(...) objects carrying the schema; that is the point.
# ruff: noqa: RUF009

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meta1py.conf.mapspec import MapSpec, MapSpecType
from meta1py.conf.schema import (
    Boolean,
    Choice,
    Flags,
    Hostname,
    HostPort,
    Integer,
    InvalidValue,
    IPAddress,
    ListOf,
    Network,
    PathType,
    RelayhostType,
    Scalar,
    Size,
    Text,
    Time,
    ValueType,
    Word,
    opt,
    sect,
)
from meta1py.contract import WORKER_NAMES
from meta1py.tls.requirements import parse_tls_requirements

LOG_LEVELS = Choice("debug", "info", "warning", "error")
#: The values of ``log_format``; meta1py.log.LOG_FORMATS has the same words (a unit test checks).
LOG_FORMATS = Choice("text", "json", "postfix")

#: Every SMTP server flag, in documentation order.
SMTPS_FLAGS: tuple[str, ...] = (
    "pipelining",
    "8bitmime",
    "smtputf8",
    "chunking",
    "dsn",
    "enhancedstatuscodes",
    "size",
    "vrfy",
    "bare_newline_normalize",
    "request_cert",
)
#: Flags that are on unless negated.
SMTPS_DEFAULT_FLAGS: frozenset[str] = frozenset(SMTPS_FLAGS) - {"vrfy", "bare_newline_normalize"}


def _fqdn() -> str:
    """This host's fully qualified name, or "localhost" when it has none usable."""
    import socket  # only here: the conf package must not import socket at module level

    try:
        name = socket.getfqdn().lower().rstrip(".")
    except OSError:
        return "localhost"
    try:
        return Hostname().parse_one(Scalar(name))
    except InvalidValue:  # an odd system name (say, with spaces): fall back to the safe default
        return "localhost"


# The process sections share these options; each subclass redeclares `user` with its own default.
def _user(default: str) -> Any:
    return opt("user", Word(), default, "user the process runs as (only used when started as root)", default)


def _group() -> Any:
    return opt(
        "group", Word(), "meta1", "group the process runs as (only used when started as root)", "meta1"
    )


def _restart_dependencies() -> Any:
    return opt(
        "restart_dependencies",
        ListOf(Choice(*WORKER_NAMES)),
        (),
        "processes that mcp restarts together with this one",
        "{ smtps }",
    )


def _log_level() -> Any:
    return opt(
        "log_level", LOG_LEVELS, None, "log level of this process (default: the global log_level)", "debug"
    )


@dataclass(frozen=True)
class ListenSocket:
    """``listen_socket { address = ...; port = ...; }`` inside an smtps section."""

    address: str = opt("address", IPAddress(), "127.0.0.1", "IP address to listen on", "::1")
    port: int = opt("port", Integer(1, 65535), "2525", "TCP port to listen on", "25")
    tls: str = opt(
        "tls", Choice("none", "implicit"), "none", "implicit: TLS from the first byte (port 465)", "implicit"
    )


@dataclass(frozen=True)
class Relayhost:
    """Where smtpc sends all mail: ``[host]:port`` (no MX lookup) or ``host`` (MX lookup)."""

    host: str
    port: int = 25
    mx: bool = True


@dataclass(frozen=True)
class ProcessConfig:
    """Options shared by the four worker process sections."""

    user: str = _user("meta1")
    group: str = _group()
    restart_dependencies: tuple[str, ...] = _restart_dependencies()
    log_level: str | None = _log_level()


@dataclass(frozen=True)
class QmgrConfig(ProcessConfig):
    """``qmgr { }``: the queue manager."""

    user: str = _user("meta1q")
    retry_min: float = opt("retry_min", Time(1, 30 * 86400), "5m", "shortest retry interval", "10m")
    retry_max: float = opt("retry_max", Time(1, 30 * 86400), "4000s", "longest retry interval", "2h")
    queue_lifetime: float = opt(
        "queue_lifetime", Time(1, 365 * 86400), "5d", "how long a message is retried before it bounces", "3d"
    )
    bounce_lifetime: float = opt(
        "bounce_lifetime",
        Time(1, 365 * 86400),
        "5d",
        "how long a bounce is retried before it is dropped",
        "2d",
    )
    delay_warning_time: float = opt(
        "delay_warning_time",
        Time(0, 365 * 86400),
        "0",
        "send a delay notice after this long (0: never)",
        "4h",
    )
    max_hops: int = opt(
        "max_hops",
        Integer(1, 1000),
        "100",
        "Received: headers after which a message is refused (smtps) or bounced (pickup) as looping",
        "50",
    )
    orphan_sweep_interval: float = opt(
        "orphan_sweep_interval",
        Time(1, 86400),
        "5m",
        "how often content files with no envelope are looked for (and at start)",
        "10m",
    )
    orphan_min_age: float = opt(
        "orphan_min_age",
        Time(1, 86400),
        "5m",
        "age (unchanged, not open for writing) after which such a file is removed; keep above 2m",
        "15m",
    )
    pickup_interval: float = opt(
        "pickup_interval",
        Time(1, 3600),
        "5s",
        "how often the pickup directory (mail meta1 sendmail wrote while smtps could not take it) is"
        " read, besides at start",
        "30s",
    )


@dataclass(frozen=True)
class DnsblConfig:
    """``dnsbl { }`` and ``rhsbl { }`` inside ``smar { }``: one DNS block list."""

    zone: str | None = opt("zone", Hostname(), None, "the list's DNS zone (required)", '"bl.example.net"')
    action: str = opt(
        "action",
        Choice("reject", "tempfail"),
        "reject",
        "what a listing does: reject (554 5.7.1) or tempfail (450 4.7.1)",
        "tempfail",
    )
    addresses: tuple[Any, ...] = opt(
        "addresses",
        ListOf(Network()),
        ("127.0.0.0/8",),
        "the answers that count as listed (a list's return codes)",
        "{ 127.0.0.2, 127.0.0.4/30 }",
    )


@dataclass(frozen=True)
class DnswlConfig:
    """``dnswl { }`` inside ``smar { }``: one DNS allow list."""

    zone: str | None = opt("zone", Hostname(), None, "the list's DNS zone (required)", '"list.dnswl.example"')
    addresses: tuple[Any, ...] = opt(
        "addresses",
        ListOf(Network()),
        ("127.0.0.0/8",),
        "the answers that count as listed",
        "{ 127.0.10.0/24 }",
    )


@dataclass(frozen=True)
class GreylistingConfig:
    """``greylisting { }`` inside ``smar { }``: defer the first mail of each unknown (client network,
    sender, recipient) triplet; a client that retries after ``delay`` is let in, and its network is
    whitelisted (postgrey's scheme; see docs/smar.md)."""

    enable: bool = opt("enable", Boolean(), "no", "greylist at RCPT TO (450 4.7.1 for a new triplet)", "yes")
    delay: float = opt(
        "delay",
        Time(0, 86400),
        "5m",
        "how long a new triplet is deferred: a retry earlier than this is deferred again",
        "2m",
    )
    retry_window: float = opt(
        "retry_window",
        Time(1, 365 * 86400),
        "2d",
        "how long a deferred triplet waits for its retry (from its first attempt) before it is forgotten",
        "1d",
    )
    whitelist_expiry: float = opt(
        "whitelist_expiry",
        Time(1, 3650 * 86400),
        "35d",
        "how long a client network that retried stays whitelisted, renewed by each message",
        "60d",
    )
    database: Path = opt(
        "database",
        PathType(),
        "greylist.db",
        "SQLite file of triplets and whitelisted networks (relative to smar's data directory,"
        " queue_directory/smar, which mcp creates for smar's user; a file elsewhere must be writable"
        " by smar)",
        "/var/lib/meta1/greylist.db",
        base="smar",
    )
    ipv4_netmask: int = opt(
        "ipv4_netmask",
        Integer(8, 32),
        "24",
        "prefix length of the client network in a triplet, IPv4 (a /24: a sender's pool of MTAs)",
        "32",
    )
    ipv6_netmask: int = opt(
        "ipv6_netmask", Integer(16, 128), "64", "prefix length of the client network in a triplet, IPv6", "48"
    )


@dataclass(frozen=True)
class SmarConfig(ProcessConfig):
    """``smar { }``: the address resolver (maps, DNS)."""

    user: str = _user("meta1r")
    # smar needs no queue file and no other worker's socket: a group of its own keeps it out of the
    # queue (meta1py.ownership; with greylisting on, it may search the queue directory to reach its
    # own data directory, and nothing else there).
    group: str = opt(
        "group", Word(), "meta1r", "group the process runs as (only used when started as root)", "meta1r"
    )
    nameserver: tuple[tuple[str, int], ...] = opt(
        "nameserver",
        ListOf(HostPort(53)),
        (),
        "DNS servers to ask (empty: those in /etc/resolv.conf)",
        "{ 127.0.0.1, 127.0.0.2:5353 }",
    )
    dns_timeout: float = opt("DNS_timeout", Time(0.1, 600), "10s", "timeout of one DNS query", "5s")
    delay_checks: bool = opt(
        "delay_checks",
        Boolean(),
        "yes",
        "make the client, HELO and sender checks (access map, DNS lists) at RCPT TO, where a"
        " recipient entry can override them; no: at connect, HELO and MAIL",
        "no",
    )
    dnsbl: tuple[DnsblConfig, ...] = sect(
        "dnsbl",
        DnsblConfig,
        "a DNS block list the client's address is looked up in",
        repeatable=True,
        optional=True,
    )
    dnswl: tuple[DnswlConfig, ...] = sect(
        "dnswl",
        DnswlConfig,
        "a DNS allow list: a listed client skips the block lists and greylisting",
        repeatable=True,
        optional=True,
    )
    rhsbl: tuple[DnsblConfig, ...] = sect(
        "rhsbl",
        DnsblConfig,
        "a DNS block list the sender's domain is looked up in",
        repeatable=True,
        optional=True,
    )
    # The map options name a map as Postfix does: a path (the text file), cdb:PATH (the file that
    # meta1 makemap compiled from PATH), socketmap:... (access only), or a { list } of them, the
    # first map that has a key winning (meta1py.conf.mapspec, docs/smar.md "Map types").
    aliases: MapSpec | None = opt(
        "aliases",
        MapSpecType(),
        None,
        "aliases map: a file, cdb:FILE (compiled with meta1 makemap), or a { list } (relative to"
        " queue_directory)",
        "/etc/meta1/aliases",
        base="queue",
    )
    routes: MapSpec | None = opt(
        "routes",
        MapSpecType(),
        None,
        "routing table: a file, cdb:FILE (compiled with meta1 makemap), or a { list } (relative to"
        " queue_directory)",
        "/etc/meta1/routes",
        base="queue",
    )
    access: MapSpec | None = opt(
        "access",
        MapSpecType(socketmap=True),
        None,
        "access map (MeTA1 tags: cltaddr:, ehlo:, from:, to:, protectedrcpt:; see docs/smar.md),"
        " checked at RCPT TO: a file, cdb:FILE (compiled with meta1 makemap), socketmap:unix:PATH:NAME,"
        " socketmap:inet:HOST:PORT:NAME, or a { list } of them, the first that has a key winning"
        " (relative to queue_directory)",
        '{ /etc/meta1/access.local, "cdb:/etc/meta1/access" }',
        base="queue",
    )
    greylisting: GreylistingConfig = sect(
        "greylisting", GreylistingConfig, "greylisting: defer unknown client/sender/recipient triplets once"
    )


#: Where a command or file target may come from (Postfix's classes; meta1py.maps.aliases).
LOCAL_TARGET_SOURCES = Choice("alias", "forward", "include")
_FORWARD_VARIABLES = re.compile(r"\$(?:\{(home|user)\}|(home|user)\b)")


class _ForwardPathTemplate(ValueType):
    """One ``forward_path`` entry: an absolute path that may use ``$home`` and ``$user``."""

    kind = "path template"
    expected = 'a path such as "$home/.forward" ($home and $user are replaced)'

    def parse_one(self, raw: Scalar) -> str:
        expanded = _FORWARD_VARIABLES.sub(lambda m: "/home" if "home" in (m[1], m[2]) else "user", raw.text)
        if "$" in expanded:
            raise InvalidValue(f"unknown variable in {raw.text!r}", "forward_path knows $home and $user", raw)
        if not expanded.startswith("/"):
            raise InvalidValue(f"{raw.text!r} is not an absolute path", 'write "$home/.forward"', raw)
        return raw.text


#: ``home_mailbox`` applies to accounts from this uid up (Debian's login.defs UID_MIN): system
#: accounts (daemons, whose homes are root's or shared) keep their Maildir in mail_directory.
HOME_MAILBOX_MIN_UID = 1000
#: ``nobody`` (Debian's uid 65534) has no home of its own.
NOBODY_UID = 65534


class _HomeMailbox(ValueType):
    """``home_mailbox``: a Maildir below the user's home, written as Postfix writes it
    (``Maildir/``: relative, the trailing slash meaning Maildir format)."""

    kind = "Maildir path"
    expected = 'a path relative to the home directory that ends in "/", such as "Maildir/"'

    def parse_one(self, raw: Scalar) -> str:
        text = raw.text
        if not text:
            raise InvalidValue("home_mailbox is empty", "leave the option out to turn it off", raw)
        if text.startswith("/") or text.startswith("~"):
            raise InvalidValue(
                f"{text!r} is not relative to the home directory", 'write it as Postfix does: "Maildir/"', raw
            )
        if not text.endswith("/"):
            # Postfix reads a name without the slash as an mbox file; only Maildir is supported.
            raise InvalidValue(
                f"{text!r} names an mbox file: only Maildir delivery is supported",
                f'end it with "/" for a Maildir: "{text}/"',
                raw,
            )
        parts = text.rstrip("/").split("/")
        if not text.strip("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidValue(f"{text!r} must stay below the home directory", 'write "Maildir/"', raw)
        return text


class _TlsRequirementsText(ValueType):
    """smtpc's ``tls_requirements`` text (kept as written; checked with the pure parser of
    :mod:`meta1py.tls.requirements`)."""

    kind = "TLS requirements"
    expected = 'TLS requirements such as "verify; hostnames=mx.example.com" (see docs/tls.md)'

    def parse_one(self, raw: Scalar) -> str:
        try:
            parse_tls_requirements(raw.text)
        except ValueError as exc:
            raise InvalidValue(str(exc), "see docs/tls.md for the syntax", raw) from None
        return raw.text


class _TlsProtocols(ListOf):
    """A contiguous range of TLS versions, e.g. ``{ TLSv1.2, TLSv1.3 }``."""

    def __init__(self) -> None:
        super().__init__(Word())
        self.expected = "a list of TLS versions (TLSv1.2, TLSv1.3)"

    # The same rule as meta1py.tls.contexts.parse_protocols, which cannot be imported here (it loads ssl).
    _ORDER = ("tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")
    _ALIASES = {"tlsv1.0": "tlsv1"}

    def parse(self, raw: Any) -> tuple[Any, ...]:
        names = super().parse(raw)
        at = raw if isinstance(raw, Scalar) else Scalar("", line=raw.line, column=raw.column)
        found = set()
        for name in names:
            key = self._ALIASES.get(name.lower(), name.lower())
            if key not in self._ORDER:
                raise InvalidValue(f"unknown TLS protocol {name!r}", "e.g. { TLSv1.2, TLSv1.3 }", at)
            found.add(self._ORDER.index(key))
        if not found:
            raise InvalidValue(
                "protocols must name at least one TLS version", "e.g. { TLSv1.2, TLSv1.3 }", at
            )
        if sorted(found) != list(range(min(found), max(found) + 1)):
            raise InvalidValue(
                "protocols must be a contiguous range of TLS versions", "e.g. { TLSv1.2, TLSv1.3 }", at
            )
        return names


@dataclass(frozen=True)
class SmtpcTlsConfig:
    """``tls { }`` inside ``smtpc``: client certificate and trust anchors for STARTTLS."""

    cert_file: Path | None = opt(
        "cert_file",
        PathType(),
        None,
        "client certificate chain (PEM) presented when a server asks",
        "/etc/meta1/tls/client.pem",
        base="queue",
    )
    key_file: Path | None = opt(
        "key_file",
        PathType(),
        None,
        "private key of cert_file (PEM; default: in cert_file)",
        "/etc/meta1/tls/client.key",
        base="queue",
    )
    ca_file: Path | None = opt(
        "CA_file",
        PathType(),
        None,
        "trust anchors (PEM) for verify and root_ca_subjects (default: the system store)",
        "/etc/ssl/certs/ca-certificates.crt",
        base="queue",
    )
    ca_directory: Path | None = opt(
        "CA_directory",
        PathType(),
        None,
        "hashed CA directory (openssl rehash), same purpose as CA_file",
        "/etc/ssl/certs",
        base="queue",
    )
    protocols: tuple[str, ...] = opt(
        "protocols",
        _TlsProtocols(),
        ("TLSv1.2", "TLSv1.3"),
        "TLS versions smtpc uses (a contiguous range)",
        "{ TLSv1.3 }",
    )
    ciphers: str | None = opt(
        "ciphers",
        Text(),
        None,
        "OpenSSL cipher string for TLS 1.2 and below (default: OpenSSL's)",
        '"ECDHE+AESGCM:ECDHE+CHACHA20"',
    )


@dataclass(frozen=True)
class SmtpcConfig(ProcessConfig):
    """``smtpc { }``: the SMTP/LMTP/Maildir delivery agents."""

    user: str = _user("meta1c")
    relayhost: Relayhost | None = opt(
        "relayhost",
        RelayhostType(),
        None,
        "send all mail to this host instead of the MX hosts",
        "[smtp.example.com]:587",
    )
    smtp_port: int = opt("smtp_port", Integer(1, 65535), "25", "TCP port of remote SMTP servers", "2525")
    io_timeout: float = opt(
        "IO_timeout", Time(1, 3600), "5m", "timeout of one read or write to a remote server", "2m"
    )
    max_connections: int = opt(
        "max_connections", Integer(1, 10000), "20", "most concurrent connections to one destination", "10"
    )
    max_connections_total: int = opt(
        "max_connections_total", Integer(1, 100000), "100", "most concurrent outgoing connections", "500"
    )
    mx_address_limit: int = opt(
        "mx_address_limit",
        Integer(1, 64),
        "5",
        "most MX host addresses tried for one delivery, best preference first (Postfix's default)",
        "10",
    )
    mx_session_limit: int = opt(
        "mx_session_limit",
        Integer(1, 64),
        "2",
        "most SMTP sessions (greeting received) tried for one delivery (Postfix's default)",
        "3",
    )
    tls_requirements: str = opt(
        "tls_requirements",
        _TlsRequirementsText(),
        "may",
        "TLS demanded of every destination without a tls_policy entry (see docs/tls.md)",
        '"verify; hostnames=mx.example.com"',
    )
    tls_policy: Path | None = opt(
        "tls_policy",
        PathType(),
        None,
        "per-destination tls_requirements map file (relative to queue_directory; docs/smtpc.md)",
        "/etc/meta1/tls_policy",
        base="queue",
    )
    tls_plaintext_fallback: bool = opt(
        "tls_plaintext_fallback",
        Boolean(),
        "no",
        "after a failed STARTTLS handshake, retry the host in plaintext (level may only)",
        "yes",
    )
    tls: SmtpcTlsConfig = sect("tls", SmtpcTlsConfig, "client certificate and trust anchors for STARTTLS")


#: smtps ``tls { flags }``: on unless negated.
SMTPS_TLS_FLAGS: tuple[str, ...] = ("request_cert",)
TLS_PROTOCOLS = Choice("tlsv1", "tlsv1.1", "tlsv1.2", "tlsv1.3")


@dataclass(frozen=True)
class SmtpsTlsConfig:
    """``tls { }`` inside an smtps section: the server certificate and what is asked of clients."""

    cert_file: Path | None = opt(
        "cert_file",
        PathType(),
        None,
        "PEM certificate chain, leaf first; enables STARTTLS (relative to queue_directory)",
        "/etc/meta1/tls/cert.pem",
        base="queue",
    )
    key_file: Path | None = opt(
        "key_file", PathType(), None, "PEM private key of cert_file", "/etc/meta1/tls/key.pem", base="queue"
    )
    ca_file: Path | None = opt(
        "CA_file",
        PathType(),
        None,
        "PEM CAs to judge client certificates with (logged; a verified one can match the access"
        " map's certsubject:/certissuer:)",
        "/etc/ssl/certs/ca-certificates.crt",
        base="queue",
    )
    ca_directory: Path | None = opt(
        "CA_directory",
        PathType(),
        None,
        "hashed CA directory, same purpose as CA_file",
        "/etc/ssl/certs",
        base="queue",
    )
    crl_file: Path | None = opt(
        "CRL_file",
        PathType(),
        None,
        "PEM CRLs for client certificates",
        "/etc/meta1/tls/crl.pem",
        base="queue",
    )
    protocols: tuple[str, ...] = opt(
        "protocols",
        ListOf(TLS_PROTOCOLS),
        ("TLSv1.2", "TLSv1.3"),
        "TLS versions accepted (a contiguous range)",
        "{ TLSv1.3 }",
    )
    ciphers: str | None = opt(
        "ciphers",
        Text(),
        None,
        "OpenSSL cipher string for TLS 1.2 and below",
        '"ECDHE+AESGCM:ECDHE+CHACHA20"',
        default_doc="OpenSSL's default",
    )
    flags: frozenset[str] = opt(
        "flags",
        Flags(SMTPS_TLS_FLAGS, frozenset(SMTPS_TLS_FLAGS)),
        (),
        "request_cert: ask clients for a certificate (dont_request_cert: do not)",
        "{ dont_request_cert }",
        default_doc="on: request_cert",
    )
    verify_depth: int = opt(
        "verify_depth", Integer(0, 100), "9", "most CAs between a client certificate and a trust anchor", "5"
    )


@dataclass(frozen=True)
class SmtpsConfig(ProcessConfig):
    """``smtps [name] { }``: one SMTP server; several may exist with different names."""

    user: str = _user("meta1s")
    name: str | None = None
    listen_socket: tuple[ListenSocket, ...] = sect(
        "listen_socket", ListenSocket, "an address and port to accept connections on", repeatable=True
    )
    relay_clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = opt(
        "relay_clients",
        ListOf(Network()),
        ("127.0.0.0/8", "::1/128"),
        "clients allowed to relay to any domain",
        "{ 127.0.0.0/8, 10.0.0.0/8, ::1 }",
    )
    max_message_size: int = opt(
        "max_message_size", Size(1024, 2**40), "10M", "largest message accepted (SIZE)", "50M"
    )
    max_recipients: int = opt(
        "max_recipients", Integer(1, 100000), "1000", "most recipients in one transaction", "100"
    )
    io_timeout: float = opt("IO_timeout", Time(1, 3600), "5m", "timeout of one command or read", "2m")
    session_timeout: float = opt(
        "session_timeout", Time(1, 86400), "1h", "longest time one SMTP session may last", "30m"
    )
    max_sessions: int = opt("max_sessions", Integer(1, 100000), "1000", "most concurrent sessions", "200")
    max_sessions_per_client: int = opt(
        "max_sessions_per_client", Integer(1, 100000), "50", "most concurrent sessions from one IP", "10"
    )
    max_sessions_per_network: int = opt(
        "max_sessions_per_network",
        Integer(1, 100000),
        "200",
        "most concurrent sessions from one /24 (IPv4) or /64 (IPv6) network",
        "100",
    )
    connection_rate_per_client: int = opt(
        "connection_rate_per_client",
        Integer(0, 1000000),
        "300",
        "most connections per minute from one IP (0: no limit)",
        "60",
    )
    connection_rate_per_network: int = opt(
        "connection_rate_per_network",
        Integer(0, 1000000),
        "1000",
        "most connections per minute from one /24 or /64 network (0: no limit)",
        "300",
    )
    max_messages_per_session: int = opt(
        "max_messages_per_session",
        Integer(0, 1000000),
        "0",
        "most messages (MAIL FROM) in one session, then 421 4.7.0 (0: no limit)",
        "100",
    )
    max_recipients_per_session: int = opt(
        "max_recipients_per_session",
        Integer(0, 10000000),
        "0",
        "most recipients (RCPT TO) in one session, then 450 4.7.1 (0: no limit)",
        "1000",
    )
    message_rate_per_client: int = opt(
        "message_rate_per_client",
        Integer(0, 1000000),
        "0",
        "most messages (MAIL FROM) per minute from one IP, then 450 4.7.1 (0: no limit)",
        "100",
    )
    recipient_rate_per_client: int = opt(
        "recipient_rate_per_client",
        Integer(0, 10000000),
        "0",
        "most recipients (RCPT TO) per minute from one IP, then 450 4.7.1 (0: no limit)",
        "1000",
    )
    message_rate_per_user: int = opt(
        "message_rate_per_user",
        Integer(0, 1000000),
        "0",
        "most messages per minute from one authenticated user, then 450 4.7.1 (0: no limit)",
        "60",
    )
    recipient_rate_per_user: int = opt(
        "recipient_rate_per_user",
        Integer(0, 10000000),
        "0",
        "most recipients per minute from one authenticated user, then 450 4.7.1 (0: no limit)",
        "500",
    )
    session_reserve: int = opt(
        "session_reserve",
        Integer(0, 90),
        "20",
        "percent of max_sessions kept for clients below their fair share of the rest",
        "10",
    )
    limit_relay_clients: bool = opt(
        "limit_relay_clients",
        Boolean(),
        "no",
        "apply the per-client and per-network limits to relay_clients too",
        "yes",
    )
    stress_threshold: int = opt(
        "stress_threshold",
        Integer(1, 100),
        "80",
        "percent of max_sessions open at which stress mode starts (shorter timeouts)",
        "70",
    )
    stress_io_timeout: float = opt(
        "stress_IO_timeout", Time(1, 3600), "10s", "IO_timeout in stress mode", "20s"
    )
    peername_lookup: bool = opt(
        "peername_lookup",
        Boolean(),
        "yes",
        "look the client's name up (forward-confirmed reverse DNS, through smar) for Received:"
        " and the access map's cltname:/cltresolve:",
        "no",
    )
    greet_pause: float = opt(
        "greet_pause",
        Time(0, 60),
        "0",
        "wait before the greeting; a client that talks first is dropped (554 5.5.1)",
        "2s",
    )
    stress_greet_pause: float = opt(
        "stress_greet_pause", Time(0, 60), "1s", "greet_pause in stress mode", "3s"
    )
    command_time_limit: float = opt(
        "command_time_limit",
        Time(1, 3600),
        "1m",
        "longest time one command line may take to arrive, however its octets trickle in",
        "2m",
    )
    min_data_rate: int = opt(
        "min_data_rate",
        Integer(0, 1000000000),
        "500",
        "lowest average rate of DATA/BDAT in bytes/s after data_rate_grace (0: no limit)",
        "1000",
    )
    data_rate_grace: float = opt(
        "data_rate_grace", Time(1, 3600), "1m", "time allowed before min_data_rate applies", "30s"
    )
    flags: frozenset[str] = opt(
        "flags",
        Flags(SMTPS_FLAGS, SMTPS_DEFAULT_FLAGS),
        (),
        "ESMTP features and behaviours; entries change the defaults",
        "{ no_pipelining, vrfy, dont_request_cert }",
        default_doc="on: "
        + ", ".join(f for f in SMTPS_FLAGS if f in SMTPS_DEFAULT_FLAGS)
        + "; off: "
        + ", ".join(f for f in SMTPS_FLAGS if f not in SMTPS_DEFAULT_FLAGS),
    )
    tls: SmtpsTlsConfig = sect(
        "tls", SmtpsTlsConfig, "TLS: server certificate, protocols, client certificates"
    )
    auth_mechanisms: tuple[str, ...] = opt(
        "auth_mechanisms",
        ListOf(Choice("plain", "login")),
        ("PLAIN", "LOGIN"),
        "SASL mechanisms offered with AUTH (only when password_file is set)",
        "{ PLAIN }",
    )
    password_file: Path | None = opt(
        "password_file",
        PathType(),
        None,
        "AUTH users, user:{SCRYPT}... lines made with meta1 passwd; enables AUTH",
        "/etc/meta1/passwd",
        base="queue",
    )
    require_tls_for_auth: bool = opt(
        "require_tls_for_auth", Boolean(), "yes", "offer AUTH only inside TLS", "no"
    )
    auth_plaintext_loopback: bool = opt(
        "auth_plaintext_loopback",
        Boolean(),
        "no",
        "offer AUTH without TLS to loopback clients despite require_tls_for_auth",
        "yes",
    )
    require_auth: bool = opt(
        "require_auth", Boolean(), "no", "MAIL FROM needs AUTH first (a submission service)", "yes"
    )
    sender_must_match_login: bool = opt(
        "sender_must_match_login",
        Boolean(),
        "no",
        "authenticated MAIL FROM must be the login (or login@ a local domain)",
        "yes",
    )
    max_auth_failures: int = opt(
        "max_auth_failures",
        Integer(1, 100000),
        "5",
        "failed AUTH attempts per client IP within auth_failure_window before AUTH is refused",
        "3",
    )
    auth_failure_window: float = opt(
        "auth_failure_window", Time(1, 86400), "5m", "the period max_auth_failures counts over", "15m"
    )

    def requests_client_cert(self) -> bool:
        """Whether TLS clients are asked for a certificate: ``request_cert`` in ``tls { flags }``
        and in the older ``smtps { flags }`` alike (``dont_request_cert`` in either turns it off)."""
        return "request_cert" in self.tls.flags and "request_cert" in self.flags


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics { listen = 127.0.0.1:9125; }``: the Prometheus endpoint, off unless ``listen`` is set.

    mcp binds the socket and passes it to qmgr, which answers ``GET /metrics`` (docs/qmgr.md).
    """

    listen: tuple[str, int] | None = opt(
        "listen",
        HostPort(9125),
        None,
        "address of the Prometheus endpoint (GET /metrics, served by qmgr); none: no endpoint",
        "127.0.0.1:9125",
    )
    destinations: int = opt(
        "destinations",
        Integer(0, 1000),
        "20",
        "destinations with their own series of meta1_delivery_failures_total (the rest: other)",
        "50",
    )


@dataclass(frozen=True)
class TestModeConfig:
    """``test_mode { }``: the MTA as CI pipelines drive it (docs/testmode.md).

    The same five processes and the same queue, plus a control API over HTTP on loopback
    (served by qmgr): deliveries are captured instead of leaving the machine, replies can be
    scripted, the clock can be moved, DNS can come from a zone file. ``meta1 run --test-mode``
    (or ``META1_TEST=1`` in the container image) turns it on.
    """

    enable: bool = opt(
        "enable",
        Boolean(),
        "no",
        "run in test mode: capture every delivery, serve the control API (never on a real gateway)",
        "yes",
    )
    listen: tuple[str, int] = opt(
        "listen",
        HostPort(8025),
        "127.0.0.1:8025",
        "address of the control API and web page (HTTP, served by qmgr); must be loopback unless"
        " allow_non_loopback = yes",
        "127.0.0.1:8025",
    )
    allow_non_loopback: bool = opt(
        "allow_non_loopback",
        Boolean(),
        "no",
        "let the control API listen on an address that is not loopback (a container's own network)",
        "yes",
    )
    script_file: Path | None = opt(
        "script_file",
        PathType(),
        None,
        "scripted replies loaded at start (JSON, the format of PUT /scripts)",
        "/etc/meta1/test-scripts.json",
        base="queue",
    )
    zone_file: Path | None = opt(
        "zone_file",
        PathType(),
        None,
        "answer DNS from this zone file (RFC 1035 master file) instead of asking a server",
        "/etc/meta1/test.zone",
        base="queue",
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration (top level of meta1.conf)."""

    hostname: str = opt(
        "hostname",
        Hostname(),
        None,
        "name of this host in greetings, Received: headers and bounces",
        "mail.example.com",
        default_doc="this host's FQDN (localhost if it has none)",
        dynamic_default=_fqdn,
        fallback="localhost",
    )
    queue_directory: Path = opt(
        "queue_directory",
        PathType(),
        "var/queue",
        "queue directory (relative to the current directory)",
        "/var/spool/meta1",
        base="cwd",
    )
    run_directory: Path = opt(
        "run_directory",
        PathType(),
        "run",
        "directory of the RPC sockets (relative to queue_directory)",
        "/run/meta1",
        base="queue",
    )
    queue_minfree: int | None = opt(
        "queue_minfree",
        Size(0, 2**50),
        None,
        "free space the queue file system must keep: less refuses MAIL with 452 4.3.1 (0: off)",
        "100M",
        default_doc="1.5 times the largest smtps max_message_size",
    )
    mail_directory: Path = opt(
        "mail_directory",
        PathType(),
        "../mail",
        "Maildir root for local delivery (relative to queue_directory)",
        "/var/mail",
        base="queue",
    )
    local_domains: tuple[str, ...] = opt(
        "local_domains",
        ListOf(Hostname()),
        ("localhost",),
        "domains delivered locally (Maildir)",
        "{ example.com, example.org }",
    )
    # Local delivery to commands and files (aliases(5) "|command" and "/file" targets, .forward
    # files), with Postfix's names and Postfix's defaults for who runs them; off unless allowed
    # (docs/smar.md "Commands and files", docs/smtpc.md "Commands and files").
    allow_mail_to_commands: tuple[str, ...] = opt(
        "allow_mail_to_commands",
        ListOf(LOCAL_TARGET_SOURCES),
        (),
        "deliver to |command targets from these sources: alias (the aliases map), include"
        " (:include: files), forward (.forward files); others bounce (5.7.1 mail to command is"
        " restricted)",
        "{ alias, forward }",
    )
    allow_mail_to_files: tuple[str, ...] = opt(
        "allow_mail_to_files",
        ListOf(LOCAL_TARGET_SOURCES),
        (),
        "append to /file targets (write into /dir/ Maildir targets) from these sources: alias,"
        " include, forward; others bounce (5.7.1 mail to file is restricted)",
        "{ alias, forward }",
    )
    default_privs: str = opt(
        "default_privs",
        Word(),
        "nobody",
        "the account that runs the commands and file deliveries of root-owned aliases and"
        " :include: files (others run as the file's owner, .forward targets as the user)",
        "nobody",
    )
    forward_path: tuple[str, ...] = opt(
        "forward_path",
        ListOf(_ForwardPathTemplate()),
        (),
        "the .forward files of local users, tried in order ($home, $user are replaced); empty: no"
        " .forward file is read",
        '{ "$home/.forward" }',
    )
    # Postfix's home_mailbox (local(8)): mail for a local user with an account of its own goes
    # to a Maildir in the user's home, written as that user (docs/smar.md, docs/smtpc.md "Home
    # mailboxes"). Off by default: every local recipient gets a virtual Maildir.
    home_mailbox: str | None = opt(
        "home_mailbox",
        _HomeMailbox(),
        None,
        "deliver mail for local users (accounts with uid 1000 or more, not nobody) into this Maildir"
        " below their home directory, as the user; unset: every local recipient gets a Maildir in"
        " mail_directory",
        "Maildir/",
    )
    command_time_limit: float = opt(
        "command_time_limit",
        Time(1, 86400),
        "1000s",
        "longest run of a command delivery; past it the command is killed and the message bounces",
        "5m",
    )
    setgid_group: str = opt(
        "setgid_group",
        Word(),
        "meta1d",
        "group of the pickup directory and of meta1-postdrop, the setgid helper that lets local"
        " users submit mail while smtps cannot take it (Postfix's setgid_group); meta1 setup"
        " --sendmail creates it",
        "maildrop",
    )
    authorized_mailq_users: tuple[str, ...] = opt(
        "authorized_mailq_users",
        ListOf(Word()),
        ("anyone",),
        "local users who may list the queue (mailq, sendmail -bp, meta1 queue list) through qmgr's"
        " showq socket: user names, or anyone; root and the queue's owner always may (Postfix's"
        " authorized_mailq_users)",
        "{ alice, bob }",
    )
    log_level: str = opt("log_level", LOG_LEVELS, "info", "log level of every process", "debug")
    log_format: str = opt(
        "log_format",
        LOG_FORMATS,
        "text",
        "layout of every process's log lines: text, json (one object per line) or postfix "
        "(Postfix's lines, for pflogsumm and fail2ban); see docs/logs.md",
        "postfix",
    )
    qmgr: QmgrConfig = sect("qmgr", QmgrConfig, "the queue manager")
    smar: SmarConfig = sect("smar", SmarConfig, "the address resolver: maps and DNS")
    smtpc: SmtpcConfig = sect("smtpc", SmtpcConfig, "the delivery agents (SMTP, LMTP, Maildir)")
    smtps: tuple[SmtpsConfig, ...] = sect(
        "smtps", SmtpsConfig, "an SMTP server; repeat with different names", repeatable=True, labelled=True
    )
    metrics: MetricsConfig = sect(
        "metrics", MetricsConfig, "the Prometheus metrics endpoint (served by qmgr)"
    )
    test_mode: TestModeConfig = sect(
        "test_mode", TestModeConfig, "test mode: captured deliveries, scripted replies, a control API"
    )
    # The file it came from; not part of equality (a dump parsed elsewhere is the same config).
    path: Path | None = field(default=None, compare=False)
    # Where each option was set: "smtps[0].user" -> (file, line, column). Not part of equality.
    locations: dict[str, tuple[str, int, int]] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    def queue_minfree_bytes(self) -> int:
        """``queue_minfree``, or its default: 1.5 times the largest smtps ``max_message_size``.

        Postfix refuses MAIL when the queue file system has less than 1.5 times its message size
        limit free, so that a client never sends a body that cannot be stored.
        """
        if self.queue_minfree is not None:
            return self.queue_minfree
        return max((s.max_message_size for s in self.smtps), default=0) * 3 // 2


def process_config(cfg: Config, name: str) -> ProcessConfig | None:
    """The ``ProcessConfig`` section of worker ``name`` (smtps: the first ``smtps`` section)."""
    if name == "smtps":
        return cfg.smtps[0] if cfg.smtps else None
    section: ProcessConfig = getattr(cfg, name)
    return section


def process_log_level(cfg: Config, name: str) -> str:
    """A worker's effective ``log_level``: its section's, else the global one."""
    section = process_config(cfg, name)
    level = getattr(section, "log_level", None) if section is not None else None
    return str(level or cfg.log_level)


def listen_sockets(cfg: Config) -> list[tuple[SmtpsConfig, ListenSocket]]:
    """Every SMTP listening socket as ``(SmtpsConfig, ListenSocket)``, in ``listenN`` order.

    mcp binds them and passes them to the single smtps process as ``listen0``, ``listen1``, ...
    in exactly this order (sections in file order, then ``listen_socket`` entries in order), so
    smtps knows which section's policy applies to each descriptor.
    """
    return [(section, sock) for section in cfg.smtps for sock in section.listen_socket]
