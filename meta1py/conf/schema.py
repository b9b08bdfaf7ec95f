"""The schema: value types and the helpers that attach option specs to the model's fields.

The model (`meta1py.conf.model`) declares every option once, as a dataclass field built with
`opt()` or `sect()`; the spec (type, default, range, doc, example) lives in the field's metadata.
The parser, `dump_config`, `check-config --defaults` and the generated docs all read that one
table, so adding an option is adding one field.

Defaults are written in configuration syntax ("10M", "5d", "var/queue") and parsed by the
option's own type, so the documented default and the effective one cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A bare word as the grammar defines it (meta1.lark, WORD); used to decide whether a value can be
# written without quotes.
_BARE_WORD = re.compile(r'[^\s=;{},"#\x00-\x1f\x7f]+')


@dataclass(frozen=True)
class Scalar:
    """One value token: a bare word or a quoted string (already unescaped)."""

    text: str
    quoted: bool = False
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class ListValue:
    """A ``{ a, b, c }`` list value."""

    items: tuple[Scalar, ...]
    line: int = 0
    column: int = 0


RawValue = Scalar | ListValue


class InvalidValue(Exception):
    """A value that does not fit its option's type; ``at`` is the token to point at."""

    def __init__(self, message: str, hint: str = "", at: Scalar | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.at = at


def quote(text: str) -> str:
    """Write ``text`` as a configuration value: bare when that parses back, else quoted."""
    if _BARE_WORD.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------------
# Value types


class ValueType:
    """Base of the value types: parse a raw token, format a model value, describe for docs."""

    #: what the docs and error messages call a valid value, e.g. "a size like 10M"
    expected: str = "a value"
    #: whether the option takes a ``{ ... }`` list
    is_list: bool = False
    #: short name of the type for the docs ("" : use ``expected``)
    kind: str = ""

    def parse(self, raw: RawValue) -> Any:
        """Turn a raw value into the model value; raise `InvalidValue` if it does not fit."""
        if isinstance(raw, ListValue):
            raise InvalidValue(
                "expected a single value, not a list",
                f"write {self.expected}, without braces",
                Scalar("", line=raw.line, column=raw.column),
            )
        return self.parse_one(raw)

    def parse_one(self, raw: Scalar) -> Any:
        """Parse one scalar; subclasses override this."""
        return raw.text

    def format(self, value: Any) -> str:
        """Write the model value in configuration syntax."""
        return quote(str(value))

    def describe(self) -> str:
        """A short type description for the docs."""
        return self.kind or self.expected

    def _bad(self, raw: Scalar, what: str = "") -> InvalidValue:
        shown = raw.text if len(raw.text) <= 40 else raw.text[:37] + "..."
        return InvalidValue(f"invalid {what or 'value'} {shown!r}", f"expected {self.expected}", raw)


class Text(ValueType):
    """Any string."""

    kind = "string"
    expected = "a string"


class Word(ValueType):
    """A name: user, group, section label. Non-empty, no white space or control characters."""

    kind = "name"
    expected = "a name"

    def parse_one(self, raw: Scalar) -> str:
        if not raw.text or not _BARE_WORD.fullmatch(raw.text):
            raise self._bad(raw, "name")
        return raw.text


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


class Hostname(ValueType):
    """A domain name (lower-cased): letters, digits, '-', '_' in dot-separated labels."""

    kind = "host name"
    expected = "a host name like mail.example.com"

    def parse_one(self, raw: Scalar) -> str:
        name = raw.text.lower()
        if name.endswith("."):
            name = name[:-1]
        if not name or len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
            raise self._bad(raw, "host name")
        return name


class Choice(ValueType):
    """One of a fixed set of words (case-insensitive; the model holds the lower-case form)."""

    def __init__(self, *values: str) -> None:
        self.values = values
        self.expected = "one of " + ", ".join(values)
        self.kind = self.expected

    def parse_one(self, raw: Scalar) -> str:
        word = raw.text.lower()
        if word not in self.values:
            hint = f"expected {self.expected}"
            near = did_you_mean(word, self.values)
            if near:
                hint = f"did you mean {near!r}? ({hint})"
            raise InvalidValue(f"invalid value {raw.text!r}", hint, raw)
        return word


def _range_text(lo: float | None, hi: float | None, fmt: Callable[[Any], str]) -> str:
    if lo is not None and hi is not None:
        return f"{fmt(lo)}..{fmt(hi)}"
    if lo is not None:
        return f"at least {fmt(lo)}"
    if hi is not None:
        return f"at most {fmt(hi)}"
    return ""


class _Ranged(ValueType):
    unit_name = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None) -> None:
        self.lo = lo
        self.hi = hi

    def check_range(self, value: float, raw: Scalar) -> None:
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise InvalidValue(
                f"{raw.text} is out of range",
                f"allowed: {_range_text(self.lo, self.hi, self.format)}",
                raw,
            )

    def describe(self) -> str:
        rng = _range_text(self.lo, self.hi, self.format)
        return f"{self.unit_name} ({rng})" if rng else self.unit_name


