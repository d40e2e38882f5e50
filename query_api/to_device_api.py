"""``POST /v1/to-device``: ciphertext relayed to other devices (protocol v1.1 § End-to-end
encryption); see ``commands.to_device``."""

from __future__ import annotations

import logging

from pydantic import Field
from sanic import Blueprint, HTTPResponse, Request

from commands.to_device import MAX_MESSAGES_PER_CALL, ToDevice, ToDeviceQueue, send_to_devices
from events.errors import NotFound, Unavailable
from projections.delivery import to_device_push
from query_api.bodies import Body, parse_body
from query_api.context import deps_of
from query_api.deps import Dependencies
from query_api.errors import json_response
from query_api.openapi import documented
from query_api.schemas import Relayed

log = logging.getLogger(__name__)
bp = Blueprint("to_device", url_prefix="/v1")


class ToDeviceMessage(Body):
    user_id: str = Field(min_length=1, max_length=64)
    device_id: str = Field(min_length=1, max_length=64)
    type: str = Field(min_length=1, max_length=64)
    ciphertext: str = Field(min_length=1)  # its bound is checked with its own code (413)


class ToDeviceBody(Body):
    messages: list[ToDeviceMessage] = Field(min_length=1, max_length=MAX_MESSAGES_PER_CALL)


def queue_of(deps: Dependencies) -> ToDeviceQueue:
    if deps.to_device is None or deps.keys is None:
        raise NotFound("end-to-end encryption is not configured on this server")
    return deps.to_device


@bp.post("/to-device")
@documented(
    "relay ciphertext to devices (<= 100, each <= 64 KiB): a to_device frame now, and in their sync",
    {202: Relayed},
    body=ToDeviceBody,
    errors=(400, 404, 413, 429, 503),
)
async def to_device(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal
    body = parse_body(request, ToDeviceBody)
    queue = queue_of(deps)
    keys = deps.keys
    assert keys is not None
    await deps.limiter.check("send", me.user_id)

    async def known(user_id: str, device_id: str) -> bool:
        return await keys.device(user_id, device_id) is not None

    async def relay(user_id: str, device_id: str, frame: bytes) -> None:
        try:
            await deps.publish([to_device_push(user_id, device_id, frame)])
        except Unavailable:
            # Queued already: the push is only the fast path, the device gets it in its sync.
            log.warning("to-device push to %s/%s not published; it waits for the sync", user_id, device_id)

    sent = await send_to_devices(
        me.user_id,
        me.device_id,
        [ToDevice(m.user_id, m.device_id, m.type, m.ciphertext) for m in body.messages],
        queue=queue,
        known=known,
        relay=relay,
    )
    return json_response({"relayed": sent}, status=202)
