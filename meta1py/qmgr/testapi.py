"""Test mode's control API: routes and handlers, from a parsed request to a response (no sockets).

The contract is docs/testmode.md ("The control API") and docs/testmode.openapi.json; the HTTP
server around it is :mod:`meta1py.qmgr.testserver`. Every answer is JSON except the web page
(``GET /``) and a message as delivered (``GET /messages/{id}/raw``); every error is
``{"error": "..."}`` with a 4xx status (503 while the queue cannot be opened, or when the clock
could not settle).

What the handlers touch:
- captured deliveries: :class:`meta1py.testmode.capture.CaptureStore` in
  ``<queue_directory>/test/messages`` (smtpc writes them);
- the active scripts: ``<queue_directory>/test/scripts.json``, replaced atomically (a temporary
  file renamed into place, mode 0660) so that smtps and smtpc never read half a file;
- qmgr itself, through :class:`Qmgr` (the in-memory queue, the virtual clock, deletions).
"""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from meta1py import clock
from meta1py.contract import TEST_SCRIPTS_NAME
from meta1py.qmgr import testclock
from meta1py.qmgr.webpage import PAGE
from meta1py.testmode import scripts
from meta1py.testmode.capture import CaptureStore

log = logging.getLogger(__name__)

JSON = "application/json"
#: The largest request body taken (413 above it).
MAX_BODY_BYTES = 1024 * 1024
#: ``GET /messages/wait``: the longest ``timeout`` (seconds) and how often the store is read.
MAX_WAIT_S = 60.0
WAIT_POLL_S = 0.05
#: ``GET /messages``: the default and the largest ``limit``.
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
_KINDS = ("message", "bounce", "delay")
_SCRIPT_MODE = 0o660
OPENAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "testmode.openapi.json"


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as the handlers see it (``query``: each name's first value)."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def from_target(cls, method: str, target: str, body: bytes = b"") -> Request:
        """Split a request target (``/messages?to=a%40b``) into path and query."""
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        return cls(method.upper(), unquote(parts.path) or "/", query, body)


@dataclass(frozen=True, slots=True)
class Response:
    """One answer: status, body, content type (and ``Allow`` for 405)."""

    status: int
    body: bytes
    content_type: str = JSON
    allow: tuple[str, ...] = ()

    @classmethod
    def json(cls, obj: object, status: int = 200) -> Response:
        return cls(status, json.dumps(obj).encode() + b"\n")

    @classmethod
    def error(cls, status: int, message: str, allow: tuple[str, ...] = ()) -> Response:
        return cls(status, json.dumps({"error": message}).encode() + b"\n", allow=allow)


class ApiError(Exception):
    """Bad input or a missing thing: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Qmgr(Protocol):
    """What the API needs of qmgr (:class:`meta1py.qmgr.testserver.QmgrControl` in the daemon)."""

    def queue(self) -> list[dict[str, Any]]: ...

    async def advance(self, seconds: float) -> testclock.Advanced: ...

    async def delete_all(self) -> int: ...

    async def reset_clock(self) -> None: ...


Handler = Callable[["ControlApi", Request, dict[str, str]], Awaitable[Response]]
#: Every route: (method, path pattern). ``{id}`` stands for one path segment.
ROUTES: dict[tuple[str, str], str] = {}
_HANDLERS: dict[tuple[str, str], Handler] = {}


def _route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES[(method, pattern)] = handler.__name__
        _HANDLERS[(method, pattern)] = handler
        return handler

    return register


def _match(pattern: str, path: str) -> dict[str, str] | None:
    want = pattern.strip("/").split("/")
    got = path.strip("/").split("/")
    if len(want) != len(got):
        return None
    params: dict[str, str] = {}
    for w, g in zip(want, got, strict=True):
        if w.startswith("{") and w.endswith("}"):
            if not g:
                return None
            params[w[1:-1]] = g
        elif w != g:
            return None
    return params


def resolve(method: str, path: str) -> tuple[Handler, dict[str, str]] | Response:
    """The handler of a request and its path parameters, or the 404/405 answer.

    Literal paths win over patterns (``/messages/wait`` is not a message id).
    """
    candidates = sorted({p for _m, p in ROUTES}, key=lambda p: p.count("{"))
    for pattern in candidates:
        params = _match(pattern, path)
        if params is None:
            continue
        allowed = tuple(sorted(m for m, p in ROUTES if p == pattern))
        lookup = "GET" if method == "HEAD" else method
        handler = _HANDLERS.get((lookup, pattern))
        if handler is None:
            return Response.error(405, f"{method} is not allowed on {pattern}", allow=allowed)
        return handler, params
    return Response.error(404, f"no such route: {path[:200]}")


class ControlApi:
    """The control API of one qmgr in test mode."""

    def __init__(self, test_dir: Path, captures: CaptureStore, qmgr: Qmgr | None) -> None:
        self.test_dir = test_dir
        self.captures = captures
        self.scripts_path = test_dir / TEST_SCRIPTS_NAME
        self.qmgr = qmgr
        # One clock change at a time (advance, reset), in the order they came.
        self.clock_lock = trio.Lock()

    async def handle(self, request: Request) -> Response:
        """Answer one request; bad input is a 4xx answer, never an exception."""
        found = resolve(request.method, request.path)
        if isinstance(found, Response):
            return found
        handler, params = found
        try:
            return await handler(self, request, params)
        except ApiError as exc:
            return Response.error(exc.status, exc.message)

    def _qmgr(self) -> Qmgr:
        if self.qmgr is None:
            raise ApiError(503, "the queue cannot be opened (see qmgr's log)")
        return self.qmgr

    # -- scripts -------------------------------------------------------------------------------

    def read_rules(self) -> tuple[scripts.Rule, ...]:
        try:
            return scripts.loads(self.scripts_path.read_bytes())
        except FileNotFoundError:
            return ()
        except scripts.ScriptError as exc:
            log.warning("%s is not a valid script (%s): taken as no rules", self.scripts_path, exc)
            return ()

    def write_rules(self, rules: tuple[scripts.Rule, ...]) -> None:
        """Replace the active rules atomically (smtps and smtpc re-read the file)."""
        write_script(self.scripts_path, rules)


def write_script(path: Path, rules: tuple[scripts.Rule, ...]) -> None:
    """Write ``rules`` to ``path`` through a temporary file renamed into place (mode 0660)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _SCRIPT_MODE)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(scripts.dumps(rules))
        os.chmod(temp, _SCRIPT_MODE)  # whatever the umask
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _rules_json(rules: tuple[scripts.Rule, ...]) -> Response:
    return Response.json({"rules": [r.to_json() for r in rules]})