class Integer(_Ranged):
    """A decimal integer within [lo, hi]."""

    expected = "an integer"
    unit_name = "integer"

    def parse_one(self, raw: Scalar) -> int:
        if not re.fullmatch(r"-?[0-9]+", raw.text) or len(raw.text) > 19:
            raise self._bad(raw, "integer")
        value = int(raw.text)
        self.check_range(value, raw)
        return value

    def format(self, value: Any) -> str:
        return str(int(value))


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class Size(_Ranged):
    """A size in bytes: a bare number, or with K, M, G (1024-based)."""

    expected = "a size like 512, 64K, 10M or 1G"
    unit_name = "size"

    def parse_one(self, raw: Scalar) -> int:
        m = re.fullmatch(r"([0-9]{1,15})([kKmMgG]?)", raw.text)
        if not m:
            raise self._bad(raw, "size")
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        self.check_range(value, raw)
        return value

    def format(self, value: Any) -> str:
        value = int(value)
        for unit in ("G", "M", "K"):
            mult = _SIZE_UNITS[unit.lower()]
            if value and value % mult == 0:
                return f"{value // mult}{unit}"
        return str(value)


_TIME_UNITS_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
_TIME_PART = re.compile(r"([0-9]{1,12})(ms|s|m|h|d|w)")


class Time(_Ranged):
    """A duration in seconds (float): a bare number of seconds, or units ms s m h d w (5m3s)."""

    expected = "a time like 90, 30s, 5m3s, 1h or 2d"
    unit_name = "time"

    def parse_one(self, raw: Scalar) -> float:
        text = raw.text.lower()
        if re.fullmatch(r"[0-9]{1,12}", text):
            total_ms = int(text) * 1000
        else:
            pos, total_ms = 0, 0
            while pos < len(text):
                m = _TIME_PART.match(text, pos)
                if not m:
                    raise self._bad(raw, "time")
                total_ms += int(m.group(1)) * _TIME_UNITS_MS[m.group(2)]
                pos = m.end()
            if not text:
                raise self._bad(raw, "time")
        # Divide once, so that a formatted value parses back to exactly the same float.
        value = total_ms / 1000
        self.check_range(value, raw)
        return value

    def format(self, value: Any) -> str:
        total_ms = round(float(value) * 1000)
        if total_ms == 0:
            return "0"
        parts = []
        for unit, mult in _TIME_UNITS_MS.items():
            if total_ms >= mult:
                parts.append(f"{total_ms // mult}{unit}")
                total_ms %= mult
        return "".join(parts)


class Boolean(ValueType):
    """yes/no, true/false, on/off."""

    kind = "boolean (yes/no)"
    expected = "yes or no"
    _WORDS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}

    def parse_one(self, raw: Scalar) -> bool:
        try:
            return self._WORDS[raw.text.lower()]
        except KeyError:
            raise self._bad(raw, "boolean") from None

    def format(self, value: Any) -> str:
        return "yes" if value else "no"


class PathType(ValueType):
    """A file system path; relative paths are resolved after parsing (see the option's base)."""

    kind = "path"
    expected = "a path"

    def parse_one(self, raw: Scalar) -> Path:
        if not raw.text or "\x00" in raw.text:
            raise self._bad(raw, "path")
        return Path(raw.text)

    def format(self, value: Any) -> str:
        return quote(str(value))


class IPAddress(ValueType):
    """An IPv4 or IPv6 address (the model holds its canonical text)."""

    kind = "IP address"
    expected = "an IP address like 127.0.0.1 or ::1"

    def parse_one(self, raw: Scalar) -> str:
        text = raw.text
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise self._bad(raw, "IP address") from None


class Network(ValueType):
    """An IP network in CIDR notation (a bare address is a /32 or /128); no host bits."""

    kind = "IP address or network (CIDR)"
    expected = "an address or network like 10.0.0.0/8 or ::1"

    def parse_one(self, raw: Scalar) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(raw.text, strict=True)
        except ValueError:
            pass
        try:
            net = ipaddress.ip_network(raw.text, strict=False)
        except ValueError:
            raise self._bad(raw, "network") from None
        raise InvalidValue(f"network {raw.text!r} has host bits set", f"did you mean {str(net)!r}?", raw)

    def format(self, value: Any) -> str:
        return str(value)


def _parse_port(text: str) -> int | None:
    if not re.fullmatch(r"[0-9]{1,5}", text):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


