"""The real-peer harness: each peer receives what smtplib sends and reports it faithfully."""

from __future__ import annotations

import hashlib
import os
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from meta1py_testing.peers import (
    SinkScript,
    dovecot_lmtp,
    recording_sink,
    smtp_sink,
    swaks,
)

BODY = b"Subject: test\r\nFrom: a@example.org\r\n\r\nline one\r\n.leading dot\r\n\r\nend\r\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); Popen.wait() in the harness reaps, so this is a real process.
    return True


# ---------------------------------------------------------------- smtp-sink


def test_smtp_sink_counts_and_dumps(tmp_path: Path) -> None:
    with smtp_sink(dump_dir=tmp_path / "dump") as sink:
        with smtplib.SMTP(sink.address, sink.port, timeout=30) as client:
            client.ehlo("client.test")
            client.sendmail("a@example.org", ["b@example.org", "c@example.org"], BODY)
            client.sendmail("d@example.org", ["e@example.org"], BODY)
        assert sink.wait_for_messages(2) == 2
        # Dump files carry coarse timestamps: find messages by content, not by position.
        first, second = sorted(sink.messages(), key=lambda m: m.mail_from)
        pid = sink.pid
    assert not _alive(pid)
    assert first.helo == "client.test"
    assert first.mail_from == "a@example.org"
    assert first.rcpt_tos == ("b@example.org", "c@example.org")
    assert second.mail_from == "d@example.org"
    assert first.content_crlf == BODY
    assert hashlib.sha256(second.content_crlf).digest() == hashlib.sha256(BODY).digest()


def test_smtp_sink_without_dump_counts(tmp_path: Path) -> None:
    with smtp_sink() as sink:
        with smtplib.SMTP(sink.address, sink.port, timeout=30) as client:
            for _ in range(3):
                client.sendmail("a@x.test", ["b@x.test"], BODY)
        assert sink.wait_for_messages(3) == 3
        with pytest.raises(RuntimeError):
            sink.messages()


