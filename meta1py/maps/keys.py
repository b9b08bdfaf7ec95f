"""The keys of the maps keyed by domain (routes, tls_policy): which exact keys a name is tried
under, in which order, and how a table answers one key.

A name is tried as itself (``example.com``), then as each parent from the most specific
(``.example.com`` matches ``mail.example.com``; the table keeps it without the dot), then ``*``;
the formats add what is theirs (routes: no parents for an address literal; tls_policy: the
bracketed nexthop first).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

__all__ = ["domain_entry", "exact_keys", "parent_keys"]

V = TypeVar("V")


def exact_keys(name: str) -> list[str]:
    """``[name]`` as an exact key; nothing for ``*`` and ``.x``, which no exact entry has."""
    return [] if name == "*" or name.startswith(".") else [name]


def parent_keys(name: str) -> list[str]:
    """``.parent`` keys of ``name``, most specific first: ``a.b.c`` -> ``.b.c``, ``.c``."""
    labels = name.split(".")
    return ["." + ".".join(labels[i:]) for i in range(1, len(labels))]


def domain_entry(
    key: str, exact: Mapping[str, V], subdomains: Mapping[str, V], default: V | None
) -> V | None:
    """The entry of exactly ``key`` in a domain-keyed table: ``*`` is ``default``, ``.domain`` is
    ``subdomains[domain]``, anything else ``exact[key]``; None when there is none."""
    if key == "*":
        return default
    if key.startswith("."):
        return subdomains.get(key[1:])
    return exact.get(key)
