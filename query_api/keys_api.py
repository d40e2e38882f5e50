"""``/v1/keys``: the key directory of end-to-end encryption (protocol v1.1 § End-to-end
encryption), through the ``Keys`` service: every key is checked (base64, length, Ed25519
signature) in ``commands.keys`` before anything is stored; the token's device is the only one a
caller can change."""

from __future__ import annotations

from pydantic import Field
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import empty

from events import SignedKey, is_valid_user_id
from events.errors import Invalid, NotFound
from query_api.bodies import Body, parse_body
from query_api.context import deps_of
from query_api.deps import Dependencies
from query_api.errors import json_response
from query_api.openapi import documented
from query_api.schemas import ClaimedKeys, KeyCount, KeysPublished, UserKeys
from query_api.services import MAX_CLAIMS_PER_CALL, MAX_KEYS_PER_CALL, Keys

bp = Blueprint("keys", url_prefix="/v1/keys")

# Base64 of 32 bytes is 43 characters, of a 64-byte signature 86: anything much longer is
# refused by the body's model before it is decoded.
_B64 = Field(min_length=1, max_length=128)


class DeviceKeysBody(Body):
    identity_key: str = _B64
    signing_key: str = _B64
    signature: str = _B64


class SignedKeyBody(Body):
    key_id: str = Field(min_length=1, max_length=64)
    key: str = _B64
    signature: str = _B64

    def signed(self) -> SignedKey:
        return SignedKey(key_id=self.key_id, key=self.key, signature=self.signature)


class OneTimeKeysBody(Body):
    keys: list[SignedKeyBody] = Field(default_factory=list, max_length=MAX_KEYS_PER_CALL)
    fallback: SignedKeyBody | None = None


class DeviceRef(Body):
    user_id: str = Field(min_length=1, max_length=64)
    device_id: str = Field(min_length=1, max_length=64)


class ClaimBody(Body):
    devices: list[DeviceRef] = Field(max_length=MAX_CLAIMS_PER_CALL)


def _keys(deps: Dependencies) -> Keys:
    if deps.keys is None:
        raise NotFound("end-to-end encryption is not configured on this server")
    return deps.keys


@bp.put("/device")
@documented(
    "publish the token's device's identity and signing keys (signature checked)",
    {200: KeysPublished},
    body=DeviceKeysBody,
    errors=(400, 409, 503),
)
async def put_device(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal
    body = parse_body(request, DeviceKeysBody)
    await _keys(deps).publish(me.user_id, me.device_id, body.identity_key, body.signing_key, body.signature)
    return json_response({})


@bp.delete("/device")
@documented("delete the token's device's keys (one-time and fallback keys too)", {204: None}, errors=(503,))
async def delete_device(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal
    await _keys(deps).delete(me.user_id, me.device_id)
    return empty(status=204)


@bp.post("/one-time")
@documented(
    "add the token's device's signed one-time keys (<= 100) and fallback key",
    {200: KeyCount},
    body=OneTimeKeysBody,
    errors=(400, 409, 503),
)
async def post_one_time(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal
    body = parse_body(request, OneTimeKeysBody)
    remaining = await _keys(deps).add_one_time(
        me.user_id,
        me.device_id,
        [k.signed() for k in body.keys],
        body.fallback.signed() if body.fallback is not None else None,
    )
    return json_response({"remaining": remaining})


@bp.get("/users/<user_id:str>")
@documented("every device of a user with published keys", {200: UserKeys}, errors=(400, 503))
async def user_keys(request: Request, user_id: str) -> HTTPResponse:
    deps = deps_of(request)
    if not is_valid_user_id(user_id):
        raise Invalid("not a valid user id")
    devices = await _keys(deps).devices(user_id)
    listed = [
        {
            "device_id": d.device_id,
            "identity_key": d.identity_key,
            "signing_key": d.signing_key,
            "signature": d.signature,
        }
        for d in devices
    ]
    return json_response({"user_id": user_id, "devices": listed})


@bp.post("/claim")
@documented(
    "claim one key per device: a one-time key handed out at most once, else the fallback key",
    {200: ClaimedKeys},
    body=ClaimBody,
    errors=(400, 503),
)
async def claim(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal
    body = parse_body(request, ClaimBody)
    claimed = await _keys(deps).claim(
        f"{me.user_id}/{me.device_id}", [(d.user_id, d.device_id) for d in body.devices]
    )
    keys = [
        {
            "user_id": k.user_id,
            "device_id": k.device_id,
            "key_id": k.key_id,
            "key": k.key,
            "signature": k.signature,
            "fallback": k.fallback,
        }
        for k in claimed
    ]
    return json_response({"keys": keys})


@bp.get("/count")
@documented("how many one-time keys of the token's device are unclaimed", {200: KeyCount}, errors=(503,))
async def count(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal
    return json_response({"remaining": await _keys(deps).remaining(me.user_id, me.device_id)})
