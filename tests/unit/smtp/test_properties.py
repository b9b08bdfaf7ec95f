"""Property tests: chunking invariance, only the protocol error type, bounded memory."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtp_policy import Policy

from meta1py.smtp.client import ClientConnection
from meta1py.smtp.errors import SmtpProtocolError
from meta1py.smtp.events import DataChunk
from meta1py.smtp.extensions import Extensions
from meta1py.smtp.server import ServerConnection

# STARTTLS is left out: what arrives in the same read as STARTTLS is
# discarded on purpose, so chunking does change the outcome there.
EXT = Extensions(
    pipelining=True,
    size=1000,
    eightbitmime=True,
    smtputf8=True,
    chunking=True,
    dsn=True,
    enhancedstatuscodes=True,
    auth=("PLAIN",),
)

TOKENS = [
    b"EHLO c.example\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n",
    b"RCPT TO:<x@mx.test>\r\n",
    b"RCPT TO:<unknown@mx.test> NOTIFY=NEVER\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"AUTH PLAIN\r\n",
    b"VRFY x\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n.\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\x00",
    b"text line\r\n",
    b"\xc3\xa9",
    b"\xff",
    b"QUIT\r\n",
]

streams = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=20)), max_size=40).map(b"".join)


def _run(data: bytes, cuts: list[int]) -> tuple[bytes, list[object]]:
    conn = ServerConnection(
        "mx.test", extensions=EXT, max_message_bytes=1000, max_line_bytes=100, max_bad_commands=30
    )
    policy = Policy(conn)
    out = policy.greet()
    prev = 0
    for cut in [*sorted({c for c in cuts if 0 < c < len(data)}), len(data)]:
        if cut > prev and not policy.closed:
            out += policy.feed(data[prev:cut])
        prev = cut
    if not policy.closed:
        out += policy.feed(b"")
    # DataChunk boundaries follow the reads: merge them before comparing.
    events: list[object] = []
    for ev in policy.events:
        if isinstance(ev, DataChunk) and events and isinstance(events[-1], DataChunk):
            events[-1] = DataChunk(events[-1].data + ev.data)
        else:
            events.append(ev)
    return out, events


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(streams, st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_chunking_invariance(data: bytes, cuts: list[int]) -> None:
    whole = _run(data, [])
    assert _run(data, cuts) == whole


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(streams)
def test_byte_by_byte_invariance(data: bytes) -> None:
    assert _run(data, list(range(len(data)))) == _run(data, [])


reply_tokens = st.sampled_from(
    [
        b"220 ok\r\n",
        b"250-x\r\n",
        b"250 2.0.0 ok\r\n",
        b"354 go\r\n",
        b"421 bye\r\n",
        b"550 5.1.1 no\r\n",
        b"25",
        b"\r\n",
        b"\n",
        b"9",
        b"\xff",
        b"250-" + b"x" * 3000 + b"\r\n",
    ]
)


@settings(max_examples=300)
@given(st.lists(st.one_of(reply_tokens, st.binary(max_size=30)), max_size=30).map(b"".join))
def test_client_raises_only_protocol_error(data: bytes) -> None:
    client = ClientConnection()
    client.ehlo("c")
    client.mail("a@b")
    client.rcpt("c@d")
    client.data()
    try:
        client.receive_data(data)
        for _ in range(100):
            client.next_event()
        client.receive_data(b"")
        client.next_event()
    except SmtpProtocolError:
        pass


def _drain(policy: Policy, piece: bytes, rounds: int) -> int:
    high = 0
    for _ in range(rounds):
        policy.feed(piece)
        high = max(high, policy.conn.pending_input)
        policy.content.clear()  # the adapter writes content to disk
    return high


def test_memory_bounded_in_data() -> None:
    conn = ServerConnection("mx.test", max_message_bytes=1 << 40)
    policy = Policy(conn)
    policy.greet()
    policy.feed(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n")
    assert _drain(policy, b"line of text\r\n" * 300 + b"\r\n.", 2000) <= 4
    assert _drain(policy, b"x" * 65536, 100) <= 4  # one endless line: rejected at the end
    policy.feed(b"\r\n.\r\n")
    assert conn.state.name == "READY"


def test_memory_bounded_in_bdat() -> None:
    conn = ServerConnection("mx.test", extensions=EXT, max_message_bytes=1 << 20)
    policy = Policy(conn)
    policy.greet()
    policy.feed(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@mx.test>\r\nBDAT 1000000000000\r\n")
    assert _drain(policy, b"y\r\n" * 20000, 200) == 0


@settings(max_examples=100)
@given(st.binary(min_size=1, max_size=300))
def test_memory_bounded_for_repeated_garbage(piece: bytes) -> None:
    conn = ServerConnection("mx.test", max_bad_commands=10**9)
    policy = Policy(conn)
    policy.greet()
    for _ in range(50):
        policy.feed(piece)
        assert conn.pending_input <= max(512, len(piece))
