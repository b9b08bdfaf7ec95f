"""RFC 5321 path parsing: ``<local@domain>``, ``<>``, ``<postmaster>``.

Grammar (RFC 5321 §4.1.2), with the RFC 6531 extensions under SMTPUTF8::

    Path          = "<" [ A-d-l ":" ] Mailbox ">"       ; A-d-l: source route, stripped
    Mailbox       = Local-part "@" ( Domain / address-literal )
    Local-part    = Dot-string / Quoted-string
    address-literal = "[" ( IPv4 / "IPv6:" IPv6 ) "]"

Policy choices:

* Source routes (``<@a,@b:user@c>``) are accepted and stripped (RFC 5321 §3.3,
  appendix C): the mailbox is what counts.
* The percent hack (``user%host@relay``) and bang paths (``host!user@relay``)
  are not routing here: the local part is taken literally, and the local
  domain's map decides what it means. This closes the classic open-relay holes.
* Missing angle brackets (``MAIL FROM:a@b``) are refused: RFC 5321 requires
  them and accepting them only helps spamware.
* Internationalised addresses (UTF-8 in local part or domain) are allowed only
  when the transaction uses SMTPUTF8 (RFC 6531 §3.3); U-labels are not
  IDNA-validated here (that belongs to the resolver).
* General address literals (``[tag:...]``) are refused: nothing routes them.

Errors raise :class:`~meta1py.smtp.errors.SmtpProtocolError` whose
``reply_hint`` is 501 5.1.3 (syntax) or 553 (allowed syntax, refused value).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from meta1py.smtp import replies
from meta1py.smtp._frozen import fast_init
from meta1py.smtp.errors import SmtpProtocolError

__all__ = ["NULL_PATH", "Address", "NullPath", "match_path", "parse_path"]

# RFC 5321 §4.5.3.1: size limits of the parts.
MAX_LOCAL_BYTES = 64
MAX_DOMAIN_BYTES = 255
MAX_PATH_BYTES = 256

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_UTF8 = "\u0080-\U0010ffff"
_LETDIG = "A-Za-z0-9"


def _build(utf8: bool) -> re.Pattern[str]:
    extra = _UTF8 if utf8 else ""
    atom = f"[{_ATEXT}{extra}]+"
    dot_string = rf"{atom}(?:\.{atom})*"
    qtext = rf"[\x20\x21\x23-\x5b\x5d-\x7e{extra}]"
    quoted = rf'"(?:{qtext}|\\[\x20-\x7e])*"'
    sub = rf"[{_LETDIG}{extra}](?:[{_LETDIG}{extra}\-]*[{_LETDIG}{extra}])?"
    domain = rf"{sub}(?:\.{sub})*"
    literal = r"\[[\x21-\x5a\x5e-\x7e]*\]"
    adl = rf"@{domain}(?:,@{domain})*:"
    pattern = re.compile(rf"<(?:{adl})?(?P<local>{dot_string}|{quoted})@(?P<domain>{domain}|{literal})>\Z")
    assert pattern.groups == 2  # parse_path() unpacks m.groups()
    return pattern


_PATH_ASCII = _build(False)


@functools.cache
def _path_utf8() -> re.Pattern[str]:
    """The SMTPUTF8 pattern, compiled when first needed: its character classes span all of
    Unicode and take some 40 ms to compile, a large part of every process's start-up."""
    return _build(True)
# Used by the command parser to find where the path ends: quoted strings may
# hold spaces and '>'.
_PATH_TOKEN = re.compile(r'<(?:[^<>"\\]|"(?:[^"\\]|\\.)*")*>')


