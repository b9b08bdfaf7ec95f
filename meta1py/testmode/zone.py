"""Test mode's fake DNS: answers from one zone file (RFC 1035 §5 master file) instead of a server.

``test_mode { zone_file = FILE; }`` gives smar a :class:`FakeZone` to ask instead of the
network (:mod:`meta1py.smar.resolver`). The file is an ordinary master file, with one liberty:
it may hold names of several zones, each after its own ``$ORIGIN``, so that one file can serve
the domains a test sends to, the reverse names of its clients (``in-addr.arpa``) and the DNS
lists it checks::

    $TTL 300
    $ORIGIN example.test.
    @        MX  10 mx1
    mx1      A   192.0.2.10
    $ORIGIN 2.0.192.in-addr.arpa.
    10       PTR mx1.example.test.
    $ORIGIN bl.test.
    2.0.0.127 A  127.0.0.2

* Names before the first ``$ORIGIN`` are relative to the root (write them with a final dot).
* ``$TTL`` and ``$ORIGIN`` (and ``$GENERATE``) are allowed; ``$INCLUDE`` is not (the file is
  read by smar, after it dropped privileges, and should say everything itself). Without ``$TTL``
  or a TTL on the record, records live 3600 seconds.
* SOA and NS records are optional. An SOA gives the negative TTL (RFC 2308 §5) of the names
  below it; without one the resolver's default applies.
* A name with no records at all, and no name below it, does not exist (NXDOMAIN); a name that
  exists without records of the type asked, or only has names below it (an empty non-terminal),
  has no data (NODATA). RFC 8020.
* ``CNAME`` is followed (at most :data:`MAX_CNAME_HOPS` links, within the file); a name with a
  CNAME must have no other records (RFC 1034 §3.6.2; a bad file otherwise).
* A wildcard ``*.zone`` answers for names below ``zone`` that do not exist, as RFC 4592 says
  (closest encloser): a test can list every address in a DNS list with ``*.bl.test. A 127.0.0.2``.

Everything but :func:`load_zone` is pure: the file is read once, when smar starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.tokenizer
import dns.zonefile

__all__ = ["DEFAULT_TTL_S", "MAX_CNAME_HOPS", "FakeZone", "ZoneAnswer", "ZoneFileError", "load_zone"]

#: Links of a CNAME chain followed before the answer is a failure (a loop, or a chain too long).
MAX_CNAME_HOPS = 8
#: TTL of records when the file names none (no ``$TTL``, no TTL on the record).
DEFAULT_TTL_S = 3600
#: The directives a zone file may use: no ``$INCLUDE`` (see the module's docstring).
_DIRECTIVES = frozenset({"$ORIGIN", "$TTL", "$GENERATE"})
_WILDCARD = dns.name.Name((b"*",))


class ZoneFileError(Exception):
    """The zone file cannot be used: ``str()`` is ``FILE:LINE: reason`` (or ``FILE: reason``)."""


@dataclass(frozen=True, slots=True)
class ZoneAnswer:
    """What the zone says about one (name, type).

    Attributes:
        kind: ``ok`` (``rrset`` holds the records), ``nodata`` (the name exists, not that type),
            ``nxdomain`` (no such name), ``servfail`` (a CNAME loop or a chain too long).
        rrset: the records (``ok`` only); after a CNAME, those of the chain's end.
        negative_ttl_s: ``nodata``/``nxdomain``: min(SOA TTL, SOA MINIMUM) of the closest SOA
            above the name (RFC 2308 §5); None when the file has none.
        detail: why (for ``servfail``).
    """

    kind: Literal["ok", "nodata", "nxdomain", "servfail"]
    rrset: dns.rrset.RRset | None = None
    negative_ttl_s: float | None = None
    detail: str = ""


class _RecordError(Exception):
    """A record the reader parsed but the zone cannot take (its line is the tokenizer's last)."""


class _Collector(dns.zonefile.RRsetsReaderTransaction):
    """Collects the records of a whole file, of any zones: dnspython's reader would refuse an SOA
    that is not at the origin given, and a file here may hold several zones."""

    def add(self, *args: object) -> None:
        name, ttl, rdata = args
        assert isinstance(name, dns.name.Name) and isinstance(ttl, int)
        assert isinstance(rdata, dns.rdata.Rdata)
        key = (name, rdata.rdtype, rdata.covers())
        others = {t for (n, t, _c) in self.rdatasets if n == name}
        cname = dns.rdatatype.CNAME
        if (rdata.rdtype == cname and others - {cname}) or (rdata.rdtype != cname and cname in others):
            raise _RecordError(f"{name} has a CNAME and other records (RFC 1034 §3.6.2)")
        rdataset = self.rdatasets.get(key)
        if rdataset is None:
            rdataset = dns.rdataset.Rdataset(rdata.rdclass, rdata.rdtype, rdata.covers())
            self.rdatasets[key] = rdataset
        rdataset.add(rdata, ttl)


def parse_zone(text: str, filename: str) -> FakeZone:
    """The zone of the master file ``text`` (``filename`` for messages).

    Raises:
        ZoneFileError: a syntax error, a directive that is not allowed, a CNAME with other data,
            or a file without a single record.
    """
    manager = dns.zonefile.RRSetsReaderManager(dns.name.root, False, dns.rdataclass.IN)
    txn = _Collector(manager, True, False)
    tokens = dns.tokenizer.Tokenizer(text, filename)
    reader = dns.zonefile.Reader(
        tokens, dns.rdataclass.IN, txn, allow_directives=_DIRECTIVES, default_ttl=DEFAULT_TTL_S
    )
    try:
        reader.read()
    except dns.exception.SyntaxError as exc:
        # dnspython's text is already "FILE:LINE: reason" for errors in a record.
        text_ = str(exc)
        raise ZoneFileError(text_ if text_.startswith(f"{filename}:") else f"{filename}: {text_}") from None
    except _RecordError as exc:
        # The reader has read the record's line to its end: the tokenizer is on the next one.
        raise ZoneFileError(f"{filename}:{max(1, tokens.line_number - 1)}: {exc}") from None
    except (dns.exception.DNSException, ValueError) as exc:
        raise ZoneFileError(f"{filename}: {exc}") from None
    rrsets = []
    for (name, _rdtype, _covers), rdataset in txn.rdatasets.items():
        rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype, rdataset.covers)
        rrset.update(rdataset)
        rrsets.append(rrset)
    if not rrsets:
        raise ZoneFileError(f"{filename}: no records")
    return FakeZone(rrsets)


