"""``GET /v1/sync``: a device's starting state, then what it missed (see ``projections.sync``)."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, HTTPResponse, Request

from commands.to_device import check_position, pending_for
from projections.history import history_page
from projections.inbox import inbox_page
from projections.sync import sync_since, sync_start
from query_api.bodies import int_arg
from query_api.context import deps_of
from query_api.errors import json_response
from query_api.openapi import Query, documented
from query_api.schemas import SyncPage

bp = Blueprint("sync", url_prefix="/v1")

PAGE, PAGE_MAX = 500, 1000
START_MESSAGES = 20  # newest messages per conversation in the starting state
ALL = 1_000_000
TO_DEVICE_PAGE = 100
# A cursor is the log position, then ``~`` and the position in the device's to-device queue
# once it has been handed any: syncing from it acknowledges what came before.
_TO_DEVICE_MARK = "~"


@bp.get("/sync")
@documented(
    "this device's starting state (no `since`), or what happened since a cursor",
    {200: SyncPage},
    query=(
        Query("since", "the `cursor` of the previous sync"),
        Query("limit", "events per page, 1..1000", "integer"),
    ),
    errors=(400, 503),
)
async def sync(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal.user_id
    limit = int_arg(request, "limit", PAGE, low=1, high=PAGE_MAX)
    since = request.args.get("since")
    position = None
    if since is not None:
        since, marked, after = since.partition(_TO_DEVICE_MARK)
        position = check_position(after) if marked else None
        page = await sync_since(me, since, limit=limit, ctx=deps.sync)
        return await _with_to_device(request, page.body(), position)

    async def inbox(user_id: str) -> list[dict[str, object]]:
        conversations, _ = await inbox_page(
            user_id, before=None, limit=ALL, source=deps.inbox, unread=deps.unread
        )
        return conversations

    async def read_marks(user_id: str) -> dict[str, int]:
        return {r.conversation_id: r.read_up_to or 0 for r in await deps.inbox.inbox_rows(user_id)}

    async def newest(conversation_id: str) -> list[dict[str, object]]:
        messages, _ = await history_page(
            conversation_id, before=None, after=None, limit=START_MESSAGES, hot=deps.hot, warm=deps.warm
        )
        return messages

    page = await sync_start(me, ctx=deps.sync, inbox=inbox, read_marks=read_marks, newest=newest)
    return await _with_to_device(request, page.body(), None)


async def _with_to_device(request: Request, body: dict[str, Any], position: str | None) -> HTTPResponse:
    """The device's waiting to-device messages after ``position`` added to the page, those up
    to it forgotten, and the new position in the cursor."""
    deps = deps_of(request)
    me = request.ctx.principal
    if deps.to_device is not None:
        frames, position, more = await pending_for(
            me.user_id, me.device_id, position, queue=deps.to_device, limit=TO_DEVICE_PAGE
        )
        body["to_device"] = frames
        body["has_more"] = body["has_more"] or more
    if position is not None:
        body["cursor"] += _TO_DEVICE_MARK + position
    return json_response(body)
