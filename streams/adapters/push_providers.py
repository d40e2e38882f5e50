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
import time
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


# A push service takes at least 4,096 bytes of payload (RFC 8030 §7.2); the aes128gcm record
# adds 86 bytes and a padding delimiter, so the JSON stays below this.
WEBPUSH_MAX_PAYLOAD = 3800


def fit(payload: dict[str, Any], limit: int) -> bytes:
    """The payload's JSON, leaving out trailing conversations (then previews) until it fits."""
    body = orjson.dumps(payload)
    trimmed = {**payload, "conversations": list(payload["conversations"])}
    while len(body) > limit and len(trimmed["conversations"]) > 1:
        trimmed["conversations"].pop()
        body = orjson.dumps(trimmed)
    if len(body) > limit:
        trimmed["conversations"] = [{**c, "preview": None} for c in trimmed["conversations"]]
        body = orjson.dumps(trimmed)
    return body


class WebPushProvider:
    """RFC 8030 delivery to the subscription's push service: the payload encrypted for the
    browser's keys (RFC 8291, aes128gcm, by pywebpush/http_ece) and a VAPID token (RFC 8292, by
    py-vapid) signed with the server's key; ``Urgency`` from the priority. The POST itself goes
    through httpx like the webhooks (no redirects, the same timeout)."""

    name = "webpush"

    def __init__(
        self,
        client: httpx.AsyncClient,
        vapid_private_pem: bytes,
        subject: str,
        hosts: Collection[str],
        *,
        ttl_s: int,
    ) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from py_vapid import Vapid02

        key = load_pem_private_key(vapid_private_pem, password=None)
        self._vapid = Vapid02(key)
        self._client = client
        self._subject = subject
        self._hosts = {h.lower() for h in hosts}
        self._ttl_s = ttl_s

    async def send(self, registration: Registration, payload: dict[str, Any]) -> Delivery:
        from pywebpush import WebPusher

        url = registration.endpoint or ""
        parts = urlsplit(url)
        if (parts.hostname or "").lower() not in self._hosts:
            return Delivery("failed", f"host {parts.hostname!r} is no longer allowed")
        subscription = {"endpoint": url, "keys": {"p256dh": registration.p256dh, "auth": registration.auth}}
        body = WebPusher(subscription).encode(fit(payload, WEBPUSH_MAX_PAYLOAD), "aes128gcm")["body"]
        claims = {
            "sub": self._subject,
            "aud": f"{parts.scheme}://{parts.netloc}",
            "exp": int(time.time()) + 12 * 3600,
        }
        headers = {
            **self._vapid.sign(claims),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self._ttl_s),
            "Urgency": "high" if payload.get("priority") == "high" else "normal",
        }
        return await post(self._client, url, body, headers)