def test_smtp_sink_extra_args_reject(tmp_path: Path) -> None:
    with smtp_sink("127.0.0.2", extra_args=["-r", "RCPT"]) as sink:
        with smtplib.SMTP(sink.address, sink.port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                client.sendmail("a@x.test", ["b@x.test"], BODY)
    code, _ = info.value.recipients["b@x.test"]
    assert 400 <= code < 500


# ---------------------------------------------------------------- recording sink


def test_recording_sink_records_everything() -> None:
    with recording_sink() as sink:
        with smtplib.SMTP(sink.address, sink.port, timeout=30) as client:
            client.ehlo("client.test")
            client.sendmail("a@example.org", ["b@example.org"], BODY, mail_options=["BODY=8BITMIME"])
        (msg,) = sink.wait_for_messages(1)
    assert msg.mail_from == "a@example.org"
    assert msg.rcpt_tos == ("b@example.org",)
    assert msg.content == BODY
    assert msg.helo == "client.test"
    assert msg.tls is False
    assert "BODY=8BITMIME" in msg.mail_options
    assert msg.accepted and msg.reply.startswith("250 ")


def test_recording_sink_scripted_failures() -> None:
    script = SinkScript(
        data_temp_failures=1,
        reject_recipients=frozenset({"Gone@Example.org"}),
        temp_reject_recipients=frozenset({"later@example.org"}),
    )
    with recording_sink("127.0.0.3", script=script) as sink:
        with smtplib.SMTP(sink.address, sink.port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPDataError) as data_err:
                client.sendmail("a@x.test", ["b@example.org"], BODY)
            assert data_err.value.smtp_code == 451
            refused = client.sendmail(
                "a@x.test", ["b@example.org", "gone@example.org", "later@example.org"], BODY
            )
        assert refused["gone@example.org"][0] == 550
        assert refused["gone@example.org"][1].startswith(b"5.1.1")
        assert refused["later@example.org"][0] == 450
        (msg,) = sink.wait_for_messages(1)
        assert msg.rcpt_tos == ("b@example.org",)
        assert [t.accepted for t in sink.transactions] == [False, True]


def test_recording_sink_on_data_hook() -> None:
    script = SinkScript(on_data=lambda m: "554 5.7.1 no thanks" if b"spam" in m.content else None)
    with recording_sink(script=script) as sink:
        with smtplib.SMTP(sink.address, sink.port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPDataError):
                client.sendmail("a@x.test", ["b@x.test"], b"Subject: spam\r\n\r\nx\r\n")
            client.sendmail("a@x.test", ["b@x.test"], BODY)
        assert len(sink.wait_for_messages(1)) == 1
        assert len(sink.transactions) == 2


def test_recording_sink_silent() -> None:
    with recording_sink(script=SinkScript(silent=True)) as sink:
        assert sink.port is not None
        with socket.create_connection((sink.address, sink.port), timeout=30) as conn:
            conn.settimeout(0.5)
            with pytest.raises(TimeoutError):
                conn.recv(1)


def test_recording_sink_lmtp_per_recipient(tmp_path: Path) -> None:
    script = SinkScript(lmtp_replies={"full@example.org": "452 4.2.2 mailbox full"})
    with recording_sink(lmtp=True, script=script, unix_path=tmp_path / "lmtp.sock") as sink:
        client = smtplib.LMTP(str(tmp_path / "lmtp.sock"), timeout=30)
        try:
            client.ehlo_or_helo_if_needed()
            client.mail("a@x.test")
            client.rcpt("ok@example.org")
            client.rcpt("full@example.org")
            code, _ = client.data(BODY)
            # smtplib reads only the first per-recipient reply; read the second ourselves.
            second = client.getreply()
        finally:
            client.close()
        assert code == 250
        assert second[0] == 452
        (msg,) = sink.wait_for_messages(1)
        assert msg.rcpt_tos == ("ok@example.org", "full@example.org")
        assert msg.content == BODY


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=sink.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def test_recording_sink_starttls(tmp_path: Path) -> None:
    with recording_sink(starttls_context=_self_signed(tmp_path)) as sink:
        with smtplib.SMTP(sink.address, sink.port, timeout=30) as client:
            client.ehlo("client.test")
            assert client.has_extn("starttls")
            client.starttls(context=ssl._create_unverified_context())
            client.ehlo("client.test")
            client.sendmail("a@x.test", ["b@x.test"], BODY)
        (msg,) = sink.wait_for_messages(1)
    assert msg.tls is True


# ---------------------------------------------------------------- dovecot


def _lmtp_send(client: smtplib.LMTP, sender: str, rcpts: list[str], body: bytes) -> list[tuple[int, bytes]]:
    """One LMTP transaction; returns the per-recipient replies (smtplib reads only the first)."""
    client.ehlo_or_helo_if_needed()
    client.mail(sender)
    for rcpt in rcpts:
        assert client.rcpt(rcpt)[0] == 250
    replies = [client.data(body)]
    replies += [client.getreply() for _ in rcpts[1:]]
    client.docmd("QUIT")
    return replies


def test_dovecot_lmtp_unix_and_tcp(tmp_path: Path) -> None:
    with dovecot_lmtp(tmp_path) as dv:
        unix = smtplib.LMTP(str(dv.socket_path), timeout=30)
        try:
            assert unix.sendmail("a@x.test", ["bob@example.org"], BODY) == {}
        finally:
            unix.quit()
        tcp = smtplib.LMTP(dv.address, dv.port, timeout=30)
        try:
            replies = _lmtp_send(tcp, "a@x.test", ["bob@example.org", "al@example.net"], BODY)
        finally:
            tcp.close()
        assert [code for code, _ in replies] == [250, 250]
        bob = dv.wait_for_messages("bob@example.org", 2)
        (al,) = dv.wait_for_messages("al@example.net", 1)
        assert dv.maildir("bob@example.org") == dv.mail_root / "example.org" / "bob"
        pid = dv.pid
    assert not _alive(pid)
    lf_body = BODY.replace(b"\r\n", b"\n")
    for delivered in [*bob, al]:
        # Dovecot prepends its own trace headers; the message follows unchanged.
        assert delivered.endswith(lf_body)
        assert b"Return-Path: <a@x.test>" in delivered


# ---------------------------------------------------------------- swaks


def test_swaks_to_recording_sink() -> None:
    with recording_sink() as sink:
        res = swaks(
            "--server", f"{sink.address}:{sink.port}", "--from", "a@x.test",
            "--to", "b@x.test", "--ehlo", "swaks.test", "--header", "Subject: via swaks",
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        (msg,) = sink.wait_for_messages(1)
    assert msg.helo == "swaks.test"
    assert b"Subject: via swaks" in msg.content
