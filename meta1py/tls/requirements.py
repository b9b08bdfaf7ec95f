"""smtpc's per-destination TLS requirements: the value type and its compact text syntax.

Pure: no :mod:`ssl`, :mod:`ctypes`, :mod:`socket` or trio import, so :mod:`meta1py.conf` checks the
``tls_requirements`` option with this parser at load time, and the routes and ``tls_policy`` maps use it
too. ``cryptography`` is imported only to check a ``root_ca_subjects`` name.

How a finished handshake is judged against a :class:`TlsRequirements` is
:func:`meta1py.tls.checks.check_requirements`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "TLS_LEVELS",
    "TlsLevel",
    "TlsRequirements",
    "format_tls_requirements",
    "normalise_fingerprint",
    "parse_tls_requirements",
]

TLS_LEVELS: tuple[str, ...] = ("none", "may", "encrypt", "verify")
TlsLevel: TypeAlias = Literal["none", "may", "encrypt", "verify"]


@dataclasses.dataclass(frozen=True, slots=True)
class TlsRequirements:
    """What smtpc demands of one destination's TLS (parsed by :func:`parse_tls_requirements`).

    Attributes:
        level: ``none`` (never STARTTLS), ``may`` (opportunistic; the default), ``encrypt`` (TLS
            required, certificate not checked), ``verify`` (TLS with a valid chain and host name).
        cert_fps: SHA-256 fingerprints (canonical ``AB:CD:..`` form); the server certificate must be one.
        hostnames: the server certificate's subjectAltName DNS entries must match one of these.
        root_ca_subjects: the verified chain must end at a root CA with one of these subjects.
    """

    level: TlsLevel = "may"
    cert_fps: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()
    root_ca_subjects: tuple[str, ...] = ()

    @property
    def tls_required(self) -> bool:
        """Whether delivery without TLS is a violation."""
        return self.level in ("encrypt", "verify")


_HEX64 = re.compile(r"[0-9a-f]{64}")
_HOSTNAME = re.compile(
    r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?"
)
_KEYS = ("level", "cert_fps", "hostnames", "root_ca_subjects")


def normalise_fingerprint(text: str) -> str:
    """Canonical ``AB:CD:...`` form of a SHA-256 fingerprint written with or without colons.

    Raises:
        ValueError: not 32 bytes of hex.
    """
    plain = text.strip().replace(":", "").lower()
    if not _HEX64.fullmatch(plain):
        raise ValueError(f"bad certificate fingerprint {text!r}: expected 64 hex digits (SHA-256)")
    return ":".join(plain[i : i + 2] for i in range(0, 64, 2)).upper()


def _scan(text: str) -> list[tuple[str, list[str] | None]]:
    """Split into items: (word, None) or (key, [values]). Values may be "quoted" (\\" and \\\\ escapes)."""
    items: list[tuple[str, list[str] | None]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace() or text[i] == ";":
            i += 1
            continue
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, i)
        if not m:
            raise ValueError(f"tls_requirements: unexpected {text[i]!r} at column {i + 1}")
        word, i = m.group(), m.end()
        if i >= n or text[i] != "=":
            if i < n and not (text[i].isspace() or text[i] == ";"):
                raise ValueError(f"tls_requirements: unexpected {text[i]!r} after {word!r} at column {i + 1}")
            items.append((word, None))
            continue
        i += 1
        values: list[str] = []
        while True:
            if i < n and text[i] == '"':
                j, chars = i + 1, []
                while j < n and text[j] != '"':
                    if text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\':
                        j += 1  # only \" and \\ are escapes: DNs keep their own backslashes
                    chars.append(text[j])
                    j += 1
                if j >= n:
                    raise ValueError(f"tls_requirements: unterminated quote in {word}= at column {i + 1}")
                values.append("".join(chars))
                i = j + 1
            else:
                m = re.compile(r'[^\s;,"]+').match(text, i)
                if not m:
                    raise ValueError(f"tls_requirements: {word}= needs a value (column {i + 1})")
                values.append(m.group())
                i = m.end()
            if i < n and text[i] == ",":
                i += 1
                continue
            if i < n and not (text[i].isspace() or text[i] == ";"):
                raise ValueError(f"tls_requirements: unexpected {text[i]!r} in {word}= at column {i + 1}")
            break
        items.append((word, values))
    return items


def parse_tls_requirements(text: str) -> TlsRequirements:
    """Parse the compact ``tls_requirements`` syntax used in the config and the routes map.

    Items are separated by white space or ``;``: a level word (``none``, ``may``, ``encrypt``,
    ``verify``, or ``level=...``) and ``key=value[,value...]`` items: ``cert_fps``, ``hostnames``,
    ``root_ca_subjects``. Values containing commas, spaces or ``;`` are double-quoted
    (``root_ca_subjects="CN=Root CA,O=Example"``). Keys are case-insensitive and may repeat (lists add
    up). Any of the three checks without a level means ``encrypt``; with ``none`` or ``may`` they are
    an error. The empty string means ``may``.

    Example: ``verify; cert_fps=AB:CD:...,0123abcd...; hostnames=mx.example.com``.

    Raises:
        ValueError: with a message naming the offending item.
    """
    level: str | None = None
    lists: dict[str, list[str]] = {"cert_fps": [], "hostnames": [], "root_ca_subjects": []}
    for word, values in _scan(text):
        key = word.lower()
        if values is None or key == "level":
            if values is not None:
                if len(values) != 1:
                    raise ValueError("tls_requirements: level= takes one value")
                key = values[0].lower()
            if key not in TLS_LEVELS:
                hint = f"; expected one of {', '.join(TLS_LEVELS)} or key=value ({', '.join(_KEYS[1:])})"
                raise ValueError(f"tls_requirements: unknown item {word!r}{hint}")
            if level is not None and level != key:
                raise ValueError(f"tls_requirements: conflicting levels {level!r} and {key!r}")
            level = key
            continue
        if key not in lists:
            raise ValueError(f"tls_requirements: unknown key {word!r}; expected one of {', '.join(_KEYS)}")
        if key == "cert_fps":
            lists[key].extend(normalise_fingerprint(v) for v in values)
        elif key == "hostnames":
            for v in values:
                name = v.lower().rstrip(".")
                if not name or not _HOSTNAME.fullmatch(name):
                    raise ValueError(f"tls_requirements: bad host name {v!r} in hostnames=")
                lists[key].append(name)
        else:
            for v in values:
                if not v.strip():
                    raise ValueError("tls_requirements: empty subject in root_ca_subjects=")
                subject_key(v)  # validate now, not at delivery time
                lists[key].append(v.strip())
    checks = any(lists.values())
    if level is None:
        level = "encrypt" if checks else "may"
    elif checks and level in ("none", "may"):
        raise ValueError(f"tls_requirements: certificate checks need TLS, but the level is {level!r}")
    return TlsRequirements(
        level=level,  # type: ignore[arg-type]  # checked against TLS_LEVELS above
        cert_fps=tuple(dict.fromkeys(lists["cert_fps"])),
        hostnames=tuple(dict.fromkeys(lists["hostnames"])),
        root_ca_subjects=tuple(dict.fromkeys(lists["root_ca_subjects"])),
    )


def _quote_value(value: str) -> str:
    if re.fullmatch(r'[^\s;,"\\]+', value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_tls_requirements(req: TlsRequirements) -> str:
    """The text form of ``req``; :func:`parse_tls_requirements` turns it back into an equal value."""
    parts: list[str] = [req.level]
    for key in _KEYS[1:]:
        values: tuple[str, ...] = getattr(req, key)
        if values:
            parts.append(f"{key}=" + ",".join(_quote_value(v) for v in values))
    return "; ".join(parts)


def subject_key(subject: str) -> tuple[tuple[str, str], ...]:
    """A comparable form of a distinguished name, written RFC 4514 style or OpenSSL ``/C=../CN=..``.

    Raises:
        ValueError: the text is not a distinguished name.
    """
    # Imported here, not at the top: most configurations never name a root CA subject, and
    # cryptography costs about 8 MB in every process that loads it.
    from cryptography import x509

    text = subject.strip()
    if text.startswith("/"):
        # OpenSSL's one-line form lists the RDNs root-first; RFC 4514 lists them leaf-first.
        text = ",".join(reversed([p.replace(",", "\\,") for p in text[1:].split("/") if p]))
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise ValueError(f"tls_requirements: bad subject {subject!r} in root_ca_subjects=: {exc}") from None
    return name_key(name)


def name_key(name: x509.Name) -> tuple[tuple[str, str], ...]:
    """The comparable form of a parsed name (see :func:`subject_key`)."""
    # Order-insensitive and case-insensitive: operators copy subjects from different tools.
    return tuple(
        sorted((attr.oid.dotted_string, " ".join(str(attr.value).split()).casefold()) for attr in name)
    )
