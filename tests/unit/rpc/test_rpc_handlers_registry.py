"""Handlers: what registration refuses, at run time and under mypy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from meta1py.rpc import Handlers
from meta1py.rpc.messages import RpcErrorReply, RpcPingReply, RpcPingRequest

ROOT = Path(__file__).resolve().parents[3]


async def _ping(req: RpcPingRequest) -> RpcPingReply:
    return RpcPingReply(nonce=req.nonce, pid=0, payload=req.payload, process="t")


async def _note(_msg: RpcErrorReply) -> None:
    return None


def test_a_type_has_one_handler() -> None:
    handlers = Handlers()
    handlers.on(RpcPingRequest).answer(_ping)
    with pytest.raises(TypeError, match="RpcPingRequest already has a handler"):
        handlers.on(RpcPingRequest).answer(_ping)


def test_requests_and_notifications_are_registered_apart() -> None:
    handlers = Handlers()
    with pytest.raises(TypeError, match="RpcPingRequest is a request"):
        handlers.on_notification(RpcPingRequest, _ping)  # type: ignore[arg-type]
    handlers.on_notification(RpcErrorReply, _note)
    with pytest.raises(TypeError, match="RpcErrorReply is not a request"):
        handlers.on(RpcErrorReply).answer(_note)  # type: ignore[misc, arg-type]
    assert handlers.kinds == frozenset({RpcErrorReply})


def test_mypy_refuses_a_handler_that_does_not_fit_its_request(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    snippet = tmp_path / "registrations.py"
    snippet.write_text(
        textwrap.dedent(
            """\
            from meta1py.rpc.handlers import Handlers
            from meta1py.rpc.messages import (
                RpcErrorReply,
                RpcPingReply,
                RpcPingRequest,
                SmarRouteReply,
                SmarRouteRequest,
            )
            from meta1py.rpc.schema import RpcMessage


            async def right(req: RpcPingRequest) -> RpcPingReply:
                return RpcPingReply(nonce=req.nonce, pid=0, payload="", process="")


            async def any_message(_msg: RpcMessage) -> RpcPingReply:
                return RpcPingReply(nonce=0, pid=0, payload="", process="")


            async def wrong_reply(_req: RpcPingRequest) -> SmarRouteReply:
                return SmarRouteReply(routes=())


            async def wrong_request(_req: SmarRouteRequest) -> RpcPingReply:
                return RpcPingReply(nonce=0, pid=0, payload="", process="")


            h = Handlers()
            h.on(RpcPingRequest).answer(right)  # accepted
            h.on(RpcPingRequest).answer(any_message)  # accepted: it takes any message
            h.on(RpcPingRequest).answer(wrong_reply)  # refused: not the declared reply
            h.on(RpcPingRequest).answer(wrong_request)  # refused: takes another request
            h.on(RpcErrorReply).answer(right)  # refused: not a request
            """
        )
    )
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(snippet),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    flagged = {
        int(line.split(":")[1])
        for line in result.stdout.splitlines()
        if line.split(":")[0].endswith(snippet.name) and ": error:" in line
    }
    lines = snippet.read_text().splitlines()
    refused = {n for n, line in enumerate(lines, 1) if "# refused" in line}
    assert len(refused) == 3
    assert flagged == refused, result.stdout + result.stderr
