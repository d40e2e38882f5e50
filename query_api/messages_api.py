"""``/v1/conversations/{cid}/messages`` and ``.../receipts``: send, read history, receipts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import empty

from events.errors import Invalid
from projections.history import history_page
from projections.wire import SendFields
from query_api.bodies import Body, int_arg, message_id_arg, parse_body
from query_api.context import deps_of
from query_api.errors import json_response
from query_api.openapi import Query, documented
from query_api.schemas import HistoryPage, ReceiptsPage, SendAccepted

bp = Blueprint("messages", url_prefix="/v1/conversations")

MAX_PAGE = 100
DEFAULT_PAGE = 50
RECEIPTS_PAGE, RECEIPTS_MAX = 500, 1000


class PostMessage(Body, SendFields):
    """The fields of a ``send`` frame but its conversation id, which is in the path."""


@bp.post("/<conversation_id:str>/messages")
@documented(
    "send a message; 202 once it is durably in the log (idempotent by client_msg_id)",
    {202: SendAccepted},
    body=PostMessage,
    errors=(400, 403, 404, 409, 413, 429, 503),
)
async def post_message(request: Request, conversation_id: str) -> HTTPResponse:
    deps = deps_of(request)
    principal = request.ctx.principal
    body = parse_body(request, PostMessage)
    with deps.tracer.span("gateway.send", {"tidings.conversation_id": conversation_id}):
        result = await deps.messaging.send(principal.user_id, principal.device_id, conversation_id, body)
    return json_response(
        {"message_id": str(result.message_id), "conversation_id": result.conversation_id, "ts": result.ts},
        status=202,
    )


@bp.get("/<conversation_id:str>/messages")
@documented(
    "a page of history, ascending by message_id",
    {200: HistoryPage},
    query=(
        Query("before", "the newest `limit` messages older than this message_id"),
        Query("after", "the oldest `limit` messages newer than this message_id"),
        Query("limit", "1..100, default 50", "integer"),
    ),
)
async def list_messages(request: Request, conversation_id: str) -> HTTPResponse:
    deps = deps_of(request)
    await deps.conversations.role(conversation_id, request.ctx.principal.user_id)
    before = message_id_arg(request, "before")
    after = message_id_arg(request, "after")
    if before is not None and after is not None:
        raise Invalid("give before or after, not both")
    limit = int_arg(request, "limit", DEFAULT_PAGE, low=1, high=MAX_PAGE)
    messages, has_more = await history_page(
        conversation_id,
        before=before,
        after=after,
        limit=limit,
        hot=deps.hot,
        warm=deps.warm,
        cold=deps.cold,
    )
    return json_response({"messages": messages, "has_more": has_more})


class ReceiptBody(Body):
    message_id: str = Field(pattern=r"^[0-9]{1,19}$")
    status: Literal["delivered", "read"]


@bp.post("/<conversation_id:str>/receipts")
@documented("move the caller's delivered or read watermark forward", {202: None}, body=ReceiptBody)
async def post_receipt(request: Request, conversation_id: str) -> HTTPResponse:
    deps = deps_of(request)
    principal = request.ctx.principal
    body = parse_body(request, ReceiptBody)
    await deps.messaging.receipt(
        principal.user_id, principal.device_id, conversation_id, body.message_id, body.status
    )
    return empty(status=202)


@bp.get("/<conversation_id:str>/receipts")
@documented(
    "each member's watermarks, by user id",
    {200: ReceiptsPage},
    query=(
        Query("after", "the `next` of the previous page"),
        Query("limit", "1..1000, default 500", "integer"),
    ),
)
async def list_receipts(request: Request, conversation_id: str) -> HTTPResponse:
    """Every member's watermarks that exist, by user id, paged like the member list."""
    deps = deps_of(request)
    await deps.conversations.role(conversation_id, request.ctx.principal.user_id)
    after = request.args.get("after", "")
    limit = int_arg(request, "limit", RECEIPTS_PAGE, low=1, high=RECEIPTS_MAX)
    rows = await deps.receipts.page(conversation_id, after=after, limit=limit + 1)
    listed = [
        {
            "user_id": r.user_id,
            "delivered": str(r.delivered) if r.delivered else None,
            "read": str(r.read) if r.read else None,
        }
        for r in rows[:limit]
    ]
    return json_response({"receipts": listed, "next": listed[-1]["user_id"] if len(rows) > limit else None})