class HostPort(ValueType):
    """``ip`` or ``ip:port`` (IPv6 as ``::1`` or ``[::1]:port``); the model holds (ip, port)."""

    def __init__(self, default_port: int) -> None:
        self.default_port = default_port
        self.kind = "ip or ip:port"
        self.expected = f"ip or ip:port like 127.0.0.1, 127.0.0.1:{default_port} or [::1]:{default_port}"

    def parse_one(self, raw: Scalar) -> tuple[str, int]:
        text = raw.text
        host, port_text = text, ""
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise self._bad(raw, "ip:port")
            port_text = rest[1:] if rest else ""
            if rest and not port_text:
                raise self._bad(raw, "ip:port")
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            if not port_text:
                raise self._bad(raw, "ip:port")
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            raise self._bad(raw, "ip:port") from None
        port = self.default_port
        if port_text:
            parsed = _parse_port(port_text)
            if parsed is None:
                raise InvalidValue(
                    f"invalid port {port_text!r} in {text!r}", "a port is a number 1..65535", raw
                )
            port = parsed
        return (ip, port)

    def format(self, value: Any) -> str:
        ip, port = value
        if ":" in ip:
            return f"[{ip}]:{port}"
        return f"{ip}:{port}"


class ListOf(ValueType):
    """A ``{ a, b }`` list of values of one type; a single bare value is a one-element list."""

    is_list = True

    def __init__(self, item: ValueType) -> None:
        self.item = item
        self.expected = f"a list of {item.expected.removeprefix('a ').removeprefix('an ')}"

    def parse(self, raw: RawValue) -> tuple[Any, ...]:
        items = raw.items if isinstance(raw, ListValue) else (raw,)
        return tuple(self.item.parse_one(i) for i in items)

    def format(self, value: Any) -> str:
        return "{ " + ", ".join(self.item.format(v) for v in value) + " }" if value else "{ }"

    def describe(self) -> str:
        return f"list of {self.item.describe()}"


class Flags(ValueType):
    """A flag list: each entry turns a flag on; ``no_X`` or ``dont_X`` turns it off.

    Entries change the defaults rather than replace them; the model holds the effective set.
    """

    is_list = True

    def __init__(self, known: tuple[str, ...], default_on: frozenset[str]) -> None:
        self.known = known
        self.default_on = default_on
        self.expected = "a list of flags, each optionally prefixed with no_ or dont_"

    def parse(self, raw: RawValue) -> frozenset[str]:
        items = raw.items if isinstance(raw, ListValue) else (raw,)
        on: set[str] = set()
        off: set[str] = set()
        for item in items:
            word = item.text.lower()
            negated = False
            for prefix in ("no_", "dont_"):
                if word.startswith(prefix) and word[len(prefix) :] in self.known:
                    word, negated = word[len(prefix) :], True
                    break
            if word not in self.known:
                near = did_you_mean(word, self.known)
                hint = f"did you mean {near!r}?" if near else "known flags: " + ", ".join(self.known)
                raise InvalidValue(f"unknown flag {item.text!r}", hint, item)
            if word in (on if negated else off):
                raise InvalidValue(f"flag {word!r} is both set and negated", "keep only one of them", item)
            (off if negated else on).add(word)
        return frozenset((self.default_on | on) - off)

    def format(self, value: Any) -> str:
        entries = [f for f in self.known if f in value and f not in self.default_on]
        entries += [f"no_{f}" for f in self.known if f not in value and f in self.default_on]
        return "{ " + ", ".join(entries) + " }" if entries else "{ }"

    def describe(self) -> str:
        return "flags: " + ", ".join(self.known)


class RelayhostType(ValueType):
    """``[host]:port`` or ``[host]`` (no MX lookup) or ``host`` / ``host:port`` (MX lookup)."""

    kind = "[host]:port or host[:port]"
    expected = "[host]:port or host, like [smtp.example.com]:587"

    def parse_one(self, raw: Scalar) -> Any:
        from meta1py.conf.model import Relayhost  # the model imports this module

        text = raw.text
        mx = not text.startswith("[")
        port = 25
        if mx:
            host, sep, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
            if not sep:
                host = text
        else:
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise self._bad(raw, "relay host")
            port_text = rest[1:]
            if rest and not port_text:
                raise self._bad(raw, "relay host")
        if port_text:
            parsed = _parse_port(port_text)
            if parsed is None:
                raise InvalidValue(f"invalid port {port_text!r} in {text!r}", "use 1..65535", raw)
            port = parsed
        if mx:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                pass
            else:
                raise InvalidValue(
                    f"invalid relay host {text!r}",
                    f"write an IP address in brackets, like [{host}]:{port}",
                    raw,
                )
        host_ok = False
        try:
            host = str(ipaddress.ip_address(host))
            host_ok = True
        except ValueError:
            try:
                host = Hostname().parse_one(Scalar(host))
                host_ok = True
            except InvalidValue:
                pass
        if not host_ok:
            hint = f"expected {self.expected}"
            if text.count(":") > 1 and mx:
                hint = f"write an IPv6 address in brackets, like [{text}]:25"
            raise InvalidValue(f"invalid relay host {text!r}", hint, raw)
        return Relayhost(host=host, port=port, mx=mx)

    def format(self, value: Any) -> str:
        host = value.host
        if not value.mx:
            return f"[{host}]:{value.port}"
        return host if value.port == 25 else f"{host}:{value.port}"


