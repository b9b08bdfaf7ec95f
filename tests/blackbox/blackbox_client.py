"""A client of meta1py in test mode over SMTP and HTTP only (urllib, smtplib): no meta1py here."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

DEADLINE_S = 60.0


class Api:
    """The control API, over urllib."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE_S + 10) as answer:
                status, payload, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            status, payload, kind = err.code, err.read(), err.headers.get("Content-Type", "")
        if kind.startswith("application/json"):
            return status, json.loads(payload)
        return status, payload

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.call(method, path, body)
        assert 200 <= status < 300, (method, path, status, payload)
        return payload

    def wait(self, timeout: float = 30, **filters: str) -> dict[str, Any]:
        query = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in filters.items())
        return self.ok("GET", f"/messages/wait?{query}&timeout={timeout:g}")  # type: ignore[no-any-return]

    def advance(self, seconds: float) -> dict[str, Any]:
        return self.ok("POST", f"/clock/advance?s={seconds:g}")  # type: ignore[no-any-return]

    def script(self, *rules: dict[str, Any]) -> None:
        self.ok("PUT", "/scripts", {"rules": list(rules)})

    def queue(self) -> list[dict[str, Any]]:
        return self.ok("GET", "/queue")["messages"]  # type: ignore[no-any-return]


@dataclass
class Mta:
    smtp_host: str
    smtp_port: int
    api: Api

    def smtp(self, source: str | None = None) -> smtplib.SMTP:
        return smtplib.SMTP(
            self.smtp_host,
            self.smtp_port,
            timeout=DEADLINE_S,
            source_address=(source, 0) if source else None,
        )

    def send(
        self, sender: str, recipients: list[str], subject: str = "hello", body: str = "body\r\n"
    ) -> dict[str, tuple[int, bytes]]:
        message = (
            f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n\r\n{body}".encode()
        )
        with self.smtp() as client:
            return client.sendmail(sender, recipients, message)
