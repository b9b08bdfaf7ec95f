"""MX host lists: ordering and the caps that keep a hostile DNS answer small (pure, no I/O).

A DNS answer is input from whoever controls the recipient's domain. Issue 16 found an MX answer
with 300 records that made every route reply break its RPC schema (at most 64 hosts) and smar
crash on each lookup. The caps here are applied where smar builds its answer, so nothing a DNS
server says can make a route too big to send:

* an MX answer keeps at most `MAX_MX_RECORDS` records, the most preferred ones
  (:func:`keep_mx_records`);
* one A or AAAA answer contributes at most `MAX_ADDRESSES_PER_ANSWER` addresses;
* addresses are looked up for the first ``2 * mx_address_limit`` MX hosts only
  (:func:`hosts_to_look_up`): enough to find ``mx_address_limit`` addresses when some hosts
  have none, without sending hundreds of queries for one domain;
* the list handed to smtpc holds at most ``mx_address_limit`` addresses in all
  (:func:`limit_addresses`; ``smtpc { mx_address_limit }``, default 5, as Postfix's
  ``smtp_mx_address_limit``), best preference first.

Ordering (RFC 5321 §5.1): by preference, ties shuffled on every call so that load spreads over
equal hosts, and the cap is applied after the shuffle, so with 300 equal hosts each lookup picks
a different few.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_MX_RECORDS = 100
"""MX records kept from one answer (the most preferred); the rest are never looked at."""
MAX_ADDRESSES_PER_ANSWER = 16
"""Addresses kept from one A or AAAA answer, in the order the server gave them."""


@dataclass(frozen=True, slots=True)
class MxHost:
    """One mail exchanger: its name, MX preference and addresses (IPv4 first)."""

    name: str
    preference: int
    addresses: tuple[str, ...]


def keep_mx_records(records: Iterable[tuple[int, str]], rng: random.Random) -> tuple[tuple[int, str], ...]:
    """The at most `MAX_MX_RECORDS` most preferred records of one answer, sorted by preference.

    Records of the preference where the cut falls are shuffled first, so the cut does not always
    drop the same hosts.
    """
    listed = list(records)
    if len(listed) <= MAX_MX_RECORDS:
        return tuple(sorted(listed))
    rng.shuffle(listed)
    listed.sort(key=lambda r: r[0])  # stable: ties keep their shuffled order
    return tuple(listed[:MAX_MX_RECORDS])


def order_mx(records: Iterable[tuple[int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """MX ``(preference, host)`` records in the order to try them (RFC 5321 §5.1).

    Duplicate hosts are listed once (at their best preference); hosts of equal preference are
    shuffled. Null-MX records (``.``) must have been removed by the caller.
    """
    by_pref: dict[int, list[str]] = {}
    seen: set[str] = set()
    for pref, host in sorted(records):
        if host in seen:
            continue
        seen.add(host)
        by_pref.setdefault(pref, []).append(host)
    ordered: list[tuple[int, str]] = []
    for pref in sorted(by_pref):
        group = by_pref[pref]
        rng.shuffle(group)  # spread load over equal preferences
        ordered.extend((pref, h) for h in group)
    return ordered


def hosts_to_look_up(ordered: Sequence[tuple[int, str]], max_addresses: int) -> list[tuple[int, str]]:
    """The MX hosts whose addresses are looked up: the first ``2 * max_addresses``."""
    return list(ordered[: 2 * max(1, max_addresses)])


def limit_addresses(hosts: Iterable[MxHost], max_addresses: int) -> tuple[MxHost, ...]:
    """Hosts in order, cut so that they hold at most ``max_addresses`` addresses in all.

    A host whose addresses do not all fit keeps the first ones; hosts after the cap are dropped.
    """
    out: list[MxHost] = []
    left = max(1, max_addresses)
    for host in hosts:
        if left <= 0:
            break
        if not host.addresses:
            continue
        addresses = host.addresses[:left]
        left -= len(addresses)
        out.append(host if addresses == host.addresses else MxHost(host.name, host.preference, addresses))
    return tuple(out)