def _script_body(request: Request) -> tuple[scripts.Rule, ...]:
    try:
        return scripts.loads(request.body)
    except scripts.ScriptError as exc:
        raise ApiError(400, str(exc)) from None


# -- captures ----------------------------------------------------------------------------------


def message_status(recipients: list[dict[str, Any]]) -> str:
    """``delivered``, ``bounced`` or ``deferred``, from the recipients' results in a capture."""
    states = []
    for r in recipients:
        status = str(r.get("status", "")).lower()
        reply = str(r.get("reply", ""))
        if status in ("delivered", "ok", "sent") or (not status and reply[:1] == "2"):
            states.append("delivered")
        elif status in ("bounced", "perm", "failed", "expired") or reply[:1] == "5":
            states.append("bounced")
        else:
            states.append("deferred")
    if all(s == "delivered" for s in states):
        return "delivered"
    if "bounced" in states:
        return "bounced"
    return "deferred"


def _subject(message: bytes) -> str:
    headers = BytesHeaderParser(policy=email.policy.default).parsebytes(message)
    try:
        return str(headers.get("Subject", ""))
    except (ValueError, IndexError):
        return ""


def summary(record: Mapping[str, Any], message: bytes) -> dict[str, Any]:
    """A capture's summary (docs/testmode.md)."""
    recipients = list(record.get("recipients") or [])
    return {
        "id": record.get("id"),
        "qid": record.get("qid"),
        "time": record.get("time"),
        "from": record.get("mail_from"),
        "to": list(record.get("rcpt_to") or []),
        "subject": _subject(message),
        "kind": record.get("kind", "message"),
        "size": record.get("size", len(message)),
        "destination": record.get("destination"),
        "transport": record.get("transport"),
        "status": message_status(recipients),
    }


def detail(record: Mapping[str, Any], message: bytes) -> dict[str, Any]:
    """A capture in full: the summary, headers, text, MIME parts, envelope, transcript."""
    out = summary(record, message)
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    headers: list[list[str]] = []
    for name, value in parsed.raw_items():
        try:
            headers.append([name, str(value)])
        except (ValueError, IndexError):
            headers.append([name, repr(value)])
    out["headers"] = headers
    out["text"] = _text_body(parsed)
    out["parts"] = [
        {
            "content_type": part.get_content_type(),
            "filename": part.get_filename(),
            "size": len(part.get_payload(decode=True) or b""),
        }
        for part in parsed.walk()
        if not part.is_multipart()
    ]
    out["envelope"] = {"mail_from": record.get("mail_from"), "rcpt_to": list(record.get("rcpt_to") or [])}
    out["recipients"] = list(record.get("recipients") or [])
    out["transcript"] = [list(t) for t in record.get("transcript") or []]
    return out


def _text_body(parsed: email.message.Message) -> str:
    if not isinstance(parsed, email.message.EmailMessage):
        return ""
    try:
        body = parsed.get_body(preferencelist=("plain", "html"))
        if body is None:
            return ""
        content = body.get_content()
    except (KeyError, LookupError, ValueError, AssertionError):
        payload = parsed.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


