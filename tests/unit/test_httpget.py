"""meta1py.httpget: the metrics endpoint's request reader, request by request."""

from __future__ import annotations

import pytest

from meta1py.httpget import (
    MAX_HEAD_BYTES,
    Refusal,
    Request,
    error_response,
    head_complete,
    parse_head,
    response,
)

PROMETHEUS = (
    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9125\r\nUser-Agent: Prometheus/2.53.0\r\n"
    b"Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n"
    b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n"
)


@pytest.mark.parametrize(
    ("head", "verdict"),
    [
        (PROMETHEUS, Request(head_only=False)),
        (b"GET /metrics HTTP/1.0\r\n\r\n", Request(head_only=False)),
        (b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n", Request(head_only=False)),
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Request(head_only=True)),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", Refusal(405, allow="GET, HEAD")),
        (b"DELETE / HTTP/1.1\r\n\r\n", Refusal(405, allow="GET, HEAD")),
        (b"GET / HTTP/1.1\r\n\r\n", Refusal(404)),
        (b"GET /metrics/ HTTP/1.1\r\n\r\n", Refusal(404)),
        (b"GET http://x/metrics HTTP/1.1\r\n\r\n", Refusal(404)),
        (b"GET /metrics HTTP/2.0\r\n\r\n", Refusal(505)),
        (b"GET /metrics HTTP/1.1 extra\r\n\r\n", Refusal(400)),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", Refusal(400)),
        (b"GET /metrics SMTP/1.0\r\n\r\n", Refusal(400)),
        (b"G(T /metrics HTTP/1.1\r\n\r\n", Refusal(400)),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", Refusal(400)),
        (b"GET /metrics HTTP/1.1\r\n folded: line\r\n\r\n", Refusal(400)),
        (b"GET /metrics HTTP/1.1\nHost: x\r\n\r\n", Refusal(400)),
        (b"GET /metrics HTTP/1.1\r\nHost: a\rb\r\n\r\n", Refusal(400)),
        (b"\r\n\r\n", Refusal(400)),
    ],
)
def test_requests_get_the_answer_the_rfcs_give(head: bytes, verdict: Request | Refusal) -> None:
    assert head_complete(head)
    assert parse_head(head) == verdict


def test_a_head_over_the_limit_is_431() -> None:
    head = b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * MAX_HEAD_BYTES
    assert not head_complete(head[:MAX_HEAD_BYTES])
    assert parse_head(head[:MAX_HEAD_BYTES]) == Refusal(431)


def test_a_response_closes_the_connection_and_counts_its_body() -> None:
    data = response(200, b"x 1\n", "text/plain; version=0.0.4; charset=utf-8")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Length: 4" in lines and b"Connection: close" in lines
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in lines
    assert body == b"x 1\n"
    # HEAD: the same head (Content-Length of the body it would get), no body.
    assert response(200, b"x 1\n", "text/plain", head_only=True).endswith(
        b"Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )


def test_an_error_response_says_its_status_and_allow() -> None:
    data = error_response(Refusal(405, allow="GET, HEAD"))
    assert data.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert b"\r\nAllow: GET, HEAD\r\n" in data
    assert data.endswith(b"\r\n\r\n405 Method Not Allowed\n")
