"""The configuration model: frozen dataclasses, which are also the schema.

Each option is declared exactly once below, with `opt()`: its type and range, its default in
configuration syntax, a one-line doc and an example. Each section is declared with `sect()`.
Attribute names are the option names lower-cased. After parsing, every path is absolute
(`queue_directory` relative to the current directory, every other path relative to
`queue_directory`), times are float seconds and sizes int bytes.

To add an option, add one `opt(...)` field to the class of its section; the parser, `dump_config`,
``check-config --defaults`` and docs/meta1.conf.md pick it up.
"""

# opt()/sect() return dataclasses.field(...) objects carrying the schema; that is the point.
# ruff: noqa: RUF009

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meta1py.conf.schema import (
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
    Time,
    Word,
    opt,
    sect,
)

LOG_LEVELS = Choice("debug", "info", "warning", "error")
PROCESS_NAMES = ("qmgr", "smar", "smtpc", "smtps")

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
        ListOf(Choice(*PROCESS_NAMES)),
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
        "queue_lifetime", Time(60, 365 * 86400), "5d", "how long a message is retried before it bounces", "3d"
    )
    bounce_lifetime: float = opt(
        "bounce_lifetime",
        Time(60, 365 * 86400),
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
        "Received: headers after which a message bounces as looping",
        "50",
    )


@dataclass(frozen=True)
class SmarConfig(ProcessConfig):
    """``smar { }``: the address resolver (maps, DNS)."""

    user: str = _user("meta1r")
    nameserver: tuple[tuple[str, int], ...] = opt(
        "nameserver",
        ListOf(HostPort(53)),
        (),
        "DNS servers to ask (empty: those in /etc/resolv.conf)",
        "{ 127.0.0.1, 127.0.0.2:5353 }",
    )
    dns_timeout: float = opt("DNS_timeout", Time(0.1, 600), "10s", "timeout of one DNS query", "5s")
    aliases: Path | None = opt(
        "aliases",
        PathType(),
        None,
        "aliases file (relative to queue_directory)",
        "/etc/meta1/aliases",
        base="queue",
    )
    routes: Path | None = opt(
        "routes",
        PathType(),
        None,
        "routing table file (relative to queue_directory)",
        "/etc/meta1/routes",
        base="queue",
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
    log_level: str = opt("log_level", LOG_LEVELS, "info", "log level of every process", "debug")
    qmgr: QmgrConfig = sect("qmgr", QmgrConfig, "the queue manager")
    smar: SmarConfig = sect("smar", SmarConfig, "the address resolver: maps and DNS")
    smtpc: SmtpcConfig = sect("smtpc", SmtpcConfig, "the delivery agents (SMTP, LMTP, Maildir)")
    smtps: tuple[SmtpsConfig, ...] = sect(
        "smtps", SmtpsConfig, "an SMTP server; repeat with different names", repeatable=True, labelled=True
    )
    # The file it came from; not part of equality (a dump parsed elsewhere is the same config).
    path: Path | None = field(default=None, compare=False)
    # Where each option was set: "smtps[0].user" -> (file, line, column). Not part of equality.
    locations: dict[str, tuple[str, int, int]] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )
