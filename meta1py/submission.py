"""The submission rules smtps applies at MAIL FROM (pure; smtps and ``meta1 explain`` share them).

``require_auth``: MAIL FROM before a successful AUTH gets ``530 5.7.0``. ``sender_must_match_login``:
an authenticated session may only use its own address as the envelope sender
(:func:`sender_matches_login`), else ``553 5.7.1``.
"""

from __future__ import annotations

from meta1py.conf import SmtpsConfig
from meta1py.smtp import replies
from meta1py.smtp.replies import Reply

__all__ = ["sender_matches_login", "submission_refusal"]


def sender_matches_login(sender: str, login: str, local_domains: tuple[str, ...]) -> bool:
    """The ``sender_must_match_login`` rule.

    A login that is an address must equal the sender (the domain compared case-insensitively). A
    bare login matches ``login@D`` for each of our local domains. The null sender never matches:
    an authenticated user has no reason to send bounces.
    """
    if not sender:
        return False
    local, _, domain = sender.rpartition("@")
    if "@" in login:
        login_local, _, login_domain = login.rpartition("@")
        return local == login_local and domain.lower() == login_domain.lower()
    return local == login and domain.lower() in local_domains


def submission_refusal(
    service: SmtpsConfig, sender: str, authenticated: str | None, local_domains: tuple[str, ...]
) -> Reply | None:
    """The reply refusing MAIL FROM:<``sender``> ("" for the null sender) on ``service``, or None."""
    if service.require_auth and authenticated is None:
        return replies.auth_required()
    if service.sender_must_match_login and authenticated is not None:
        if not sender_matches_login(sender, authenticated, local_domains):
            return replies.sender_rejected(sender)
    return None
