"""``/v1/conversations``: the inbox, direct chats, groups and their members."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import empty

from events import (
    GroupCreated,
    MembersAdded,
    Role,
    direct_conversation_id,
    dm_members,
    is_valid_user_id,
)
from events.errors import Conflict, Invalid
from projections.inbox import inbox_page, one_conversation
from projections.wire import group_object
from query_api.bodies import Body, int_arg, parse_body
from query_api.context import deps_of
from query_api.deps import Dependencies
from query_api.errors import json_response
from query_api.openapi import Query, documented
from query_api.schemas import AddedMembers, ConversationAnswer, Inbox, MemberAnswer, MembersPage
from query_api.services import MAX_GROUP_TITLE_CHARS

bp = Blueprint("conversations", url_prefix="/v1/conversations")

INBOX_PAGE, INBOX_MAX = 50, 100
MEMBERS_PAGE, MEMBERS_MAX = 500, 1000
# One membership event carries the users it adds; this keeps it well under Kafka's 1 MB message
# limit (a 200,000-member group is built with several adds).
MAX_USERS_PER_REQUEST = 5000


class CreateConversation(Body):
    kind: Literal["direct", "group"]
    members: list[str] = Field(default_factory=list, max_length=MAX_USERS_PER_REQUEST)
    title: str | None = Field(default=None, max_length=MAX_GROUP_TITLE_CHARS)
    # End-to-end encrypted, for good (a direct conversation: from the first time either side
    # asks). An explicit false for an encrypted conversation is 409: it cannot be turned off.
    encrypted: bool = False


class AddMembersBody(Body):
    user_ids: list[str] = Field(min_length=1, max_length=MAX_USERS_PER_REQUEST)


class RoleBody(Body):
    role: Role


class TitleBody(Body):
    title: str = Field(min_length=1, max_length=MAX_GROUP_TITLE_CHARS)
    # Only ever true: encryption is set at creation and cannot be turned off (false is 409 on
    # an encrypted group, 400 on any other: groups are not encrypted after their creation).
    encrypted: bool | None = None


async def _view(deps: Dependencies, user_id: str, conversation_id: str) -> dict[str, Any]:
    info, _ = await deps.conversations.of_member(conversation_id, user_id)
    obj = await one_conversation(user_id, conversation_id, source=deps.inbox, unread=deps.unread)
    if obj is None:  # a direct chat with no message yet
        obj = {
            "conversation_id": conversation_id,
            "kind": info.kind,
            "title": info.title,
            "member_count": info.member_count,
            "last_message": None,
            "unread_count": 0,
            "last_activity_ts": None,
            "encrypted": await deps.directory.encrypted(conversation_id),
        }
    return obj


@bp.post("")
@documented(
    "create a group (201), or open the direct conversation with one user (200)",
    {200: ConversationAnswer, 201: ConversationAnswer},
    body=CreateConversation,
    errors=(400, 403, 404, 413, 429, 503),
)
async def create(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal.user_id
    body = parse_body(request, CreateConversation)
    if body.kind == "direct":
        if len(body.members) != 1 or not is_valid_user_id(body.members[0]):
            raise Invalid("a direct conversation names exactly one other user id in members")
        cid = direct_conversation_id(me, body.members[0])
        unset = "encrypted" in body.model_fields_set and not body.encrypted
        if unset and await deps.directory.encrypted(cid):
            raise Conflict("this conversation is end-to-end encrypted; that cannot be turned off")
        if await deps.inbox.inbox_row(me, cid) is None:
            # Not in the caller's inbox yet: opening it is a fact (the two now share it).
            await deps.conversations.open_direct(me, cid)
        if body.encrypted:
            await deps.conversations.enable_direct_encryption(me, cid)
        return json_response({"conversation": await _view(deps, me, cid)})
    if body.title is None:
        raise Invalid("title: a group needs a title")
    event = await deps.conversations.create(me, body.title, body.members, encrypted=body.encrypted)
    assert isinstance(event, GroupCreated)
    obj = group_object(event.conversation_id, event.title, event.member_count, event.ts, event.encrypted)
    return json_response({"conversation": obj}, status=201)


@bp.get("")
@documented(
    "the caller's inbox, most recent activity first",
    {200: Inbox},
    query=(
        Query("limit", "1..100, default 50", "integer"),
        Query("before", "the `next` of the previous page"),
    ),
    errors=(400, 503),
)
async def inbox(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    limit = int_arg(request, "limit", INBOX_PAGE, low=1, high=INBOX_MAX)
    conversations, cursor = await inbox_page(
        request.ctx.principal.user_id,
        before=request.args.get("before"),
        limit=limit,
        source=deps.inbox,
        unread=deps.unread,
    )
    return json_response({"conversations": conversations, "next": cursor})


@bp.get("/<conversation_id:str>")
@documented("one conversation, for members", {200: ConversationAnswer})
async def show(request: Request, conversation_id: str) -> HTTPResponse:
    deps = deps_of(request)
    return json_response({"conversation": await _view(deps, request.ctx.principal.user_id, conversation_id)})


@bp.patch("/<conversation_id:str>")
@documented("rename a group (owner or admins)", {200: ConversationAnswer}, body=TitleBody)
async def rename(request: Request, conversation_id: str) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal.user_id
    body = parse_body(request, TitleBody)
    if body.encrypted is not None:
        await deps.conversations.of_member(conversation_id, me)
        on = await deps.directory.encrypted(conversation_id)
        if on and not body.encrypted:
            raise Conflict("this conversation is end-to-end encrypted; that cannot be turned off")
        if not on and body.encrypted:
            raise Invalid("a group is end-to-end encrypted at its creation only")
    await deps.conversations.rename(me, conversation_id, body.title)
    return json_response({"conversation": await _view(deps, me, conversation_id)})


@bp.get("/<conversation_id:str>/members")
@documented(
    "members, by user id",
    {200: MembersPage},
    query=(
        Query("after", "the `next` of the previous page"),
        Query("limit", "1..1000, default 500", "integer"),
    ),
)
async def members(request: Request, conversation_id: str) -> HTTPResponse:
    deps = deps_of(request)
    info, _ = await deps.conversations.of_member(conversation_id, request.ctx.principal.user_id)
    after = request.args.get("after", "")
    limit = int_arg(request, "limit", MEMBERS_PAGE, low=1, high=MEMBERS_MAX)
    rows: list[tuple[str, Role]]
    if info.kind == "direct":
        ids = sorted(set(dm_members(conversation_id) or ()), key=str.encode)
        rows = [(u, "member") for u in ids if u.encode() > after.encode()][:limit]
        more = False
    else:
        rows = await deps.members.members_page(conversation_id, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
    listed = [{"user_id": u, "role": r} for u, r in rows]
    return json_response({"members": listed, "next": listed[-1]["user_id"] if more else None})


@bp.post("/<conversation_id:str>/members")
@documented(
    "add members (owner or admins)",
    {200: AddedMembers},
    body=AddMembersBody,
    errors=(400, 403, 404, 413, 503),
)
async def add_members(request: Request, conversation_id: str) -> HTTPResponse:
    deps = deps_of(request)
    body = parse_body(request, AddMembersBody)
    me = request.ctx.principal.user_id
    event = await deps.conversations.add_members(me, conversation_id, body.user_ids)
    added = (
        [{"user_id": m.user_id, "role": m.role} for m in event.members]
        if isinstance(event, MembersAdded)
        else []
    )
    return json_response({"members": added})


@bp.delete("/<conversation_id:str>/members/<user_id:str>")
@documented(
    "leave (yourself) or remove a member (owner or admins)", {204: None}, errors=(400, 403, 404, 409, 503)
)
async def remove_member(request: Request, conversation_id: str, user_id: str) -> HTTPResponse:
    deps = deps_of(request)
    await deps.conversations.remove_member(request.ctx.principal.user_id, conversation_id, user_id)
    return empty(status=204)


@bp.put("/<conversation_id:str>/members/<user_id:str>")
@documented(
    "change a member's role (owner)", {200: MemberAnswer}, body=RoleBody, errors=(400, 403, 404, 409, 503)
)
async def set_role(request: Request, conversation_id: str, user_id: str) -> HTTPResponse:
    deps = deps_of(request)
    body = parse_body(request, RoleBody)
    await deps.conversations.set_role(request.ctx.principal.user_id, conversation_id, user_id, body.role)
    return json_response({"member": {"user_id": user_id, "role": body.role}})
