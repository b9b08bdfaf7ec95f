"""DNS for smar: MX and address lookups with dnspython's async resolver, and a cache.

dnspython's ``dns.asyncresolver`` picks its I/O backend with sniffio, so
under ``trio.run`` it uses trio sockets without any configuration.

Outcomes (RFC 5321 §5.1, RFC 7505, RFC 3463 codes):

=======================================  =====================================
MX records                               hosts by preference, ties shuffled
no MX, but A/AAAA at the domain          the domain itself (implicit MX)
single MX ``.`` (null MX, RFC 7505)      permanent, 556 5.1.10
NXDOMAIN / neither MX nor A/AAAA         permanent, 550 5.1.2
every MX host without an address         permanent 550 5.4.4 (temporary if a
                                         host lookup failed temporarily)
SERVFAIL, REFUSED, timeout               temporary, 451 4.4.3
``[1.2.3.4]`` / ``[IPv6:...]`` literal   that address, no DNS at all
=======================================  =====================================

Caps (issue 16; see :mod:`meta1py.smar.mx`): an answer is hostile input, so a result holds at
most ``mx_address_limit`` addresses in all (``smtpc { mx_address_limit }``, default 5, as
Postfix), best preference first; only the first ``2 * mx_address_limit`` MX hosts are looked up;
one MX answer keeps its 100 most preferred records and one A/AAAA answer 16 addresses. When the
hosts that were looked up have no address but further MX hosts were skipped, the failure is
temporary (the domain is broken, not proven undeliverable).

Null MX: RFC 7505 §4.3 names 5.1.10 for "recipient address has null MX"
and RFC 7504 introduced reply code 556 ("domain does not accept mail") for
exactly this case; 5.7.27 is the *sender* variant, which is smtps' business.

Backends: the answers come from a :class:`DnsBackend`. :class:`NetworkBackend` asks DNS servers
(dnspython); in test mode :class:`ZoneBackend` answers from ``test_mode { zone_file }``
(:mod:`meta1py.testmode.zone`) and, without a zone file, :class:`NoDnsBackend` routes every domain
and host to :data:`SYNTHETIC_ADDRESS` and says NXDOMAIN to everything else (no lookups at all).
:meth:`Resolver.from_config` chooses. Composition, caps and caching are the same for all three.

Caching: every (name, type) answer is cached until its TTL runs out;
NXDOMAIN and "no data" for the SOA-derived negative TTL (RFC 2308 §5,
capped); temporary failures for a few seconds, so that a dead nameserver is
not asked again for every recipient of a large message. The cache is an LRU
bounded by entry count. Ties are shuffled on every call, also from cache.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset
import trio

from meta1py.conf import SmarConfig, SmtpcConfig
from meta1py.conf.model import TestModeConfig
from meta1py.smar.mx import (
    MAX_ADDRESSES_PER_ANSWER,
    MxHost,
    hosts_to_look_up,
    keep_mx_records,
    limit_addresses,
    order_mx,
)
from meta1py.smtp.status import (
    PERM_BAD_DESTINATION_SYNTAX,
    PERM_BAD_DESTINATION_SYSTEM,
    PERM_NULL_MX,
    PERM_UNABLE_TO_ROUTE,
    TEMP_ROUTING_SERVER_FAILURE,
)
from meta1py.testmode.zone import FakeZone, ZoneFileError, load_zone

__all__ = [
    "SYNTHETIC_ADDRESS",
    "DnsBackend",
    "DnsFailure",
    "DnsListAnswer",
    "MxHost",
    "MxResult",
    "NetworkBackend",
    "NoDnsBackend",
    "Resolver",
    "ReverseName",
    "ZoneBackend",
    "ZoneFileError",
    "parse_domain_literal",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DnsFailure:
    """Why no hosts were found. ``code``/``enhanced`` are the SMTP reply to use."""

    permanent: bool
    code: int
    enhanced: str
    text: str


@dataclass(frozen=True, slots=True)
class MxResult:
    """Result of :meth:`Resolver.resolve_mx` / :meth:`Resolver.resolve_host`.

    Attributes:
        domain: the name that was looked up (lower case, no trailing dot).
        hosts: hosts in the order to try; empty when ``failure`` is set.
        failure: set when there is nowhere to deliver.
        implicit: True when the domain had no MX and its own address is used.
    """

    domain: str
    hosts: tuple[MxHost, ...] = ()
    failure: DnsFailure | None = None
    implicit: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None


#: Caps on what one answer may contribute (an answer is hostile input): PTR names tried for
#: forward confirmation, TXT records and their length (they go into SMTP replies, cut again there).
MAX_PTR_NAMES = 4
MAX_TXT_RECORDS = 4
MAX_TXT_CHARS = 400


@dataclass(frozen=True, slots=True)
class ReverseName:
    """The client's name from a forward-confirmed reverse lookup (FCrDNS).

    Attributes:
        status: ``ok`` (a PTR name whose A/AAAA records include the address), ``no`` (no PTR
            record, or none of its names leads back to the address), ``temp`` (a lookup failed
            temporarily): the values of the access map's ``cltresolve:`` key.
        name: the confirmed name ("" unless ``ok``).
        ptr: the first PTR name, confirmed or not ("" when there is none), for the log.
    """

    status: Literal["ok", "no", "temp"]
    name: str = ""
    ptr: str = ""


@dataclass(frozen=True, slots=True)
class DnsListAnswer:
    """One DNS list lookup (DNSBL, DNSWL, RHSBL): ``listed`` with the A records and the TXT text,
    or ``error`` (temporary failure, or an answer outside 127.0.0.0/8, which lists return only
    when they refuse to answer)."""

    listed: bool
    addresses: tuple[str, ...] = ()
    text: str = ""
    error: str = ""


class _Kind(enum.Enum):
    OK = "ok"
    NODATA = "no data"
    NXDOMAIN = "NXDOMAIN"
    TEMP = "temporary failure"


@dataclass(frozen=True, slots=True)
class _Answer:
    kind: _Kind
    expires: float
    detail: str = ""
    mx: tuple[tuple[int, str], ...] = ()
    addresses: tuple[str, ...] = ()
    names: tuple[str, ...] = ()  # PTR
    texts: tuple[str, ...] = ()  # TXT


def _temp(text: str) -> DnsFailure:
    return DnsFailure(False, 451, TEMP_ROUTING_SERVER_FAILURE, text)


def _perm(code: int, enhanced: str, text: str) -> DnsFailure:
    return DnsFailure(True, code, enhanced, text)


def _synthetic(name: str) -> MxResult:
    """Test mode without a zone file: the domain (or host) is its own host, at one address."""
    return MxResult(name, hosts=(MxHost(name, 0, (SYNTHETIC_ADDRESS,)),))


def parse_domain_literal(literal: str) -> str | None:
    """``[1.2.3.4]`` -> ``1.2.3.4``; ``[IPv6:::1]`` -> ``::1``; None when invalid (RFC 5321 §4.1.3)."""
    if not (literal.startswith("[") and literal.endswith("]")):
        return None
    inner = literal[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        return None


def _ip_or_none(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _same_ip(text: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


def _negative_ttl(response: dns.message.Message | None) -> float | None:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) from the authority section."""
    if response is None:
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return None