@dataclass(frozen=True, slots=True)
class _Filter:
    to: str | None = None
    sender: str | None = None
    subject: str | None = None
    kind: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> _Filter:
        kind = query.get("kind")
        if kind is not None and kind not in _KINDS:
            raise ApiError(400, f"kind must be one of {', '.join(_KINDS)}")
        return cls(
            to=query["to"].lower() if "to" in query else None,
            sender=query["from"].lower() if "from" in query else None,
            subject=query["subject"].lower() if "subject" in query else None,
            kind=kind,
        )

    def matches(self, record: Mapping[str, Any], message: bytes) -> bool:
        if self.kind is not None and record.get("kind", "message") != self.kind:
            return False
        if self.sender is not None and str(record.get("mail_from", "")).lower() != self.sender:
            return False
        if self.to is not None and self.to not in (str(a).lower() for a in record.get("rcpt_to") or []):
            return False
        return self.subject is None or self.subject in _subject(message).lower()


def _number(query: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, not {raw[:40]!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}")
    return value


def _matching(api: ControlApi, flt: _Filter, newest_first: bool) -> Iterator[tuple[dict[str, Any], bytes]]:
    ids = api.captures.ids()
    for capture_id in reversed(ids) if newest_first else ids:
        record = api.captures.record(capture_id)
        message = api.captures.message(capture_id) if record is not None else None
        if record is None or message is None:
            continue
        if flt.matches(record, message):
            yield record, message


# -- handlers ----------------------------------------------------------------------------------


@_route("GET", "/")
async def web_page(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    return Response(200, PAGE.encode(), "text/html; charset=utf-8")


@_route("GET", "/openapi.json")
async def openapi(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    try:
        return Response(200, OPENAPI_PATH.read_bytes())
    except OSError:
        # docs/ is not installed next to the package (a wheel): the routes alone.
        paths: dict[str, dict[str, Any]] = {}
        for method, pattern in ROUTES:
            paths.setdefault(pattern, {})[method.lower()] = {"responses": {"200": {"description": "OK"}}}
        return Response.json(
            {"openapi": "3.1.0", "info": {"title": "meta1 test mode", "version": "1"}, "paths": paths}
        )


@_route("GET", "/messages")
async def list_messages(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    flt = _Filter.from_query(request.query)
    limit = int(_number(request.query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT))
    found = []
    for record, message in _matching(api, flt, newest_first=True):
        found.append(summary(record, message))
        if len(found) >= limit:
            break
    return Response.json({"messages": found})


@_route("DELETE", "/messages")
async def delete_messages(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    return Response.json({"deleted": api.captures.clear()})


@_route("GET", "/messages/wait")
async def wait_message(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    flt = _Filter.from_query(request.query)
    timeout = _number(request.query, "timeout", 5.0, 0.0, MAX_WAIT_S)
    with trio.move_on_after(timeout):
        while True:
            for record, message in _matching(api, flt, newest_first=False):
                return Response.json(detail(record, message))
            await trio.sleep(WAIT_POLL_S)
    return Response.error(408, "timeout")


@_route("GET", "/messages/{id}")
async def get_message(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    record = api.captures.record(params["id"])
    message = api.captures.message(params["id"]) if record is not None else None
    if record is None or message is None:
        raise ApiError(404, f"no such message: {params['id'][:80]}")
    return Response.json(detail(record, message))


@_route("GET", "/messages/{id}/raw")
async def get_raw(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    message = api.captures.message(params["id"])
    if message is None:
        raise ApiError(404, f"no such message: {params['id'][:80]}")
    return Response(200, message, "message/rfc822")


@_route("GET", "/queue")
async def get_queue(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    return Response.json({"messages": api._qmgr().queue()})


@_route("GET", "/clock")
async def get_clock(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    return Response.json({"now": clock.now(), "offset": clock.offset()})


@_route("POST", "/clock/advance")
async def advance_clock(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    try:
        seconds = testclock.check_advance(request.query.get("s"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    qmgr = api._qmgr()
    async with api.clock_lock:
        try:
            done = await qmgr.advance(seconds)
        except testclock.ClockNotSettledError as exc:
            return Response.error(503, str(exc))
    return Response.json({"now": done.now, "offset": done.offset, "ran": done.ran})


@_route("GET", "/scripts")
async def get_scripts(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    return _rules_json(api.read_rules())


@_route("PUT", "/scripts")
async def put_scripts(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    rules = _script_body(request)
    api.write_rules(rules)
    return _rules_json(rules)


@_route("POST", "/scripts")
async def add_scripts(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    added = _script_body(request)
    rules = api.read_rules() + added
    if len(rules) > scripts.MAX_RULES:
        raise ApiError(400, f"at most {scripts.MAX_RULES} rules")
    api.write_rules(rules)
    return _rules_json(rules)


@_route("DELETE", "/scripts")
async def delete_scripts(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    api.write_rules(())
    return _rules_json(())


@_route("POST", "/reset")
async def reset(api: ControlApi, request: Request, params: dict[str, str]) -> Response:
    qmgr = api._qmgr()
    async with api.clock_lock:
        api.write_rules(())
        await qmgr.delete_all()
        await qmgr.reset_clock()
        api.captures.clear()
    return Response.json({"reset": True})
