"""The access map: MeTA1's tagged keys and results, and the order keys are tried in (pure).

File format (one entry per line, ``#`` comments, as the other maps)::

    # tag:key                        result
    cltaddr:192.0.2.7                REJECT
    cltaddr:10.1.                    RELAY
    cltaddr:2001:db8::/32            OK
    cltname:.dialup.example.net      ERROR:5.7.1 no mail from dial-up hosts, use your provider's relay
    cltresolve:no                    TEMPFAIL
    ehlo:localhost                   REJECT
    from:<>                          OK
    from:spammer@example.org         REJECT
    from:postmaster@                 QUICK:OK
    from:.example.com                CONT
    to:abuse@                        QUICK:OK
    to:partner.example               RELAY
    protectedrcpt:staff@example.test from:.example.test cltaddr:10.
    certissuer:"CN=Example CA,O=Example"  RELAY
    certsubject:CN=relay.partner.example  RELAY
    ratelimit:10.2.                  OK

Tags: ``cltaddr`` (client IP address or network), ``cltname`` (its host name, from a
forward-confirmed PTR lookup), ``cltresolve`` (that lookup's status: ``ok``, ``no``, ``temp``),
``ehlo`` (the HELO/EHLO name), ``from`` and ``to`` (envelope addresses), ``protectedrcpt`` (a
recipient that only the listed clients or senders may mail), ``certissuer`` and ``certsubject``
(the client certificate's issuer and subject, RFC 4514; in double quotes when they hold spaces),
``ratelimit`` (a client address or network that smtps's message and recipient limits spare:
``OK``; keys as ``cltaddr``).

Results: ``OK`` (the check passes), ``RELAY`` (the client, certificate or recipient domain may be
relayed for), ``REJECT`` (550 5.7.1), ``TEMPFAIL`` (450 4.7.1), ``ERROR:[NNN ]X.Y.Z text`` (that
reply), ``DISCARD`` (accept and drop), ``CONT`` (this entry decides nothing: go on as if there were
none). A ``QUICK:`` prefix makes the decision final: no further check runs. A ``protectedrcpt``
value is not a result but the list of ``cltaddr:``/``cltname:``/``from:`` keys that may mail it.

Key order, the first entry found wins (:func:`keys_for`):

* ``cltaddr``, ``ratelimit``: the address, then its networks from the most specific: IPv4 ``10.1.2.3``,
  ``10.1.2.``, ``10.1.``, ``10.``; IPv6 in full form (``2001:0db8:0000:...:0001``), stripped a
  group at a time (``2001:0db8:...:0000:``, ..., ``2001:``). An IPv4-mapped IPv6 client is looked
  up as IPv4. In the file a network may also be written as CIDR on a dot or group boundary
  (``10.1.0.0/16``, ``2001:db8::/32``).
* ``cltname``, ``ehlo``: the name, then its parent domains (``.b.example.test``,
  ``.example.test``, ``.test``).
* ``from``, ``to``, ``protectedrcpt``: the address, then the address without its ``+detail``, then
  ``user@``, then the domain and its parent domains. The null sender is ``from:<>``.
* ``cltresolve``, ``certissuer``, ``certsubject``: the value itself.

Keys are case-insensitive (certificate names aside) and a trailing dot on a name is ignored.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

from meta1py.maps.errors import BrokenEntry, MapError, MapErrors
from meta1py.maps.keys import parent_keys
from meta1py.maps.lines import map_entries
from meta1py.maps.source import Table, first_match, read_map_file
from meta1py.netaddr import client_ip
from meta1py.smtp.status import PERM_NOT_AUTHORIZED, TEMP_NOT_AUTHORIZED

__all__ = [
    "TAGS",
    "AccessMap",
    "AccessResult",
    "Match",
    "Protected",
    "access_entries",
    "keys_for",
    "load_access",
    "parse_access",
    "parse_access_value",
    "parse_result",
]

Tag = Literal[
    "cltaddr",
    "cltname",
    "cltresolve",
    "ehlo",
    "from",
    "to",
    "protectedrcpt",
    "certissuer",
    "certsubject",
    "ratelimit",
]
TAGS: tuple[Tag, ...] = get_args(Tag)
_TAG_SET = frozenset(TAGS)
_NAME_TAGS = frozenset({"cltname", "ehlo"})
_ADDRESS_TAGS = frozenset({"from", "to", "protectedrcpt"})
_RESOLVE_VALUES = frozenset({"ok", "no", "temp"})

Action = Literal["ok", "relay", "reject", "tempfail", "error", "discard", "cont"]
_SIMPLE: dict[str, Action] = {
    "ok": "ok",
    "relay": "relay",
    "reject": "reject",
    "tempfail": "tempfail",
    "discard": "discard",
    "cont": "cont",
}
_ERROR_RE = re.compile(r"(?:(?P<code>[45]\d\d)\s+)?(?P<enhanced>[45]\.\d{1,3}\.\d{1,3})(?:\s+(?P<text>.*))?$")
_NAME_RE = re.compile(r"^\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_SPACE_RE = re.compile(r"\s")
# An IPv4 address as ipaddress writes it (no leading zeros): its key is itself. A fast path for
# the most common cltaddr: key, which makes a large map (meta1 makemap) several times faster to
# read than ipaddress does.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


@dataclass(frozen=True, slots=True)
class AccessResult:
    """The result of an access entry.

    Attributes:
        action: ``ok``, ``relay``, ``reject``, ``tempfail``, ``error``, ``discard`` or ``cont``.
        quick: the ``QUICK:`` prefix: no further check runs after this decision.
        code: the reply code of a refusal (550 for REJECT, 450 for TEMPFAIL, as given for ERROR).
        enhanced: its enhanced status code.
        text: its text ("" for the default text of the stage).
    """

    action: Action
    quick: bool = False
    code: int = 0
    enhanced: str = ""
    text: str = ""

    @property
    def refuses(self) -> bool:
        """A reject, tempfail or error: the stage is answered with :attr:`code`."""
        return self.action in ("reject", "tempfail", "error")

    def __str__(self) -> str:
        word = self.action.upper()
        if self.action == "error":
            word = f"ERROR:{self.code} {self.enhanced} {self.text}".rstrip()
        return f"QUICK:{word}" if self.quick else word


@dataclass(frozen=True, slots=True)
class Protected:
    """A ``protectedrcpt`` entry: the keys (``tag:key``, normalised) of who may mail it."""

    allowed: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(self.allowed)


Value = AccessResult | Protected | BrokenEntry


@dataclass(frozen=True, slots=True)
class Match:
    """What a lookup found: the map key (``tag:key``) and its value."""

    key: str
    value: Value


def parse_result(text: str) -> AccessResult:
    """Parse a result (``OK``, ``QUICK:REJECT``, ``ERROR:5.7.1 text``...).

    Raises:
        ValueError: with a message for the operator.
    """
    word = text.strip()
    quick = False
    if word[:6].upper() == "QUICK:":
        quick, word = True, word[6:].strip()
    head, colon, rest = word.partition(":")
    name = head.strip().lower()
    if name == "error":
        if not colon:
            raise ValueError("ERROR needs ':X.Y.Z text', e.g. ERROR:5.7.1 not welcome")
        m = _ERROR_RE.match(rest.strip())
        if m is None:
            raise ValueError(f"bad ERROR result {text.strip()!r}: expected ERROR:[NNN ]X.Y.Z text")
        enhanced = m["enhanced"]
        code = int(m["code"]) if m["code"] else (550 if enhanced[0] == "5" else 450)
        if str(code)[0] != enhanced[0]:
            raise ValueError(f"reply code {code} does not match enhanced code {enhanced}")
        return AccessResult("error", quick, code, enhanced, (m["text"] or "").strip())
    action = _SIMPLE.get(name)
    if action is None or colon:
        known = "OK, RELAY, REJECT, TEMPFAIL, ERROR:X.Y.Z text, DISCARD, CONT (QUICK: before any)"
        raise ValueError(f"unknown result {text.strip()!r}; expected one of {known}")
    if action == "cont" and quick:
        raise ValueError("QUICK:CONT decides nothing; write CONT")
    if action == "reject":
        return AccessResult(action, quick, 550, PERM_NOT_AUTHORIZED)
    if action == "tempfail":
        return AccessResult(action, quick, 450, TEMP_NOT_AUTHORIZED)
    return AccessResult(action, quick)


#: :func:`parse_result` for the values of a map: a few texts (``OK``, ``REJECT``) repeat on most
#: lines, and a result is immutable, so one object serves them all (a large map then holds a few
#: result objects instead of one per line; a compiled map parses each text once).
parse_result_cached = functools.lru_cache(maxsize=1024)(parse_result)


# -- keys ----------------------------------------------------------------------------------------


def _client_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # A key in the file may be written as an address literal too: [192.0.2.1], [IPv6:2001:db8::1].
    return client_ip(text.strip().strip("[]").removeprefix("IPv6:").removeprefix("ipv6:"))


def _address_keys(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    if ip.version == 4:
        parts = str(ip).split(".")
        return [str(ip)] + [".".join(parts[:n]) + "." for n in (3, 2, 1)]
    groups = ip.exploded.split(":")
    return [ip.exploded] + [":".join(groups[:n]) + ":" for n in range(7, 0, -1)]


def _name(text: str) -> str:
    return text.strip().lower().rstrip(".")


def _mail_keys(address: str) -> list[str]:
    text = address.strip().strip("<>").lower()
    if not text:
        return ["<>"]
    local, at, domain = text.rpartition("@")
    if not at:
        return [text]  # a bare local part: only itself
    keys = [text]
    base = local.split("+", 1)[0]
    if base and base != local:
        keys.append(f"{base}@{domain}")
    keys.append(f"{base or local}@")
    domain = domain.rstrip(".")
    keys += [domain, *parent_keys(domain)]
    return keys


def keys_for(tag: str, subject: str) -> list[str]:
    """The map keys (``tag:key``) tried for ``subject`` under ``tag``, in order (see the module
    docstring); none for a client address that is not an IP address."""
    if tag in ("cltaddr", "ratelimit"):
        ip = _client_ip(subject)
        return [] if ip is None else [f"{tag}:{k}" for k in _address_keys(ip)]
    if tag in _NAME_TAGS:
        name = _name(subject)
        if not name:
            return []
        return [f"{tag}:{k}" for k in [name, *parent_keys(name)]]
    if tag in _ADDRESS_TAGS:
        return [f"{tag}:{k}" for k in _mail_keys(subject)]
    if tag == "cltresolve":
        return [f"cltresolve:{subject.strip().lower()}"]
    if tag in ("certissuer", "certsubject"):
        return [f"{tag}:{subject.strip()}"]
    raise ValueError(f"unknown access tag {tag!r}")


def _file_key(tag: str, key: str) -> str:
    """Normalise a key as written in the file (its tag known); raises ValueError."""
    if tag in ("cltaddr", "ratelimit"):
        return _network_key(key)
    if tag in _NAME_TAGS:
        name = _name(key)
        if not _NAME_RE.match(name):
            raise ValueError(f"bad host name {key!r}")
        return name
    if tag in _ADDRESS_TAGS:
        text = key.strip().lower()
        if text == "<>":
            if tag != "from":
                raise ValueError("<> is the null sender: only from:<> can match it")
            return text
        if not text or _SPACE_RE.search(text):
            raise ValueError(f"bad address or domain {key!r}")
        if "@" not in text:
            name = text.rstrip(".")
            if not _NAME_RE.match(name):
                raise ValueError(f"bad domain {key!r}")
            return name
        return text
    if tag == "cltresolve":
        value = key.strip().lower()
        if value not in _RESOLVE_VALUES:
            raise ValueError(f"cltresolve: is one of ok, no, temp, not {key!r}")
        return value
    value = key.strip()
    if not value:
        raise ValueError(f"{tag}: needs a distinguished name")
    return value


def _network_key(key: str) -> str:
    text = key.strip().lower()
    if _IPV4_RE.fullmatch(text):
        return text
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ValueError(f"bad network {key!r}: {exc}") from None
        step = 8 if net.version == 4 else 16
        if net.prefixlen % step or net.prefixlen == 0:
            raise ValueError(
                f"network {key!r}: the prefix length must be a multiple of {step} (a whole"
                f" {'octet' if step == 8 else 'group'}), or list the addresses"
            )
        keys = _address_keys(net.network_address)
        width = 4 if net.version == 4 else 8  # octets or groups in an address
        return keys[0] if net.prefixlen == step * width else keys[width - net.prefixlen // step]
    ip = _client_ip(text)
    if ip is not None:
        return _address_keys(ip)[0]
    if text.endswith("."):
        parts = text[:-1].split(".")
        if 1 <= len(parts) <= 3 and all(p.isdigit() and int(p) < 256 and str(int(p)) == p for p in parts):
            return text
    if text.endswith(":"):
        groups = text[:-1].split(":")
        if 1 <= len(groups) <= 7 and all(re.fullmatch(r"[0-9a-f]{1,4}", g) for g in groups):
            return ":".join(g.zfill(4) for g in groups) + ":"
    raise ValueError(f"bad client address or network {key!r} (an IP address, 10.1.2., 2001:db8:, or CIDR)")


# -- the map -------------------------------------------------------------------------------------


class AccessMap(Table[Value]):
    """A parsed access map (:func:`parse_access`); keys are ``tag:key``, normalised.

    Attributes:
        errors: the file's bad lines (``strict=False`` parsing), for the log.
    """

    def __init__(self, entries: dict[str, Value], errors: tuple[MapError, ...] = ()) -> None:
        self._entries = entries
        self.errors = errors

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Value | None:
        """The value of exactly ``key`` (``tag:key`` as :func:`keys_for` makes them), or None."""
        return self._entries.get(key)

    def lookup(self, tag: str, subject: str) -> Match | None:
        """The first entry for ``subject`` under ``tag`` in the key order, or None."""
        found = first_match(self, keys_for(tag, subject))
        return None if found is None else Match(*found)


def parse_access(text: str, path: str = "<string>", *, strict: bool = True) -> AccessMap:
    """Parse the text of an access map.

    ``strict=False`` (at run time): keep the good lines; a line whose key is good but whose result
    is not leaves a :class:`BrokenEntry` under its key (a lookup that reaches it is a temporary
    failure); the errors are in :attr:`AccessMap.errors`. Of two lines with one key the first
    counts.

    Raises:
        MapErrors: (``strict`` only) every problem in the file, as ``path:line: message``.
    """
    errors: list[MapError] = []
    entries = {key: value for _line, key, value in access_entries(text, path, errors)}
    errors.sort(key=lambda e: e.line)
    if errors and strict:
        raise MapErrors(errors)
    return AccessMap(entries, tuple(errors))


def access_entries(text: str, path: str, errors: list[MapError]) -> Iterator[tuple[int, str, Value]]:
    """The entries of an access map's text, in file order: ``(line, key, value)`` with the key
    normalised (``tag:key`` as :func:`keys_for` makes them) and each key once (the first line).

    A line whose key is good but whose result is not gives a :class:`BrokenEntry`; every problem
    is appended to ``errors`` as it is met (:func:`parse_access` builds the map from this;
    ``meta1 makemap`` writes it to a compiled file as it goes).
    """
    seen: dict[str, int] = {}
    lines = map_entries(text, path, errors, continuation_error="continuation lines are not allowed in access")
    for entry in lines:
        line, raw_key, value = entry.line, entry.key, entry.value
        tag, colon, key = raw_key.partition(":")
        tag = tag.lower()
        if tag in ("certissuer", "certsubject") and key.startswith('"'):
            # A distinguished name with spaces is written in double quotes.
            quoted, closed, rest = entry.text.partition(":")[2][1:].partition('"')
            if not closed:
                errors.append(MapError(path, line, f"{tag}: missing the closing '\"'"))
                continue
            key, value = quoted, rest.strip() or None
        if not colon or tag not in _TAG_SET:
            known = ", ".join(TAGS)
            errors.append(MapError(path, line, f"unknown tag in {raw_key!r}; expected one of {known}"))
            continue
        try:
            full = f"{tag}:{_file_key(tag, key)}"
        except ValueError as exc:
            errors.append(MapError(path, line, str(exc)))
            continue
        if full in seen:
            errors.append(MapError(path, line, f"duplicate key {raw_key!r} (first on line {seen[full]})"))
            continue
        seen[full] = line
        result: Value
        try:
            if value is None:
                raise ValueError(f"{raw_key!r} has no result")
            result = _protected(value) if tag == "protectedrcpt" else parse_result_cached(value)
        except ValueError as exc:
            error = MapError(path, line, str(exc))
            errors.append(error)
            result = BrokenEntry(error)
        yield line, full, result


def parse_access_value(key: str, text: str) -> AccessResult | Protected:
    """The value of the entry ``key`` (``tag:key``): a result, or for ``protectedrcpt:`` the keys
    of who may mail it. ``str()`` of the value parses back to the same value (a compiled map keeps
    that text).

    Raises:
        ValueError: with a message for the operator.
    """
    if key.startswith("protectedrcpt:"):
        return _protected(text)
    return parse_result_cached(text)


def _protected(value: str) -> Protected:
    allowed: list[str] = []
    for item in value.split():
        tag, colon, key = item.partition(":")
        tag = tag.lower()
        if not colon or tag not in ("cltaddr", "cltname", "from"):
            raise ValueError(f"protectedrcpt: {item!r} is not a cltaddr:, cltname: or from: key")
        allowed.append(f"{tag}:{_file_key(tag, key)}")
    if not allowed:
        raise ValueError("protectedrcpt: needs the keys of who may mail it")
    return Protected(tuple(allowed))


def load_access(path: str | os.PathLike[str], *, strict: bool = True) -> AccessMap:
    """Read and parse an access map (see :func:`parse_access`)."""
    name = os.fspath(path)
    return parse_access(read_map_file(name), name, strict=strict)