#: The address of every host when test mode routes without DNS (TEST-NET-1, RFC 5737): smtpc
#: never connects to it, it delivers to a captured destination instead.
SYNTHETIC_ADDRESS = "192.0.2.1"


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a :class:`DnsBackend` found for one (name, type): ``rrset`` when ``kind`` is OK; the
    negative TTL (RFC 2308 §5) for NODATA and NXDOMAIN when the answer had an SOA; ``detail``
    says why a TEMP failed."""

    kind: _Kind
    rrset: dns.rrset.RRset | None = None
    negative_ttl_s: float | None = None
    detail: str = ""


class DnsBackend(Protocol):
    """Where the :class:`Resolver` gets its answers: DNS servers, a zone file, or nothing.

    Attributes:
        routes_without_dns: every domain and host gets one synthetic address
            (:data:`SYNTHETIC_ADDRESS`) instead of being looked up (test mode without a zone file).
    """

    routes_without_dns: bool

    async def lookup(self, name: dns.name.Name, rdtype: str) -> Lookup:
        """The answer for ``name`` and ``rdtype``; never raises for DNS problems."""
        ...


class NetworkBackend:
    """Asks DNS servers, with dnspython's async resolver.

    Args:
        nameservers: ``(ip, port)`` pairs to ask; empty: use /etc/resolv.conf.
        timeout_s: limit for one query.
    """

    routes_without_dns = False

    def __init__(self, nameservers: Sequence[tuple[str, int]] = (), timeout_s: float = 10.0) -> None:
        if nameservers:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
        else:
            self._dns = dns.asyncresolver.Resolver()
        self._dns.cache = None  # the Resolver caches composed answers itself
        self._dns.lifetime = timeout_s
        self._dns.timeout = min(self._dns.timeout, timeout_s)

    async def lookup(self, name: dns.name.Name, rdtype: str) -> Lookup:
        try:
            result = await self._dns.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            responses = list(e.responses().values())
            return Lookup(_Kind.NXDOMAIN, negative_ttl_s=_negative_ttl(responses[0] if responses else None))
        except dns.resolver.YXDOMAIN:
            return Lookup(_Kind.NXDOMAIN, detail="YXDOMAIN")
        except dns.exception.Timeout as e:
            return Lookup(_Kind.TEMP, detail=f"timeout ({e})")
        except dns.resolver.NoNameservers as e:
            # SERVFAIL, REFUSED, or every server unreachable.
            return Lookup(_Kind.TEMP, detail=str(e))
        except dns.exception.DNSException as e:
            return Lookup(_Kind.TEMP, detail=f"{type(e).__name__}: {e}")
        if result.rrset is None:
            return Lookup(_Kind.NODATA, negative_ttl_s=_negative_ttl(result.response))
        return Lookup(_Kind.OK, result.rrset)


_ZONE_KINDS = {"ok": _Kind.OK, "nodata": _Kind.NODATA, "nxdomain": _Kind.NXDOMAIN, "servfail": _Kind.TEMP}


class ZoneBackend:
    """Test mode's fake DNS: answers from a zone file (:class:`meta1py.testmode.zone.FakeZone`),
    never from the network."""

    routes_without_dns = False

    def __init__(self, zone: FakeZone, path: str = "") -> None:
        self.zone = zone
        self.path = path

    async def lookup(self, name: dns.name.Name, rdtype: str) -> Lookup:
        answer = self.zone.query(name, rdtype)
        return Lookup(_ZONE_KINDS[answer.kind], answer.rrset, answer.negative_ttl_s, answer.detail)


class NoDnsBackend:
    """Test mode without a zone file: nothing is asked. Domains and hosts route to
    :data:`SYNTHETIC_ADDRESS`; every other name does not exist (no client has a reverse name, no
    DNS list lists anything)."""

    routes_without_dns = True

    async def lookup(self, name: dns.name.Name, rdtype: str) -> Lookup:
        return Lookup(_Kind.NXDOMAIN)


class Resolver:
    """MX and address resolution with a TTL-honouring, size-bounded cache.

    Args:
        nameservers: ``(ip, port)`` pairs to ask; empty: use /etc/resolv.conf.
        timeout_s: limit for one query (``DNS_timeout``). A whole
            :meth:`resolve_mx` call makes two rounds of queries (MX, then the
            hosts' addresses, each round in parallel) and is limited to twice
            this.
        cache_size: most (name, type) answers kept.
        temp_failure_ttl_s: how long a temporary failure is remembered.
        default_negative_ttl_s: negative TTL when the answer carries no SOA.
        max_negative_ttl_s: cap on negative TTLs.
        max_ttl_s: cap on positive TTLs.
        rng: random source for shuffling ties (seedable in tests).
        clock: monotonic seconds, for cache expiry.
        mx_address_limit: most addresses in one result (``smtpc { mx_address_limit }``).
        backend: where answers come from; by default the DNS servers of ``nameservers``
            (:class:`NetworkBackend`). Test mode passes a :class:`ZoneBackend` or a
            :class:`NoDnsBackend` (:meth:`from_config`).
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        timeout_s: float = 10.0,
        *,
        cache_size: int = 10_000,
        temp_failure_ttl_s: float = 5.0,
        default_negative_ttl_s: float = 60.0,
        max_negative_ttl_s: float = 300.0,
        max_ttl_s: float = 86_400.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        mx_address_limit: int = 5,
        backend: DnsBackend | None = None,
    ) -> None:
        self._backend: DnsBackend = backend or NetworkBackend(nameservers, timeout_s)
        self.timeout_s = timeout_s
        self._cache: OrderedDict[tuple[str, str], _Answer] = OrderedDict()
        self._cache_size = cache_size
        self._temp_failure_ttl_s = temp_failure_ttl_s
        self._default_negative_ttl_s = default_negative_ttl_s
        self._max_negative_ttl_s = max_negative_ttl_s
        self._max_ttl_s = max_ttl_s
        self._rng = rng or random.Random()
        self._clock = clock
        self.mx_address_limit = max(1, mx_address_limit)
        #: Queries actually sent (cache misses); useful for tests and stats.
        self.queries_sent = 0

    @classmethod
    def from_config(
        cls, smar: SmarConfig, smtpc: SmtpcConfig | None = None, test_mode: TestModeConfig | None = None
    ) -> Resolver:
        """A resolver for ``smar { nameserver, DNS_timeout }`` and ``smtpc { mx_address_limit }``.

        In test mode (``test_mode { enable }``) it never asks a DNS server: with ``zone_file`` it
        answers from that file, without one every domain routes to a synthetic host.

        Raises:
            ZoneFileError: the zone file cannot be read or parsed.
        """
        limit = (smtpc or SmtpcConfig()).mx_address_limit
        backend: DnsBackend | None = None
        if test_mode is not None and test_mode.enable:
            if test_mode.zone_file is not None:
                backend = ZoneBackend(load_zone(test_mode.zone_file), str(test_mode.zone_file))
            else:
                backend = NoDnsBackend()
        return cls(smar.nameserver, smar.dns_timeout, mx_address_limit=limit, backend=backend)

    @property
    def backend(self) -> DnsBackend:
        """Where the answers come from."""
        return self._backend

    @property
    def cached_answers(self) -> int:
        """How many (name, type) answers the cache holds."""
        return len(self._cache)

    # -- public API ------------------------------------------------------------

    async def resolve_mx(self, domain: str) -> MxResult:
        """Where mail for ``domain`` goes: MX hosts with addresses, or a failure.

        Never raises for DNS problems; they come back as ``failure``.
        """
        name = domain.strip().lower().rstrip(".")
        if name.startswith("["):
            return self._literal(name)
        bad = self._bad_name(name)
        if bad is not None:
            return MxResult(name, failure=bad)
        if self._backend.routes_without_dns:
            return _synthetic(name)
        with trio.move_on_after(2 * self.timeout_s):
            return await self._resolve_mx(name)
        return MxResult(name, failure=_temp(f"DNS lookup for {name} timed out"))

    async def resolve_host(self, host: str) -> MxResult:
        """Addresses of one host (no MX lookup), e.g. for ``[relay]`` nexthops.

        ``host`` may be an IP address, a domain literal or a host name.
        """
        name = host.strip().lower().rstrip(".")
        if name.startswith("["):
            return self._literal(name)
        ip = _ip_or_none(name)
        if ip is not None:
            return MxResult(name, hosts=(MxHost(name, 0, (ip,)),))
        bad = self._bad_name(name)
        if bad is not None:
            return MxResult(name, failure=bad)
        if self._backend.routes_without_dns:
            return _synthetic(name)
        with trio.move_on_after(self.timeout_s):
            addresses, a_failure = await self._addresses(name)
            if addresses:
                return MxResult(name, hosts=(MxHost(name, 0, addresses[: self.mx_address_limit]),))
            assert a_failure is not None
            return MxResult(name, failure=a_failure)
        return MxResult(name, failure=_temp(f"DNS lookup for {name} timed out"))

    async def reverse_name(self, address: str) -> ReverseName:
        """The forward-confirmed name of ``address`` (PTR, then A/AAAA of each PTR name).

        Never raises: failures are ``temp``. Bounded by twice ``DNS_timeout``.
        """
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return ReverseName("no")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        with trio.move_on_after(2 * self.timeout_s):
            return await self._reverse_name(ip)
        return ReverseName("temp")

    async def _reverse_name(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ReverseName:
        ptr = await self._query(ip.reverse_pointer, "PTR")
        if ptr.kind is _Kind.TEMP:
            return ReverseName("temp")
        if ptr.kind is not _Kind.OK or not ptr.names:
            return ReverseName("no")
        temp = False
        for name in ptr.names:
            if self._bad_name(name) is not None:
                continue
            addresses, failure = await self._addresses(name)
            if any(_same_ip(a, ip) for a in addresses):
                return ReverseName("ok", name, ptr.names[0])
            temp = temp or (failure is not None and not failure.permanent)
        return ReverseName("temp" if temp else "no", "", ptr.names[0])

    async def dns_list(self, name: str) -> DnsListAnswer:
        """Look ``name`` (``4.3.2.1.zone`` or ``domain.zone``) up in a DNS list: A, then TXT
        when listed. Never raises; bounded by twice ``DNS_timeout``."""
        if self._bad_name(name) is not None:
            return DnsListAnswer(False, error=f"bad DNS list query name {name!r}")
        with trio.move_on_after(2 * self.timeout_s):
            answer = await self._query(name, "A")
            if answer.kind is _Kind.TEMP:
                return DnsListAnswer(False, error=f"lookup of {name} failed: {answer.detail}")
            if answer.kind is not _Kind.OK or not answer.addresses:
                return DnsListAnswer(False)
            odd = [a for a in answer.addresses if not a.startswith("127.")]
            if odd:
                return DnsListAnswer(False, error=f"{name} answered {odd[0]}, not a 127.0.0.0/8 code")
            txt = await self._query(name, "TXT")
            text = "; ".join(txt.texts) if txt.kind is _Kind.OK else ""
            return DnsListAnswer(True, answer.addresses, text)
        return DnsListAnswer(False, error=f"lookup of {name} timed out")

    def clear_cache(self) -> None:
        """Forget every cached answer."""
        self._cache.clear()

    # -- composition -----------------------------------------------------------

    def _literal(self, literal: str) -> MxResult:
        ip = parse_domain_literal(literal)
        if ip is None:
            return MxResult(
                literal, failure=_perm(553, PERM_BAD_DESTINATION_SYNTAX, f"bad address literal {literal}")
            )
        return MxResult(literal, hosts=(MxHost(literal, 0, (ip,)),))

    @staticmethod
    def _bad_name(name: str) -> DnsFailure | None:
        try:
            dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError) as e:
            return _perm(553, PERM_BAD_DESTINATION_SYNTAX, f"bad domain name {name!r}: {e}")
        if not name:
            return _perm(553, PERM_BAD_DESTINATION_SYNTAX, "empty domain name")
        return None

    async def _resolve_mx(self, name: str) -> MxResult:
        mx = await self._query(name, "MX")
        if mx.kind is _Kind.TEMP:
            return MxResult(name, failure=_temp(f"MX lookup for {name} failed: {mx.detail}"))
        if mx.kind is _Kind.NXDOMAIN:
            return MxResult(
                name, failure=_perm(550, PERM_BAD_DESTINATION_SYSTEM, f"domain {name} does not exist")
            )
        if mx.kind is _Kind.NODATA:
            return await self._implicit_mx(name)
        records = list(mx.mx)
        # RFC 7505 §3: "." means "no mail"; it should be alone, and where it is
        # not, the "." records are ignored in favour of the real ones.
        real = [(p, h) for p, h in records if h not in (".", "")]
        if not real:
            return MxResult(
                name, failure=_perm(556, PERM_NULL_MX, f"domain {name} does not accept mail (null MX)")
            )
        # RFC 5321 §5.1: by preference, ties shuffled to spread load over equal hosts. Then
        # only the first few hosts are looked up (a hostile answer may list hundreds).
        ordered = order_mx(real, self._rng)
        chosen = hosts_to_look_up(ordered, self.mx_address_limit)
        skipped = len(ordered) - len(chosen)

        lookups: dict[str, tuple[tuple[str, ...], DnsFailure | None]] = {}

        async def lookup(host: str) -> None:
            lookups[host] = await self._addresses(host)

        async with trio.open_nursery() as nursery:
            for _pref, host in chosen:
                nursery.start_soon(lookup, host)

        hosts = []
        any_temp = False
        for pref, host in chosen:
            addresses, failure = lookups[host]
            if addresses:
                hosts.append(MxHost(host, pref, addresses))
            else:
                any_temp = any_temp or (failure is not None and not failure.permanent)
                log.info("MX host %s of %s has no usable address", host, name)
        if hosts:
            return MxResult(name, hosts=limit_addresses(hosts, self.mx_address_limit))
        if any_temp or skipped:
            why = "failed" if any_temp else f"found none in the first {len(chosen)} hosts"
            return MxResult(name, failure=_temp(f"address lookup of the MX hosts of {name} {why}"))
        return MxResult(
            name, failure=_perm(550, PERM_UNABLE_TO_ROUTE, f"no MX host of {name} has an address")
        )

    async def _implicit_mx(self, name: str) -> MxResult:
        # RFC 5321 §5.1: no MX records -> the domain itself is the only host.
        addresses, failure = await self._addresses(name)
        if addresses:
            return MxResult(name, hosts=(MxHost(name, 0, addresses[: self.mx_address_limit]),), implicit=True)
        assert failure is not None
        if failure.permanent:
            return MxResult(
                name,
                failure=_perm(
                    550, PERM_BAD_DESTINATION_SYSTEM, f"domain {name} has no MX or address records"
                ),
            )
        return MxResult(name, failure=failure)

    async def _addresses(self, host: str) -> tuple[tuple[str, ...], DnsFailure | None]:
        """A then AAAA of ``host``; a failure only when there is no address at all."""
        answers: dict[str, _Answer] = {}

        async def one(rdtype: str) -> None:
            answers[rdtype] = await self._query(host, rdtype)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "A")
            nursery.start_soon(one, "AAAA")
        addresses = answers["A"].addresses + answers["AAAA"].addresses
        if addresses:
            return addresses, None
        temps = [a for a in answers.values() if a.kind is _Kind.TEMP]
        if temps:
            return (), _temp(f"address lookup for {host} failed: {temps[0].detail}")
        if any(a.kind is _Kind.NXDOMAIN for a in answers.values()):
            return (), _perm(550, PERM_BAD_DESTINATION_SYSTEM, f"host {host} does not exist")
        return (), _perm(550, PERM_BAD_DESTINATION_SYSTEM, f"host {host} has no address records")

    # -- queries and cache -----------------------------------------------------

    async def _query(self, name: str, rdtype: str) -> _Answer:
        key = (name, rdtype)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None:
            if cached.expires > now:
                self._cache.move_to_end(key)
                return cached
            del self._cache[key]
        answer = await self._send(name, rdtype)
        self._store(key, answer)
        return answer

    async def _send(self, name: str, rdtype: str) -> _Answer:
        self.queries_sent += 1
        found = await self._backend.lookup(dns.name.from_text(name), rdtype)
        if found.kind is _Kind.TEMP:
            return self._temp_answer(found.detail)
        if found.kind is not _Kind.OK or found.rrset is None:
            return _Answer(found.kind, self._negative_expiry(found.negative_ttl_s), found.kind.value)
        rrset = found.rrset
        expires = self._clock() + min(float(rrset.ttl), self._max_ttl_s)
        if rdtype == "MX":
            records = [(int(r.preference), r.exchange.to_text(omit_final_dot=True).lower()) for r in rrset]
            mx = keep_mx_records(records, self._rng)
            if len(mx) < len(records):
                log.info("MX answer for %s has %d records; using the %d best", name, len(records), len(mx))
            return _Answer(_Kind.OK, expires, mx=mx)
        if rdtype == "PTR":
            names = tuple(
                r.target.to_text(omit_final_dot=True).lower() for r in itertools.islice(rrset, MAX_PTR_NAMES)
            )
            return _Answer(_Kind.OK, expires, names=names)
        if rdtype == "TXT":
            texts = tuple(
                b"".join(r.strings).decode("utf-8", "replace")[:MAX_TXT_CHARS]
                for r in itertools.islice(rrset, MAX_TXT_RECORDS)
            )
            return _Answer(_Kind.OK, expires, texts=texts)
        # One answer contributes a bounded number of addresses, whatever the server sent.
        addresses = tuple(str(r.address) for r in itertools.islice(rrset, MAX_ADDRESSES_PER_ANSWER))
        return _Answer(_Kind.OK, expires, addresses=addresses)

    def _negative_expiry(self, ttl: float | None) -> float:
        ttl = self._default_negative_ttl_s if ttl is None else ttl
        return self._clock() + min(ttl, self._max_negative_ttl_s)

    def _temp_answer(self, detail: str) -> _Answer:
        log.warning("DNS temporary failure: %s", detail)
        return _Answer(_Kind.TEMP, self._clock() + self._temp_failure_ttl_s, detail)

    def _store(self, key: tuple[str, str], answer: _Answer) -> None:
        if answer.expires <= self._clock():
            return
        self._cache[key] = answer
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