# ---------------------------------------------------------------------------------------------
# Specs attached to the model's fields


@dataclass(frozen=True)
class OptionSpec:
    """One option: name, type, default (in configuration syntax), docs."""

    name: str
    spelling: str
    type: ValueType
    default: str | tuple[str, ...] | None
    doc: str
    example: str
    base: str = ""
    default_doc: str = ""
    dynamic_default: Callable[[], Any] | None = None

    def default_value(self) -> Any:
        """The model value of the default (relative paths not yet resolved)."""
        if self.dynamic_default is not None:
            return self.dynamic_default()
        return self.static_default()

    def static_default(self) -> Any:
        """The default parsed without calling ``dynamic_default`` (safe at import time)."""
        if self.default is None:
            return None
        if isinstance(self.default, tuple):
            return self.type.parse(ListValue(tuple(Scalar(t) for t in self.default)))
        return self.type.parse(Scalar(self.default))

    def default_text(self) -> str:
        """The default as written in a configuration file (or a description of it)."""
        if self.default_doc:
            return self.default_doc
        if self.default is None:
            return "(none)"
        if isinstance(self.default, tuple):
            return self.type.format(self.static_default())
        return self.default


@dataclass(frozen=True)
class SectionSpec:
    """A section keyword and the model class its contents build."""

    keyword: str
    cls: type
    doc: str
    repeatable: bool = False
    labelled: bool = False
    #: A repeatable section that is absent by default (dnsbl), rather than once with its defaults.
    optional: bool = False

    def default(self) -> Any:
        """The value of the field when the section is not written."""
        if not self.repeatable:
            return self.cls()
        return () if self.optional else (self.cls(),)


_OPT = "meta1.option"
_SECT = "meta1.section"


def opt(
    spelling: str,
    vtype: ValueType,
    default: str | tuple[str, ...] | None,
    doc: str,
    example: str,
    *,
    base: str = "",
    default_doc: str = "",
    dynamic_default: Callable[[], Any] | None = None,
    fallback: Any = None,
) -> Any:
    """Declare an option as a dataclass field (its attribute name is ``spelling.lower()``).

    Args:
        spelling: the name as documented (e.g. ``IO_timeout``); matching is case-insensitive.
        vtype: the value type (with its range).
        default: the default in configuration syntax (a tuple of words for lists), or None.
        doc: one-line description.
        example: an example value in configuration syntax.
        base: for paths: "cwd" or "queue_directory", what a relative path is relative to.
        default_doc: shown as the default when it is computed at run time.
        dynamic_default: computes the default at parse time (e.g. the host's FQDN).
        fallback: the dataclass default when ``dynamic_default`` is used.
    """
    spec = OptionSpec(
        spelling.lower(), spelling, vtype, default, doc, example, base, default_doc, dynamic_default
    )
    value = fallback if dynamic_default is not None else spec.static_default()
    return dataclasses.field(default=value, metadata={_OPT: spec})


def sect(
    keyword: str,
    cls: type,
    doc: str,
    *,
    repeatable: bool = False,
    labelled: bool = False,
    optional: bool = False,
) -> Any:
    """Declare a (possibly repeatable) subsection as a dataclass field (``optional``: a
    repeatable section that is absent unless written)."""
    spec = SectionSpec(keyword, cls, doc, repeatable, labelled, optional)
    factory: Callable[[], Any] = spec.default
    return dataclasses.field(default_factory=factory, metadata={_SECT: spec})


def options_of(cls: type) -> Iterator[tuple[str, OptionSpec]]:
    """The (attribute name, spec) of every option of a model class, in declaration order."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_OPT)
        if spec is not None:
            yield f.name, spec


def sections_of(cls: type) -> Iterator[tuple[str, SectionSpec]]:
    """The (attribute name, spec) of every subsection of a model class."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_SECT)
        if spec is not None:
            yield f.name, spec


def did_you_mean(word: str, candidates: Any) -> str | None:
    """The closest candidate to a misspelt ``word``, if one is close enough."""
    import difflib

    found = difflib.get_close_matches(word.lower(), list(candidates), n=1, cutoff=0.7)
    return found[0] if found else None
