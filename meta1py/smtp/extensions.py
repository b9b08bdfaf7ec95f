"""ESMTP extensions: what a server advertises and what a client learned.

The same value serves both sides: :class:`ServerConnection` is told what to
advertise, :class:`ClientConnection` parses an EHLO reply into one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Extensions"]

# The smtps `flags` names (docs/meta1.conf.md) that switch extensions on.
FLAG_NAMES = frozenset(
    {
        "pipelining",
        "8bitmime",
        "smtputf8",
        "chunking",
        "dsn",
        "enhancedstatuscodes",
        "size",
        "starttls",
        "auth",
    }
)


@dataclass(frozen=True, slots=True)
class Extensions:
    """A set of ESMTP extensions.

    Attributes:
        pipelining: PIPELINING (RFC 2920).
        size: SIZE (RFC 1870): None when not offered; the limit in bytes
            otherwise (0 means offered without a limit).
        eightbitmime: 8BITMIME (RFC 6152).
        smtputf8: SMTPUTF8 (RFC 6531).
        chunking: CHUNKING / BDAT (RFC 3030).
        binarymime: BINARYMIME (RFC 3030), only meaningful with chunking.
        dsn: DSN (RFC 3461).
        enhancedstatuscodes: ENHANCEDSTATUSCODES (RFC 2034).
        starttls: STARTTLS (RFC 3207).
        auth: SASL mechanisms offered with AUTH (RFC 4954), upper case; empty: no AUTH.
    """

    pipelining: bool = False
    size: int | None = None
    eightbitmime: bool = False
    smtputf8: bool = False
    chunking: bool = False
    binarymime: bool = False
    dsn: bool = False
    enhancedstatuscodes: bool = False
    starttls: bool = False
    auth: tuple[str, ...] = field(default=())

    @classmethod
    def all(cls, max_message_bytes: int = 10 * 1024 * 1024) -> Extensions:
        """Everything but STARTTLS and AUTH (which need TLS keys and a SASL backend)."""
        return cls(True, max_message_bytes, True, True, True, False, True, True, False, ())

    @classmethod
    def from_flags(
        cls,
        flags: Iterable[str],
        max_message_bytes: int,
        auth_mechanisms: Iterable[str] = (),
    ) -> Extensions:
        """Build from the smtps ``flags`` set (names as in the config, any case).

        Args:
            flags: Enabled flag names; unknown names are ignored (they belong
                to other parts of smtps).
            max_message_bytes: The SIZE limit to advertise.
            auth_mechanisms: SASL mechanisms, used only if ``auth`` is a flag.
        """
        f = {x.lower() for x in flags}
        return cls(
            pipelining="pipelining" in f,
            size=max_message_bytes if "size" in f else None,
            eightbitmime="8bitmime" in f,
            smtputf8="smtputf8" in f,
            chunking="chunking" in f,
            binarymime=False,
            dsn="dsn" in f,
            enhancedstatuscodes="enhancedstatuscodes" in f,
            starttls="starttls" in f,
            auth=tuple(m.upper() for m in auth_mechanisms) if "auth" in f else (),
        )

    def ehlo_lines(self, *, tls_active: bool = False, authenticated: bool = False) -> list[str]:
        """The extension lines of an EHLO reply, in a conventional order.

        STARTTLS is not offered once TLS is active (RFC 3207 §4.2), AUTH not
        once authenticated (RFC 4954 §4).
        """
        out: list[str] = []
        if self.pipelining:
            out.append("PIPELINING")
        if self.size is not None:
            out.append(f"SIZE {self.size}" if self.size else "SIZE")
        if self.starttls and not tls_active:
            out.append("STARTTLS")
        if self.auth and not authenticated:
            out.append("AUTH " + " ".join(self.auth))
        if self.enhancedstatuscodes:
            out.append("ENHANCEDSTATUSCODES")
        if self.eightbitmime:
            out.append("8BITMIME")
        if self.dsn:
            out.append("DSN")
        if self.smtputf8:
            out.append("SMTPUTF8")
        if self.chunking:
            out.append("CHUNKING")
            if self.binarymime:
                out.append("BINARYMIME")
        return out

    @classmethod
    def parse_ehlo(cls, lines: Iterable[str]) -> Extensions:
        """Parse the lines of an EHLO reply after the first (the hostname line).

        Unknown keywords and malformed values are ignored: a client must be
        liberal here (RFC 5321 §4.1.1.1).
        """
        kw: dict[str, list[str]] = {}
        for line in lines:
            parts = line.split()
            if parts:
                kw[parts[0].upper()] = parts[1:]
        size: int | None = None
        if "SIZE" in kw:
            args = kw["SIZE"]
            size = int(args[0]) if args and args[0].isdigit() and len(args[0]) < 19 else 0
        return cls(
            pipelining="PIPELINING" in kw,
            size=size,
            eightbitmime="8BITMIME" in kw,
            smtputf8="SMTPUTF8" in kw,
            chunking="CHUNKING" in kw,
            binarymime="BINARYMIME" in kw,
            dsn="DSN" in kw,
            enhancedstatuscodes="ENHANCEDSTATUSCODES" in kw,
            starttls="STARTTLS" in kw,
            auth=tuple(m.upper() for m in kw.get("AUTH", ())),
        )
