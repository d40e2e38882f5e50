"""FCM (HTTP v1) and APNs (HTTP/2, token auth) delivery, each with a configurable base
address so tests run them against local fakes that check the requests as the providers
document them.

- FCM: ``POST {base}/v1/projects/{project}/messages:send`` with an OAuth 2.0 access token of a
  service account (google-auth makes and refreshes it); the notification is a data message
  (``data.tidings`` = the payload's JSON), ``android.priority`` ``HIGH``/``NORMAL`` and
  ``android.collapse_key``. 404 (``UNREGISTERED``) ends the registration.
- APNs: ``POST {base}/3/device/{token}`` over HTTP/2 with ``authorization: bearer <ES256 JWT>``
  (``iss`` team id, ``kid`` key id, renewed every 50 minutes; PyJWT signs it),
  ``apns-topic``, ``apns-push-type: alert``, ``apns-priority`` ``10``/``5``, ``apns-collapse-id``
  and ``apns-expiration``. 410 (``Unregistered``) ends the registration.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx
import jwt
import orjson

from projections.push import Registration
from streams.adapters.push_providers import Delivery, outcome_of_status, post

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
APNS_TOKEN_LIFETIME_S = 50 * 60  # Apple refuses tokens older than an hour, and renewals within 20 min


def collapse_id(payload: dict[str, Any]) -> str:
    """One per conversation: a newer notification about it replaces an undelivered older one
    (the badge and the counts are newer too). 40 hex characters (APNs allows 64 bytes)."""
    conversations = payload.get("conversations") or [{}]
    return hashlib.sha1(str(conversations[0].get("conversation_id", "")).encode()).hexdigest()


def _title(payload: dict[str, Any]) -> str:
    conversations = payload.get("conversations") or []
    count = sum(int(c.get("count", 0)) for c in conversations)
    return f"{count} new message" + ("" if count == 1 else "s")


class FcmProvider:
    name = "fcm"

    def __init__(
        self, client: httpx.AsyncClient, service_account: dict[str, Any], *, project_id: str, base_url: str
    ) -> None:
        from google.oauth2 import service_account as sa

        self._client = client
        self._credentials = sa.Credentials.from_service_account_info(service_account, scopes=[FCM_SCOPE])
        self._url = f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send"
        self._lock = asyncio.Lock()

    async def _token(self) -> str:
        async with self._lock:
            if not self._credentials.valid:
                import google.auth.transport.requests

                request = google.auth.transport.requests.Request()
                # google-auth refreshes over requests (blocking): off the loop.
                await asyncio.get_running_loop().run_in_executor(None, self._credentials.refresh, request)
            return str(self._credentials.token)

    def message(self, registration: Registration, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "message": {
                "token": registration.token,
                "data": {"tidings": orjson.dumps(payload).decode()},
                "android": {
                    "priority": "HIGH" if payload.get("priority") == "high" else "NORMAL",
                    "collapse_key": collapse_id(payload),
                },
            }
        }

    async def send(self, registration: Registration, payload: dict[str, Any]) -> Delivery:
        try:
            token = await self._token()
        except Exception as exc:  # noqa: BLE001 - google-auth raises its own and requests' errors
            return Delivery("retry", f"no FCM access token: {exc!r}")
        body = orjson.dumps(self.message(registration, payload))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; UTF-8"}
        delivery = await post(self._client, self._url, body, headers)
        if delivery.detail == "HTTP 401":
            self._credentials.token = None  # refused: a fresh one next time
            return Delivery("retry", delivery.detail)
        return delivery


class ApnsProvider:
    name = "apns"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        key_pem: bytes,
        key_id: str,
        team_id: str,
        topic: str,
        base_url: str,
        expiration_s: int,
    ) -> None:
        self._client = client
        self._key = key_pem
        self._key_id = key_id
        self._team_id = team_id
        self._topic = topic
        self._base = base_url.rstrip("/")
        self._expiration_s = expiration_s
        self._jwt: tuple[float, str] | None = None

    def _bearer(self) -> str:
        now = time.time()
        if self._jwt is None or now - self._jwt[0] > APNS_TOKEN_LIFETIME_S:
            token = jwt.encode(
                {"iss": self._team_id, "iat": int(now)},
                self._key,
                algorithm="ES256",
                headers={"kid": self._key_id},
            )
            self._jwt = (now, token)
        return self._jwt[1]

    def request(
        self, registration: Registration, payload: dict[str, Any]
    ) -> tuple[str, dict[str, str], bytes]:
        high = payload.get("priority") == "high"
        body = {
            "aps": {
                "alert": {"title": _title(payload)},
                "badge": int(payload.get("badge", 0)),
                "sound": "default",
                "thread-id": (payload.get("conversations") or [{}])[0].get("conversation_id", ""),
            },
            "tidings": payload,
        }
        headers = {
            "authorization": f"bearer {self._bearer()}",
            "apns-topic": self._topic,
            "apns-push-type": "alert",
            "apns-priority": "10" if high else "5",
            "apns-collapse-id": collapse_id(payload),
            "apns-expiration": str(int(time.time()) + self._expiration_s),
            "apns-id": _uuid(str(payload.get("notification_id", ""))),
            "content-type": "application/json",
        }
        return f"{self._base}/3/device/{registration.token}", headers, orjson.dumps(body)

    async def send(self, registration: Registration, payload: dict[str, Any]) -> Delivery:
        url, headers, body = self.request(registration, payload)
        delivery = await post(self._client, url, body, headers)
        if delivery.detail == "HTTP 403":
            self._jwt = None  # ExpiredProviderToken and the like: a fresh token next time
            return Delivery("retry", delivery.detail)
        return delivery


def _uuid(hex32: str) -> str:
    """``apns-id`` is the notification id in canonical UUID form, so retries carry the same."""
    h = (hex32 + "0" * 32)[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def apns_client(base_url: str, timeout_s: float) -> httpx.AsyncClient:
    """HTTP/2 only: over TLS by ALPN (Apple), over plain TCP by prior knowledge (a local fake)."""
    tls = base_url.startswith("https://")
    return httpx.AsyncClient(http1=tls, http2=True, timeout=timeout_s, follow_redirects=False)


__all__ = ["ApnsProvider", "FcmProvider", "apns_client", "collapse_id", "outcome_of_status"]