def load_zone(path: Path | str) -> FakeZone:
    """Read and parse the zone file at ``path``.

    Raises:
        ZoneFileError: it cannot be read, or :func:`parse_zone` refuses it.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ZoneFileError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ZoneFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_zone(text, str(path))


class FakeZone:
    """The records of a zone file, answered as an authoritative server would (see the module).

    Args:
        rrsets: every record set of the file, owner names absolute.
    """

    def __init__(self, rrsets: Iterable[dns.rrset.RRset]) -> None:
        self._sets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self._owners: set[dns.name.Name] = set()
        #: Every owner and every name above one (empty non-terminals exist: RFC 8020).
        self._existing: set[dns.name.Name] = set()
        self._soas: dict[dns.name.Name, dns.rrset.RRset] = {}
        for rrset in rrsets:
            name = rrset.name
            self._sets[(name, int(rrset.rdtype))] = rrset
            self._owners.add(name)
            if rrset.rdtype == dns.rdatatype.SOA:
                self._soas[name] = rrset
            while name not in self._existing:
                self._existing.add(name)
                if name == dns.name.root:
                    break
                name = name.parent()

    @property
    def records(self) -> int:
        """How many records the zone holds."""
        return sum(len(rrset) for rrset in self._sets.values())

    def query(self, name: str | dns.name.Name, rdtype: str | int) -> ZoneAnswer:
        """The answer to ``name`` (absolute; a string is read as absolute) of type ``rdtype``."""
        qname = name if isinstance(name, dns.name.Name) else dns.name.from_text(name, dns.name.root)
        qtype = int(dns.rdatatype.RdataType.make(rdtype))
        for _hop in range(MAX_CNAME_HOPS + 1):
            owner = self._owner_for(qname)
            if owner is None:
                return ZoneAnswer("nxdomain", negative_ttl_s=self._negative_ttl(qname))
            found = self._sets.get((owner, qtype))
            if found is not None:
                if owner == qname:
                    return ZoneAnswer("ok", found)
                synthesized = dns.rrset.RRset(qname, found.rdclass, found.rdtype, found.covers)
                synthesized.update(found)  # a wildcard's records, under the name asked (RFC 4592)
                return ZoneAnswer("ok", synthesized)
            cname = self._sets.get((owner, int(dns.rdatatype.CNAME)))
            if cname is None:
                return ZoneAnswer("nodata", negative_ttl_s=self._negative_ttl(qname))
            target = cname[0].target
            assert isinstance(target, dns.name.Name)
            qname = target
        return ZoneAnswer("servfail", detail=f"CNAME chain longer than {MAX_CNAME_HOPS} at {qname}")

    def _owner_for(self, qname: dns.name.Name) -> dns.name.Name | None:
        """The owner whose records answer ``qname``: itself, the wildcard of its closest encloser
        (RFC 4592 §3.3.1), or None (NXDOMAIN). An empty non-terminal answers for itself."""
        if qname in self._existing:
            return qname
        encloser = qname
        while encloser != dns.name.root:
            encloser = encloser.parent()
            if encloser in self._existing:
                wildcard = _WILDCARD.concatenate(encloser)
                return wildcard if wildcard in self._owners else None
        return None

    def _negative_ttl(self, qname: dns.name.Name) -> float | None:
        name = qname
        while True:
            soa = self._soas.get(name)
            if soa is not None:
                minimum = getattr(soa[0], "minimum", soa.ttl)
                return float(min(soa.ttl, int(minimum)))
            if name == dns.name.root:
                return None
            name = name.parent()
