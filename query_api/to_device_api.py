"""``POST /v1/to-device``: ciphertext relayed to other devices (protocol v1.1 § End-to-end
encryption), through the ``ToDeviceRelay`` service; see ``commands.to_device``."""

from __future__ import annotations

from pydantic import Field
from sanic import Blueprint, HTTPResponse, Request

from events.errors import NotFound
from query_api.bodies import Body, parse_body
from query_api.context import deps_of
from query_api.deps import Dependencies
from query_api.errors import json_response
from query_api.openapi import documented
from query_api.schemas import Relayed
from query_api.services import MAX_TO_DEVICE_PER_CALL, ToDeviceRelay

bp = Blueprint("to_device", url_prefix="/v1")


class ToDeviceMessage(Body):
    user_id: str = Field(min_length=1, max_length=64)
    device_id: str = Field(min_length=1, max_length=64)
    type: str = Field(min_length=1, max_length=64)
    ciphertext: str = Field(min_length=1)  # its bound is checked with its own code (413)


class ToDeviceBody(Body):
    messages: list[ToDeviceMessage] = Field(min_length=1, max_length=MAX_TO_DEVICE_PER_CALL)


def _relay(deps: Dependencies) -> ToDeviceRelay:
    if deps.to_device is None:
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
    relay = _relay(deps_of(request))
    me = request.ctx.principal
    body = parse_body(request, ToDeviceBody)
    sent = await relay.send(
        me.user_id, me.device_id, [(m.user_id, m.device_id, m.type, m.ciphertext) for m in body.messages]
    )
    return json_response({"relayed": sent}, status=202)
