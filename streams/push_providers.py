"""Delivery of one notification through its provider: what the receiver answered, as one of
four outcomes the sender acts on.

- ``ok``: delivered.
- ``gone``: the receiver answered 404 or 410: the registration ends.
- ``retry``: a timeout, a refused connection, 5xx, 408 or 429: try again later.
- ``failed``: any other answer (a redirect is never followed): dead-lettered.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from projections.push import Registration

Outcome = Literal["ok", "gone", "retry", "failed"]
SIGNATURE_HEADER = "X-Tidings-Signature"


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    detail: str


class Provider(Protocol):
    name: str

    async def send(self, registration: Registration, payload: dict[str, Any]) -> Delivery: ...


def outcome_of_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return "ok"
    if status in (404, 410):
        return "gone"
    if status >= 500 or status in (408, 429):
        return "retry"
    return "failed"


def sign(secret: bytes, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the body>``, the value of ``X-Tidings-Signature``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


async def post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> Delivery:
    """One POST, no redirects followed, within the client's timeout."""
    try:
        response = await client.post(url, content=body, headers=headers, follow_redirects=False)
    except httpx.TimeoutException as exc:
        return Delivery("retry", f"timeout: {type(exc).__name__}")
    except httpx.TransportError as exc:
        return Delivery("retry", f"transport: {type(exc).__name__}: {exc}")
    return Delivery(outcome_of_status(response.status_code), f"HTTP {response.status_code}")


class WebhookProvider:
    """A JSON POST of the payload, signed with the shared secret, to an allowed host only
    (checked again at delivery: the allow-list may have shrunk since the registration)."""

    name = "webhook"

    def __init__(self, client: httpx.AsyncClient, secret: str, hosts: Collection[str]) -> None:
        self._client = client
        self._secret = secret.encode()
        self._hosts = {h.lower() for h in hosts}

    async def send(self, registration: Registration, payload: dict[str, Any]) -> Delivery:
        url = registration.endpoint or ""
        host = (urlsplit(url).hostname or "").lower()
        if host not in self._hosts:
            return Delivery("failed", f"host {host!r} is no longer allowed")
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body)}
        return await post(self._client, url, body, headers)
