"""Push registrations (``/v1/devices/{device_id}/push``) and per-conversation settings
(``/v1/conversations/{cid}/settings``), through the ``PushSettings`` service: see docs/push.md."""

from __future__ import annotations

import base64
from typing import Literal

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from pydantic import Field, StrictBool
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import empty

from events.errors import NotFound
from query_api.bodies import Body, parse_body
from query_api.context import deps_of
from query_api.deps import Dependencies
from query_api.errors import json_response
from query_api.openapi import documented
from query_api.schemas import ConversationSettings, PushRegistration, WebPushKey
from query_api.services import PushSettings

bp = Blueprint("push")


class WebPushKeys(Body):
    p256dh: str = Field(max_length=200)
    auth: str = Field(max_length=100)


class PushBody(Body):
    provider: Literal["webpush", "fcm", "apns", "webhook"]
    endpoint: str | None = Field(default=None, max_length=4096)
    token: str | None = Field(default=None, max_length=4096)
    keys: WebPushKeys | None = None


class SettingsBody(Body):
    muted: StrictBool


def _push(deps: Dependencies) -> PushSettings:
    if deps.push is None:
        raise NotFound("push notifications are not configured on this server")
    return deps.push


@bp.put("/v1/devices/<device_id:str>/push")
@documented(
    "register where this device's offline notifications go (replaces the old one; own device only)",
    {200: PushRegistration},
    body=PushBody,
    errors=(400, 403, 404, 503),
    tag="push",
)
async def register(request: Request, device_id: str) -> HTTPResponse:
    push = _push(deps_of(request))
    principal = request.ctx.principal
    body = parse_body(request, PushBody)
    registered, provider = await push.register(
        principal.user_id,
        principal.device_id,
        device_id,
        body.provider,
        endpoint=body.endpoint,
        token=body.token,
        p256dh=body.keys.p256dh if body.keys else None,
        auth=body.keys.auth if body.keys else None,
    )
    return json_response({"device_id": registered, "provider": provider})


@bp.delete("/v1/devices/<device_id:str>/push")
@documented(
    "no more notifications to this device",
    {204: None},
    errors=(403, 404, 503),
    tag="push",
)
async def unregister(request: Request, device_id: str) -> HTTPResponse:
    principal = request.ctx.principal
    await _push(deps_of(request)).unregister(principal.user_id, principal.device_id, device_id)
    return empty(status=204)


@bp.put("/v1/conversations/<conversation_id:str>/settings")
@documented(
    "mute or unmute a conversation's notifications for the caller (members only)",
    {200: ConversationSettings},
    body=SettingsBody,
    errors=(400, 403, 404, 503),
    tag="push",
)
async def conversation_settings(request: Request, conversation_id: str) -> HTTPResponse:
    push = _push(deps_of(request))
    body = parse_body(request, SettingsBody)
    await push.set_muted(request.ctx.principal.user_id, conversation_id, body.muted)
    return json_response({"conversation_id": conversation_id, "muted": body.muted})


@bp.get("/v1/push/webpush-key")
@documented(
    "the server's VAPID public key, for a browser's Web Push subscription",
    {200: WebPushKey},
    errors=(404,),
    tag="push",
)
async def webpush_key(request: Request) -> HTTPResponse:
    """The VAPID public key a browser passes to ``pushManager.subscribe`` as its
    ``applicationServerKey`` (unpadded base64url of the uncompressed P-256 point)."""
    deps = deps_of(request)
    _push(deps)
    key = getattr(request.app.ctx, "vapid_public_key", None)
    if key is None:
        private = load_pem_private_key(deps.config.vapid_private_pem(), password=None)
        point = private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        key = request.app.ctx.vapid_public_key = base64.urlsafe_b64encode(point).rstrip(b"=").decode()
    return json_response({"public_key": key})
