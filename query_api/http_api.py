"""HTTP resources under ``/v1``: conversations and their messages."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sanic import Blueprint, HTTPResponse, Request

from commands import SendMessage, send_message
from commands.model import conversation_members
from events import MessageKind, direct_conversation_id, is_valid_user_id
from events.errors import Forbidden, Invalid
from projections.history import history_page
from query_api.deps import Dependencies
from query_api.errors import json_response

bp = Blueprint("conversations", url_prefix="/v1/conversations")

MAX_PAGE = 100
DEFAULT_PAGE = 50


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


_M = TypeVar("_M", bound=_Body)


class CreateConversation(_Body):
    kind: str
    members: list[str] = Field(default_factory=list, max_length=200_000)
    title: str | None = Field(default=None, max_length=200)


class PostMessage(_Body):
    client_msg_id: str = Field(min_length=1, max_length=64)
    kind: MessageKind = "text"
    body: str = ""
    media_id: str | None = Field(default=None, max_length=128)


def _body(request: Request, model: type[_M]) -> _M:
    try:
        data = orjson.loads(request.body or b"null")
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Invalid("body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Invalid(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc


def _members_for(user_id: str, conversation_id: str) -> tuple[str, ...]:
    members = conversation_members(conversation_id)
    if user_id not in members:
        raise Forbidden("not a member of this conversation")
    return members


async def _conversation(deps: Dependencies, conversation_id: str, members: tuple[str, ...]) -> dict[str, Any]:
    newest, _ = await history_page(
        conversation_id, before=None, after=None, limit=1, hot=deps.hot, warm=deps.warm
    )
    last = newest[-1] if newest else None
    return {
        "conversation_id": conversation_id,
        "kind": "direct",
        "title": None,
        "member_count": len(set(members)),
        "members": sorted(set(members), key=str.encode),
        "last_message": None
        if last is None
        else {
            "message_id": last["message_id"],
            "sender_id": last["sender_id"],
            "preview": (last["body"] or "")[:100],
            "ts": last["ts"],
        },
        "unread_count": 0,
        "last_activity_ts": last["ts"] if last else None,
    }


@bp.post("")
async def create(request: Request) -> HTTPResponse:
    deps: Dependencies = request.app.ctx.deps
    me = request.ctx.principal.user_id
    body = _body(request, CreateConversation)
    if body.kind != "direct":
        raise Invalid(f"conversation kind {body.kind!r} is not supported by this server yet")
    if (
        len(body.members) != 1
        or not isinstance(body.members[0], str)
        or not is_valid_user_id(body.members[0])
    ):
        raise Invalid("a direct conversation names exactly one other user id in members")
    cid = direct_conversation_id(me, body.members[0])
    return json_response({"conversation": await _conversation(deps, cid, conversation_members(cid))})


@bp.get("/<conversation_id:str>")
async def show(request: Request, conversation_id: str) -> HTTPResponse:
    deps: Dependencies = request.app.ctx.deps
    members = _members_for(request.ctx.principal.user_id, conversation_id)
    return json_response({"conversation": await _conversation(deps, conversation_id, members)})


@bp.post("/<conversation_id:str>/messages")
async def post_message(request: Request, conversation_id: str) -> HTTPResponse:
    deps: Dependencies = request.app.ctx.deps
    principal = request.ctx.principal
    body = _body(request, PostMessage)
    result = await send_message(
        SendMessage(
            sender_id=principal.user_id,
            device_id=principal.device_id,
            conversation_id=conversation_id,
            client_msg_id=body.client_msg_id,
            kind=body.kind,
            body=body.body,
            media_id=body.media_id,
        ),
        log=deps.log,
        idempotency=deps.idempotency,
        ids=deps.ids,
        limits=deps.limits,
    )
    return json_response(
        {"message_id": str(result.message_id), "conversation_id": result.conversation_id, "ts": result.ts},
        status=202,
    )


@bp.get("/<conversation_id:str>/messages")
async def list_messages(request: Request, conversation_id: str) -> HTTPResponse:
    deps: Dependencies = request.app.ctx.deps
    _members_for(request.ctx.principal.user_id, conversation_id)
    before = _message_id_arg(request, "before")
    after = _message_id_arg(request, "after")
    if before is not None and after is not None:
        raise Invalid("give before or after, not both")
    limit = _int_arg(request, "limit", DEFAULT_PAGE)
    limit = max(1, min(limit, MAX_PAGE))
    messages, has_more = await history_page(
        conversation_id, before=before, after=after, limit=limit, hot=deps.hot, warm=deps.warm
    )
    return json_response({"messages": messages, "has_more": has_more})


def _int_arg(request: Request, name: str, default: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    if not value.lstrip("-").isdigit() or len(value) > 20:
        raise Invalid(f"{name} must be an integer")
    return int(value)


def _message_id_arg(request: Request, name: str) -> int | None:
    value = request.args.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 20 or int(value) >= 2**63:
        raise Invalid(f"{name} must be a message_id (a decimal string)")
    return int(value)
