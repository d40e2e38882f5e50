"""``/v1/users/{uid}/presence``: a user's presence, for those who share a conversation."""

from __future__ import annotations

from sanic import Blueprint, HTTPResponse, Request

from events import is_valid_user_id
from events.errors import Forbidden, Invalid
from projections.wire import presence_object
from query_api.context import deps_of
from query_api.errors import json_response
from query_api.openapi import documented
from query_api.schemas import Presence

bp = Blueprint("users", url_prefix="/v1/users")


@bp.get("/<user_id:str>/presence")
@documented("a user's presence, for users who share a conversation", {200: Presence}, errors=(400, 403, 503))
async def presence(request: Request, user_id: str) -> HTTPResponse:
    deps = deps_of(request)
    if not is_valid_user_id(user_id):
        raise Invalid("not a valid user id")
    me = request.ctx.principal.user_id
    if not await deps.contacts.shared_with(me, [user_id]):
        # The same answer whether or not the user exists: presence is not a user directory.
        raise Forbidden("you share no conversation with this user")
    (view,) = await deps.presence_reads.of([user_id])
    return json_response(presence_object(view.user_id, view.state, view.last_seen))
