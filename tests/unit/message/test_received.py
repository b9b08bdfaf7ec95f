"""The Received: header smtps prepends (meta1py.message.received): exact bytes for each kind of session."""

from __future__ import annotations

import email.utils
from typing import Any

import pytest

from meta1py.message.received import clean, format_date, protocol, received_header, tls_comment_lines
from meta1py.tls.facts import TlsFacts

NOW = 1_796_000_000.25  # some second in 2026
DATE = email.utils.formatdate(NOW, localtime=True)
TLS = TlsFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, None, None, False)
TLS_CERT = TlsFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, "CN=client (x)", "CN=ca", True)


def header(**kw: Any) -> bytes:
    args: dict[str, Any] = {
        "hostname": "mx.example",
        "qid": "0A1B2C3D4E5F",
        "client_address": "192.0.2.1",
        "helo": "client.example",
        "esmtp": True,
        "tls": None,
        "authenticated": None,
        "recipients": ["bob@example.org"],
        "now": NOW,
    }
    args.update(kw)
    return received_header(**args)


def test_plain_esmtp_one_recipient() -> None:
    assert (
        header()
        == (
            "Received: from client.example ([192.0.2.1])\r\n"
            "\tby mx.example (meta1py) with ESMTP id 0A1B2C3D4E5F\r\n"
            f"\tfor <bob@example.org>; {DATE}\r\n"
        ).encode()
    )


def test_helo_without_name_and_several_recipients() -> None:
    # Several recipients: no "for" clause (it would disclose the others); the date on its own line.
    assert (
        header(helo=None, esmtp=False, recipients=["a@x", "b@y"])
        == (
            "Received: from unknown ([192.0.2.1])\r\n"
            "\tby mx.example (meta1py) with SMTP id 0A1B2C3D4E5F;\r\n"
            f"\t{DATE}\r\n"
        ).encode()
    )
    assert header(recipients=[]).endswith(f"id 0A1B2C3D4E5F;\r\n\t{DATE}\r\n".encode())


def test_tls_with_a_client_certificate_and_auth() -> None:
    assert (
        header(tls=TLS_CERT, authenticated="alice")
        == (
            "Received: from client.example ([192.0.2.1])\r\n"
            "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n"
            '\t(Client subject "CN=client \\(x\\)", Issuer "CN=ca" (verified OK))\r\n'
            "\t(Authenticated sender: alice)\r\n"
            "\tby mx.example (meta1py) with ESMTPSA id 0A1B2C3D4E5F\r\n"
            f"\tfor <bob@example.org>; {DATE}\r\n"
        ).encode()
    )


def test_tls_without_a_client_certificate_is_one_comment() -> None:
    assert tls_comment_lines(TLS) == ["(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))"]
    assert b"with ESMTPS id" in header(tls=TLS)


@pytest.mark.parametrize(
    ("esmtp", "tls", "auth", "expected"),
    [
        (False, False, False, "SMTP"),
        (False, True, True, "SMTP"),  # HELO: no extensions, whatever else happened
        (True, False, False, "ESMTP"),
        (True, True, False, "ESMTPS"),
        (True, False, True, "ESMTPA"),
        (True, True, True, "ESMTPSA"),
    ],
)
def test_protocol_types_of_rfc_3848(esmtp: bool, tls: bool, auth: bool, expected: str) -> None:
    assert protocol(esmtp, tls, auth) == expected


def test_peer_text_cannot_fold_or_forge_lines() -> None:
    evil = "x\r\nBcc: victim@example.org (y)"
    got = header(helo=evil, authenticated=evil, recipients=[evil]).decode()
    assert got.count("\r\n") == 4  # four lines: from, auth, by, for
    assert "Bcc: " not in got and "x??Bcc:?victim@example.org?(y)" in got
    assert clean("é" * 300) == "?" * 255


def test_an_empty_authenticated_name_gets_no_comment_but_counts_as_auth() -> None:
    # Kept as smtps always wrote it: the comment needs a name, the protocol type only AUTH.
    got = header(authenticated="")
    assert b"Authenticated sender" not in got and b"with ESMTPA id" in got


def test_the_date_is_formatted_once_per_second() -> None:
    assert format_date(NOW) == DATE
    assert format_date(NOW + 0.5) is format_date(NOW)  # same second: the cached string
    assert format_date(NOW + 1) == email.utils.formatdate(NOW + 1, localtime=True)


def test_the_client_name_from_reverse_dns() -> None:
    # Postfix's layout: "from HELO (name [ip])", "unknown" when the address has no verified name.
    named = header(client_name="mail.example.net").decode()
    assert named.startswith("Received: from client.example (mail.example.net [192.0.2.1])\r\n")
    assert header(client_name="").decode().startswith("Received: from client.example (unknown [192.0.2.1])")
    assert (
        header(client_name="evil\r\nX-Bad: 1")
        .decode()
        .startswith("Received: from client.example (evil??X-Bad:?1 [192.0.2.1])")
    )