@fast_init
@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox from an envelope path.

    Attributes:
        local: The local part exactly as written (quoted form kept, with its quotes).
        domain: The domain as written (case kept), an address literal such as
            ``[192.0.2.1]``, or None only for the bare ``<postmaster>`` recipient.
    """

    local: str
    domain: str | None

    @property
    def local_unquoted(self) -> str:
        """The local part with quoting removed (``"a b"`` -> ``a b``)."""
        if len(self.local) >= 2 and self.local[0] == '"':
            return re.sub(r"\\(.)", r"\1", self.local[1:-1])
        return self.local

    @property
    def is_international(self) -> bool:
        """True if the address needs SMTPUTF8 to be transmitted."""
        return not str(self).isascii()

    def __str__(self) -> str:
        return self.local if self.domain is None else f"{self.local}@{self.domain}"


@dataclass(frozen=True, slots=True)
class NullPath:
    """The null reverse path ``<>`` (bounces, RFC 5321 §4.5.5)."""

    def __str__(self) -> str:
        return ""


NULL_PATH = NullPath()


def match_path(text: str) -> int:
    """Return the length of the ``<...>`` token at the start of ``text``, or 0."""
    # Fast path for the usual ``<local@domain>``: when nothing between '<' and
    # the first '>' is a quote, backslash or '<', that '>' ends the token (the
    # regex would find the same end); anything else goes to the regex.
    if text[:1] == "<":
        end = text.find(">")
        if end > 0:
            inner = text[1:end]
            if '"' not in inner and "\\" not in inner and "<" not in inner:
                return end + 1
    m = _PATH_TOKEN.match(text)
    return m.end() if m else 0


def parse_path(
    text: str, smtputf8: bool = False, *, allow_null: bool = True, allow_postmaster: bool = False
) -> Address | NullPath:
    """Parse an RFC 5321 path including its angle brackets.

    Args:
        text: The path, e.g. ``<user@example.org>``.
        smtputf8: Whether UTF-8 is allowed (the transaction used SMTPUTF8).
        allow_null: Accept ``<>`` (reverse paths only).
        allow_postmaster: Accept bare ``<postmaster>`` (forward paths only).

    Returns:
        An :class:`Address`, or :data:`NULL_PATH` for ``<>``.

    Raises:
        SmtpProtocolError: With a 501 5.1.3 or 553 reply hint.
    """
    if text == "<>":
        if allow_null:
            return NULL_PATH
        raise SmtpProtocolError("null path not allowed here", replies.bad_address_syntax())
    if allow_postmaster and len(text) == 12 and text.lower() == "<postmaster>":
        return Address(text[1:-1], None)
    if text.isascii():
        # Common case: one octet per character, so lengths need no encoding.
        if len(text) > MAX_PATH_BYTES + 2:
            raise SmtpProtocolError("path too long", replies.bad_address_not_allowed("Path too long"))
        m = _PATH_ASCII.match(text)
        if m is None:
            raise SmtpProtocolError(f"bad path {text[:80]!r}", replies.bad_address_syntax())
        local, domain = m.groups()  # the only two groups: local, domain
        if len(local) > MAX_LOCAL_BYTES:
            raise SmtpProtocolError(
                "local part too long", replies.bad_address_not_allowed("Local part too long")
            )
        if len(domain) > MAX_DOMAIN_BYTES:
            raise SmtpProtocolError("domain too long", replies.bad_address_not_allowed("Domain too long"))
        if domain[0] == "[":
            _check_literal(domain[1:-1])
        return Address(local, domain)
    if len(text.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES + 2:
        raise SmtpProtocolError("path too long", replies.bad_address_not_allowed("Path too long"))
    ascii_only = text.isascii()
    m = (_PATH_ASCII if ascii_only else _path_utf8()).match(text)
    if m is None:
        raise SmtpProtocolError(f"bad path {text[:80]!r}", replies.bad_address_syntax())
    if not ascii_only and not smtputf8:
        raise SmtpProtocolError("non-ASCII address without SMTPUTF8", replies.smtputf8_required())
    local, domain = m.group("local"), m.group("domain")
    if len(local.encode("utf-8")) > MAX_LOCAL_BYTES:
        raise SmtpProtocolError("local part too long", replies.bad_address_not_allowed("Local part too long"))
    if len(domain.encode("utf-8")) > MAX_DOMAIN_BYTES:
        raise SmtpProtocolError("domain too long", replies.bad_address_not_allowed("Domain too long"))
    if domain.startswith("["):
        _check_literal(domain[1:-1])
    return Address(local, domain)


def _check_literal(body: str) -> None:
    try:
        if body[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(body[5:])
            return
        if ":" in body:
            raise SmtpProtocolError(
                "general address literal",
                replies.bad_address_not_allowed("Address literal not supported"),
            )
        ipaddress.IPv4Address(body)
    except ValueError:
        raise SmtpProtocolError(f"bad address literal {body[:60]!r}", replies.bad_address_syntax()) from None
