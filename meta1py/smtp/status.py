"""Enhanced status codes (RFC 3463) of the delivery side: smar, qmgr and smtpc.

:mod:`meta1py.smtp.replies` builds every reply smtps sends; the delivery side does not send
replies of its own, it passes results between processes (``SmtpReplyValue`` over RPC, maildir
outcomes, DSN fields) and into bounces. Those results still carry an enhanced status code, and
every one of them is named here, so that the codes meta1py uses can be read in one place and a
test (``tests/unit/smtp/test_status_codes.py``) can check that no other module spells one out.

A name says the class (``TEMP_`` for 4.X.X, ``PERM_`` for 5.X.X, nothing for 2.X.X) and the
RFC's meaning of the subject and detail. The RFC sections: RFC 3463 §3 for the classes and the
X.0.0 codes, §3.2 (addressing), §3.3 (mailbox), §3.4 (mail system), §3.5 (network and routing),
§3.6 (mail delivery protocol), §3.8 (security); RFC 6531 §3.5 and RFC 6533 for X.6.7; RFC 7505
§4.2 for X.1.10.

Only constants live here (no I/O, no reply values): each process wraps them in the value it
passes on. Two readers outside the delivery side: smtps recognises qmgr's "store full" refusal by
:data:`TEMP_MAIL_SYSTEM_FULL`, and the routes map's ``error:`` transport defaults to
:data:`PERM_UNDEFINED`.
"""

from __future__ import annotations

from typing import Final

# --- success (2.X.X) --------------------------------------------------------------------------

SUCCESS: Final = "2.0.0"
"""2.0.0 Other undefined status: the delivery (or the step) succeeded."""

DESTINATION_VALID: Final = "2.1.5"
"""2.1.5 Destination address valid (smar accepting a recipient)."""

# --- other or undefined (X.0.0, RFC 3463 §3) ----------------------------------------------------

TEMP_UNDEFINED: Final = "4.0.0"
"""4.0.0 Other undefined status, temporary: used when a temporary failure gave no code."""

PERM_UNDEFINED: Final = "5.0.0"
"""5.0.0 Other undefined status, permanent: used when a permanent failure gave no code."""

# --- addressing (X.1.X, RFC 3463 §3.2) ----------------------------------------------------------

PERM_BAD_DESTINATION_MAILBOX: Final = "5.1.1"
"""5.1.1 Bad destination mailbox address: the user does not exist."""

PERM_BAD_DESTINATION_SYSTEM: Final = "5.1.2"
"""5.1.2 Bad destination system address: the domain or host does not exist or is not served."""

PERM_BAD_DESTINATION_SYNTAX: Final = "5.1.3"
"""5.1.3 Bad destination mailbox address syntax."""

PERM_NULL_MX: Final = "5.1.10"
"""5.1.10 Recipient address has null MX (RFC 7505 §4.2): the domain accepts no mail."""

# --- mailbox (X.2.X, RFC 3463 §3.3) -------------------------------------------------------------

TEMP_MAILBOX_FULL: Final = "4.2.2"
"""4.2.2 Mailbox full (a maildir on a full disk or over quota)."""

PERM_MAILBOX_OTHER: Final = "5.2.0"
"""5.2.0 Other or undefined mailbox status: a file target that cannot be written (local(8))."""

# --- mail system (X.3.X, RFC 3463 §3.4) ---------------------------------------------------------

TEMP_MAIL_SYSTEM_ERROR: Final = "4.3.0"
"""4.3.0 Other or undefined mail system status: a local error (a missing file, a peer down)."""

TEMP_MAIL_SYSTEM_FULL: Final = "4.3.1"
"""4.3.1 Mail system full: the queue's disk is full."""

TEMP_SYSTEM_MISCONFIGURED: Final = "4.3.5"
"""4.3.5 System incorrectly configured, temporary (e.g. a delivery path that is too long)."""

PERM_MAIL_SYSTEM_OTHER: Final = "5.3.0"
"""5.3.0 Other or undefined mail system status, permanent: a command that failed (local(8))."""

PERM_SYSTEM_MISCONFIGURED: Final = "5.3.5"
"""5.3.5 System incorrectly configured, permanent (e.g. a route names an unknown transport)."""

# --- network and routing (X.4.X, RFC 3463 §3.5) -------------------------------------------------

TEMP_NO_ANSWER_FROM_HOST: Final = "4.4.1"
"""4.4.1 No answer from host: a connection could not be made."""

TEMP_BAD_CONNECTION: Final = "4.4.2"
"""4.4.2 Bad connection: the connection was lost or timed out after it was made."""

TEMP_ROUTING_SERVER_FAILURE: Final = "4.4.3"
"""4.4.3 Directory server failure: DNS (or the router) could not be asked."""

TEMP_UNABLE_TO_ROUTE: Final = "4.4.4"
"""4.4.4 Unable to route, temporary (a nexthop that could not be resolved this time)."""

PERM_UNABLE_TO_ROUTE: Final = "5.4.4"
"""5.4.4 Unable to route, permanent (no MX host has an address)."""

PERM_ROUTING_LOOP: Final = "5.4.6"
"""5.4.6 Routing loop detected (an alias or maildir loop)."""

TEMP_DELIVERY_TIME_EXPIRED: Final = "4.4.7"
"""4.4.7 Delivery time expired: the message stayed in the queue for its whole lifetime."""

# --- mail delivery protocol (X.5.X, RFC 3463 §3.6) ----------------------------------------------

TEMP_PROTOCOL_ERROR: Final = "4.5.0"
"""4.5.0 Other or undefined protocol status, temporary (a malformed reply from a server)."""

PERM_PROTOCOL_ERROR: Final = "5.5.0"
"""5.5.0 Other or undefined protocol status, permanent (a malformed request between processes)."""

# --- message content (X.6.X, RFC 3463 §3.7) -----------------------------------------------------

PERM_MEDIA_OTHER: Final = "5.6.0"
"""5.6.0 Other or undefined media error: a command's EX_DATAERR (sysexits)."""

PERM_NON_ASCII_ADDRESS: Final = "5.6.7"
"""5.6.7 Non-ASCII addresses not permitted for that sender/recipient (RFC 6531 §3.5, RFC 6533)."""

# --- security (X.7.X, RFC 3463 §3.8) ------------------------------------------------------------

PERM_SECURITY_OTHER: Final = "5.7.0"
"""5.7.0 Other or undefined security status: a command's EX_NOPERM (sysexits)."""

PERM_NOT_AUTHORIZED: Final = "5.7.1"
"""5.7.1 Delivery not authorized, message refused (relaying denied; mail to a command or file
that ``allow_mail_to_commands``/``allow_mail_to_files`` does not allow)."""

TEMP_NOT_AUTHORIZED: Final = "4.7.1"
"""4.7.1 Not authorized now (an access map's TEMPFAIL, greylisting, a rate limit)."""

TEMP_CRYPTO_FAILURE: Final = "4.7.5"
"""4.7.5 Cryptographic failure: a TLS handshake failed or TLS requirements were not met."""
