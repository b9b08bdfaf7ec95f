"""The mcp<->worker contract: descriptor map encoding, names, and that it is the only copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import meta1py
from meta1py import contract


def test_fds_round_trip() -> None:
    fds = {contract.FD_RPC: 3, contract.listen_fd_name(0): 4, contract.listen_fd_name(1): 5, "ready": 9}
    assert contract.parse_fds(contract.format_fds(fds)) == fds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rpc", "malformed META1_FDS entry 'rpc'"),
        ("rpc=x", "malformed META1_FDS entry 'rpc=x'"),
        ("rpc=-1", "malformed META1_FDS entry 'rpc=-1'"),
        ("=3", "malformed META1_FDS entry '=3'"),
        ("rpc=3,rpc=4", "duplicate META1_FDS entry 'rpc'"),
    ],
)
def test_malformed_fds_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        contract.parse_fds(text)


def test_empty_fds() -> None:
    assert contract.parse_fds("  ") == {}


@pytest.mark.parametrize(
    ("name", "index"), [("listen0", 0), ("listen12", 12), ("listen", None), ("listenx", None), ("rpc", None)]
)
def test_listen_fd_index(name: str, index: int | None) -> None:
    assert contract.listen_fd_index(name) == index


def test_rpc_socket_path() -> None:
    assert contract.rpc_socket_path("/run/meta1", "qmgr") == Path("/run/meta1/qmgr.sock")
    assert set(contract.RPC_SERVERS) < set(contract.WORKER_NAMES)
    assert "smtps" not in contract.RPC_SERVERS


def test_the_contract_is_written_down_once() -> None:
    # The worker names and the socket file names appear only in contract.py: everything else
    # imports them. (Docstrings and comments may mention them.)
    package = Path(meta1py.__file__).parent
    names_tuple = re.compile(r"\(\s*\"qmgr\",\s*\"smar\",\s*\"smtpc\"")
    sock_literal = re.compile(r"([\"'])(?:qmgr|smar|smtpc)\.sock\1|f[\"']\{name\}\.sock")
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "contract.py":
            continue
        text = path.read_text()
        for pattern in (names_tuple, sock_literal):
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                offenders.append(f"{path.relative_to(package)}:{line}: {match.group()}")
    assert offenders == []
