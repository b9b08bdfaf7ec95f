"""showq's exchange and who may list the queue (meta1py.queue.showq): pure, no socket."""

from __future__ import annotations

import pytest

from meta1py.queue.showq import (
    ShowqError,
    decode_answer,
    encode_error,
    encode_listing,
    may_list,
    parse_request,
    showq_socket_path,
)

NAMES = {1000: "alice", 1001: "bob"}


def test_the_socket_is_in_the_public_directory_of_the_queue() -> None:
    assert str(showq_socket_path("/var/spool/meta1")) == "/var/spool/meta1/public/showq"


@pytest.mark.parametrize(("data", "form"), [(b"text", "text"), (b"text\n", "text"), (b"json\r\n", "json")])
def test_the_two_requests(data: bytes, form: str) -> None:
    assert parse_request(data) == form


@pytest.mark.parametrize("data", [b"", b"TEXT", b"text json", b"list", b"\xff\xfe", b"json\n\n"])
def test_anything_else_is_a_usage_error(data: bytes) -> None:
    with pytest.raises(ShowqError) as caught:
        parse_request(data)
    assert caught.value.kind == "usage"


def test_root_and_the_queue_owner_always_may_list() -> None:
    for uid in (0, 4001):
        assert may_list(uid, (), 4001, NAMES.get)


def test_anyone_lets_every_user_list_and_names_let_only_those() -> None:
    assert may_list(1000, ("anyone",), 4001, NAMES.get)
    assert may_list(5555, ("anyone",), 4001, NAMES.get)  # not even an account
    assert may_list(1000, ("alice",), 4001, NAMES.get)
    assert not may_list(1001, ("alice",), 4001, NAMES.get)
    assert not may_list(5555, ("alice",), 4001, NAMES.get)
    assert not may_list(1000, (), 4001, NAMES.get)


def test_a_listing_comes_back_whole() -> None:
    listing = "-Queue ID-  --Size--\n\n-- 0 Kbytes in 1 Request.\n"
    assert decode_answer(encode_listing(listing)) == listing
    assert decode_answer(encode_listing("")) == ""


@pytest.mark.parametrize("kind", ["denied", "tempfail", "usage"])
def test_a_refusal_keeps_its_kind_and_reason_on_one_line(kind: str) -> None:
    data = encode_error(ShowqError(kind, "you may not\nlist the queue"))  # type: ignore[arg-type]
    assert data.count(b"\n") == 1
    with pytest.raises(ShowqError) as caught:
        decode_answer(data)
    assert (caught.value.kind, str(caught.value)) == (kind, "you may not list the queue")


@pytest.mark.parametrize("data", [b"", b"OK", b"ERROR denied", b"ERROR weird reason\n", b"HTTP/1.1 200\n"])
def test_an_answer_cut_short_or_foreign_is_a_temporary_failure(data: bytes) -> None:
    with pytest.raises(ShowqError) as caught:
        decode_answer(data)
    assert caught.value.kind == "tempfail"
