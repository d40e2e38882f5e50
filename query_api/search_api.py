"""``GET /v1/search``: the caller's conversations' text messages by words, phrases and
prefixes, newest first (``projections.adapters.search``; the query is parsed by
``projections.search_query``, never by the engine).

The conversations searched are the caller's memberships now, read from the membership read
model on every request. ``next`` is an opaque cursor: the last message id of the page, signed
(HMAC-SHA256 with the auth secret) together with the caller, ``q`` and ``conversation_id``, so it
can neither be forged nor reused for another search.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac

from sanic import Blueprint, HTTPResponse, Request

from events.errors import Invalid, NotFound, Unavailable
from projections.adapters.search import analyze
from projections.search_query import parse
from query_api.bodies import int_arg
from query_api.context import deps_of
from query_api.errors import json_response
from query_api.openapi import Query, documented
from query_api.schemas import SearchPage

bp = Blueprint("search", url_prefix="/v1")

PAGE, PAGE_MAX = 20, 50
_MAX_CURSOR = 200


def _mac(secret: str, user_id: str, q: str, conversation_id: str | None, before: int) -> str:
    text = "\x1f".join((user_id, q, conversation_id or "", str(before)))
    digest = hmac.new(secret.encode(), b"search-cursor\x1f" + text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def make_cursor(secret: str, user_id: str, q: str, conversation_id: str | None, before: int) -> str:
    return f"{before}.{_mac(secret, user_id, q, conversation_id, before)}"


def read_cursor(secret: str, user_id: str, q: str, conversation_id: str | None, cursor: str) -> int:
    """The message id a cursor pages before; ``Invalid`` if it was not made for this search."""
    before, _, mac = cursor.partition(".")
    if len(cursor) > _MAX_CURSOR or not before.isdigit() or len(before) > 20:
        raise Invalid("before is not a cursor of this search")
    expected = _mac(secret, user_id, q, conversation_id, int(before))
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        raise Invalid("before is not a cursor of this search")
    return int(before)


@bp.get("/search")
@documented(
    "the caller's conversations' text messages matching words, \"phrases\" and prefix*, newest first",
    {200: SearchPage},
    query=(
        Query("q", 'words (all must match), "quoted phrases" and prefix*; 1..256 characters'),
        Query("conversation_id", "only this conversation (the caller must be a member)"),
        Query("limit", "results per page, 1..50 (clamped)", "integer"),
        Query("before", "the `next` cursor of the previous page"),
    ),
    errors=(400, 404, 429, 503),
)
async def search(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    me = request.ctx.principal.user_id
    q = request.args.get("q")
    parsed = parse(q, analyze)
    assert q is not None  # parse refuses a missing q
    limit = int_arg(request, "limit", PAGE, low=1, high=PAGE_MAX)
    only = request.args.get("conversation_id")
    cursor = request.args.get("before")
    before = read_cursor(deps.secret, me, q, only, cursor) if cursor is not None else None
    await deps.limiter.check("search", me)
    if deps.search is None:
        raise Unavailable("search is not configured on this gateway")
    # Membership now, from the read model: a member who left finds nothing more there.
    mine = await deps.sync.conversation_ids(me)
    if only is not None:
        if only not in mine:
            raise NotFound("no such conversation")
        mine = {only}
    if not mine:
        return json_response({"results": [], "next": None})
    shards = deps.search
    loop = asyncio.get_running_loop()
    try:
        hits = await loop.run_in_executor(
            None, lambda: shards.search(parsed, mine, before=before, limit=limit + 1)
        )
    except (OSError, ValueError) as exc:
        # The engine's own text never reaches the client.
        raise Unavailable("search is unavailable") from exc
    page = hits[:limit]
    more = len(hits) > limit
    return json_response(
        {
            "results": [{"message": hit.message, "highlights": hit.highlights} for hit in page],
            "next": make_cursor(deps.secret, me, q, only, page[-1].message_id) if more else None,
        }
    )
