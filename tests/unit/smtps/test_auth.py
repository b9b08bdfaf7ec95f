"""SASL PLAIN/LOGIN exchanges, the failure limiter and the sender rule (no I/O)."""

from __future__ import annotations

import base64

import pytest

from meta1py.smtps.auth import (
    AuthFailureLimiter,
    Credentials,
    SaslChallenge,
    SaslError,
    SaslExchange,
)
from meta1py.submission import sender_matches_login


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_plain_initial_response() -> None:
    assert SaslExchange("PLAIN").start(b64(b"\0alice\0pw")) == Credentials("alice", "pw")
    assert SaslExchange("PLAIN").start(b64(b"alice\0alice\0pw")) == Credentials("alice", "pw")


def test_plain_after_empty_challenge() -> None:
    ex = SaslExchange("PLAIN")
    assert ex.start(None) == SaslChallenge("")
    assert ex.respond(b64(b"\0bob\0secret")) == Credentials("bob", "secret")


@pytest.mark.parametrize(
    "line", ["not base64!", b64(b"\0alice"), b64(b"other\0alice\0pw"), b64(b"\0\0pw"), b64(b"\0a\0p\r\n")]
)
def test_plain_malformed(line: str) -> None:
    with pytest.raises(SaslError) as info:
        SaslExchange("PLAIN").start(line)
    assert not info.value.cancelled


def test_login_two_steps_and_cancel() -> None:
    ex = SaslExchange("LOGIN")
    assert ex.start(None) == SaslChallenge(b64(b"Username:"))
    assert ex.respond(b64(b"alice")) == SaslChallenge(b64(b"Password:"))
    assert ex.respond(b64(b"pw")) == Credentials("alice", "pw")
    ex = SaslExchange("LOGIN")
    assert ex.start(b64(b"alice")) == SaslChallenge(b64(b"Password:"))
    with pytest.raises(SaslError) as info:
        ex.respond("*")
    assert info.value.cancelled


def test_credentials_repr_hides_password() -> None:
    assert "pw" not in repr(Credentials("alice", "pw"))


def test_failure_limiter_window() -> None:
    lim = AuthFailureLimiter(3, 300)
    for t in (0, 10, 20):
        assert not lim.blocked("192.0.2.1", t)
        lim.record_failure("192.0.2.1", t)
    assert lim.blocked("192.0.2.1", 21)
    assert not lim.blocked("192.0.2.2", 21)
    assert not lim.blocked("192.0.2.1", 301)  # the first failure left the window


def test_sender_rule() -> None:
    local = ("example.com",)
    assert sender_matches_login("alice@example.com", "alice", local)
    assert sender_matches_login("alice@EXAMPLE.com", "alice@example.com", local)
    assert not sender_matches_login("alice@example.org", "alice", local)
    assert not sender_matches_login("bob@example.com", "alice", local)
    assert not sender_matches_login("", "alice", local)
