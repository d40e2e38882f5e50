"""``GET /v1/sync``: a device's starting state, then what it missed (see ``projections.sync``)."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, HTTPResponse, Request

from projections.history import history_page
from projections.inbox import inbox_page
from projections.sync import sync_since, sync_start
from query_api.bodies import int_arg
from query_api.context import deps_of
from query_api.errors import json_response
from query_api.openapi import Query, documented
from query_api.schemas import SyncPage
from query_api.services import ToDeviceRelay

bp = Blueprint("sync", url_prefix="/v1")

PAGE, PAGE_MAX = 500, 1000
START_MESSAGES = 20  # newest messages per conversation in the starting state
ALL = 1_000_000
TO_DEVICE_PAGE = 100
# A cursor is the log position, then ``~`` and the position in the device's to-device queue
# once it has been handed any: syncing from it acknowledges what came before; then ``!`` and
# the position in the user's device-list notices (projections/adapters/device_lists.py).
_TO_DEVICE_MARK = "~"
_DEVICE_LISTS_MARK = "!"
DEVICE_LISTS_PAGE = 1000


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
        since, lists_marked, lists_after = since.partition(_DEVICE_LISTS_MARK)
        lists_position = ToDeviceRelay.position(lists_after) if lists_marked else None
        since, marked, after = since.partition(_TO_DEVICE_MARK)
        position = ToDeviceRelay.position(after) if marked else None
        page = await sync_since(me, since, limit=limit, ctx=deps.sync)
        return await _with_to_device(request, page.body(), position, lists_position)

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

    # The device-list position first: a change after it is reported by the next sync, and the
    # starting state (fetched after it) already has what came before.
    lists_position = await deps.device_lists.head(me) if deps.device_lists is not None else None
    page = await sync_start(me, ctx=deps.sync, inbox=inbox, read_marks=read_marks, newest=newest)
    return await _with_to_device(request, page.body(), None, lists_position, start=True)


async def _with_to_device(
    request: Request,
    body: dict[str, Any],
    position: str | None,
    lists_position: str | None,
    *,
    start: bool = False,
) -> HTTPResponse:
    """The device's waiting to-device messages after ``position`` added to the page, those up
    to it forgotten, and the new position in the cursor; and the users whose device lists
    changed after ``lists_position`` (none in a starting state)."""
    deps = deps_of(request)
    me = request.ctx.principal
    body["device_lists"] = []
    if deps.device_lists is not None and not start:
        if lists_position is None:  # a cursor from before device lists existed: from now on
            lists_position = await deps.device_lists.head(me.user_id)
        else:
            users, lists_position, more = await deps.device_lists.after(
                me.user_id, lists_position, DEVICE_LISTS_PAGE
            )
            body["device_lists"] = users
            body["has_more"] = body["has_more"] or more
    if deps.to_device is not None:
        frames, position, more = await deps.to_device.pending(
            me.user_id, me.device_id, position, TO_DEVICE_PAGE
        )
        body["to_device"] = frames
        body["has_more"] = body["has_more"] or more
    if position is not None:
        body["cursor"] += _TO_DEVICE_MARK + position
    if lists_position is not None:
        body["cursor"] += _DEVICE_LISTS_MARK + lists_position
    return json_response(body)
