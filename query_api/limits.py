"""The WebSocket upgrade's guards: the page's origin, then the user's connection attempts
(the ``connect`` rate limit of ``commands.rate_limits``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from events.errors import Forbidden
from query_api.context import deps_of

WS_PATH = "/v1/ws"


async def guard_upgrade(request: Any, allowed_origins: Sequence[str]) -> None:
    """Before a WebSocket upgrade (a plain HTTP answer on refusal): the page's origin, then
    the user's connection attempts."""
    check_origin(request.headers.get("origin"), allowed_origins)
    await deps_of(request).limiter.check("connect", request.ctx.principal.user_id)


def check_origin(origin: str | None, allowed: Sequence[str]) -> None:
    """A WebSocket upgrade from a browser page whose origin is not allowed: 403 before the
    upgrade. Clients that send no ``Origin`` (apps, servers) are not browsers and pass."""
    if allowed and origin is not None and origin.rstrip("/") not in {o.rstrip("/") for o in allowed}:
        raise Forbidden("origin not allowed")
