"""Push notifications for this device (``client.push``): where they go, and per-conversation
mutes, over the protocol's ``/v1/devices/{device_id}/push`` and ``/v1/conversations/{cid}/settings``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tidings_client.models import ConversationSettings, PushRegistration

if TYPE_CHECKING:
    from tidings_client.client import TidingsClient


class PushApi:
    """Push registration of this client's device (the token's ``dev``). A new registration
    replaces the old; each takes effect for every message acknowledged after it returns.
    Refusals are typed errors: ``InvalidRequest`` (e.g. a webhook host the server does not
    allow), ``NotFound`` (push not configured on the server), ``Forbidden`` (muting a
    conversation you are not in)."""

    def __init__(self, client: TidingsClient) -> None:
        self._client = client

    def _path(self) -> str:
        return f"/v1/devices/{quote(self._client.device_id, safe='')}/push"

    async def register(self, body: dict[str, Any]) -> PushRegistration:
        """Register a raw body of the protocol (``{"provider": ..., ...}``)."""
        data = await self._client._request("PUT", self._path(), json_body=body)
        return PushRegistration.from_json(data)

    async def register_webhook(self, endpoint: str) -> PushRegistration:
        """Notifications POSTed as JSON to ``endpoint`` (signed ``X-Tidings-Signature``)."""
        return await self.register({"provider": "webhook", "endpoint": endpoint})

    async def register_webpush(self, endpoint: str, p256dh: str, auth: str) -> PushRegistration:
        """A browser's Web Push subscription (its endpoint and ``keys``, base64url)."""
        return await self.register(
            {"provider": "webpush", "endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}
        )

    async def register_fcm(self, token: str) -> PushRegistration:
        """An Android (Firebase Cloud Messaging) registration token."""
        return await self.register({"provider": "fcm", "token": token})

    async def register_apns(self, token: str) -> PushRegistration:
        """An iOS (APNs) device token."""
        return await self.register({"provider": "apns", "token": token})

    async def unregister(self) -> None:
        """No more notifications to this device."""
        await self._client._request("DELETE", self._path())

    async def set_muted(self, conversation_id: str, muted: bool = True) -> ConversationSettings:
        """Mute (or unmute) a conversation's notifications for you (members only)."""
        data = await self._client._request(
            "PUT",
            f"/v1/conversations/{quote(conversation_id, safe=':@')}/settings",
            json_body={"muted": muted},
        )
        return ConversationSettings.from_json(data)

    async def webpush_key(self) -> str:
        """The server's VAPID public key (base64url), a browser's ``applicationServerKey``."""
        data = await self._client._request("GET", "/v1/push/webpush-key")
        return str(data["public_key"])
