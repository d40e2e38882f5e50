"""``GET /v1/ws``: one handler per socket, over the lean WebSocket path (``query_api.lean_ws``).

Each inbound message goes to ``_dispatch`` as soon as it is received: a ``ping`` frame or an
invalid frame is answered on the spot; any other frame returns the coroutine that handles it,
and later frames of the connection wait behind it, so they are handled in the order sent.
Replies and pushes are written through the connection (``query_api.connection``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from sanic import Blueprint, Request

from events.errors import RateLimited, TidingsError, Unavailable
from projections.delivery import typing_pushes
from projections.wire import (
    Frame,
    FrameError,
    PingFrame,
    PresenceFrame,
    ReceiptFrame,
    SendFrame,
    TypingFrame,
    ViewFrame,
    WatchFrame,
    ack_frame,
    error_frame,
    parse_frame,
    pong_frame,
    presence_frame,
)
from query_api.connection import CLOSE_TRY_AGAIN, Connection
from query_api.context import deps_of
from query_api.deps import Dependencies
from query_api.lean_ws import LeanWebsocket
from query_api.metrics import FRAMES_IN, FRAMES_OUT, SEND_SECONDS, SENDS
from query_api.openapi import Query, documented

bp = Blueprint("ws", url_prefix="/v1")

SEND_QUEUE_FRAMES = 1024
MEMBERSHIP_TTL_S = 30.0


@bp.websocket("/ws")
@documented(
    "the WebSocket (RFC 6455 upgrade); its frames are in docs/protocol.md",
    {101: None},
    query=(Query("token", "the token, for browsers, which cannot set headers on a WebSocket"),),
    errors=(403, 429, 503),
    tag="websocket",
)
async def gateway(request: Request, ws: Any) -> None:
    if not isinstance(ws, LeanWebsocket):
        raise TypeError("the gateway serves WebSockets with query_api.lean_ws.LeanWebSocketProtocol")
    deps = deps_of(request)
    principal = request.ctx.principal
    conn = Connection(principal.user_id, principal.device_id, ws, SEND_QUEUE_FRAMES)
    ws.on_writable = conn.flush
    try:
        await deps.hub.register(conn)
    except Unavailable:
        # A socket that would receive nothing must not stay open: the client reconnects.
        ws.close_now(CLOSE_TRY_AGAIN, "deliveries unavailable; reconnect")
        return
    try:
        try:
            await deps.presence.connected(conn)
        except Unavailable:
            # Presence is not delivery: the socket works; its heartbeats are reported by the
            # next sweep that reaches the store.
            conn.reported = -1.0
        ws.serve(partial(_dispatch, deps, conn))
        await ws.closed
    finally:
        await _unregister(deps, conn)


async def _unregister(deps: Dependencies, conn: Connection) -> None:
    """Settle the socket's presence, then stop routing to it, even if the handler is
    cancelled meanwhile: Sanic cancels it when the TCP connection goes, which comes right
    after the close, while presence may still be waiting for Redis; a cancelled unregister
    would leave the socket in the hub (and in the connection count) for good."""
    done = asyncio.ensure_future(_settle(deps, conn))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        # Finish the clean-up first (a second cancellation does not stop it), then let the
        # cancellation through.
        while not done.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(done)
        raise


async def _settle(deps: Dependencies, conn: Connection) -> None:
    # Presence first: with thousands of sockets closing at once the user would read online
    # meanwhile.
    try:
        await deps.presence.disconnected(conn)
    finally:
        await deps.hub.unregister(conn)


def _dispatch(deps: Dependencies, conn: Connection, raw: str | bytes) -> Any:
    """Answer what needs no I/O now; return the coroutine handling any other frame."""
    if conn.too_slow:
        return None  # being closed with 1013
    try:
        ref, frame = parse_frame(raw, deps.config.max_frame_bytes)
    except FrameError as exc:
        FRAMES_IN.labels("invalid").inc()
        _reply(conn, "error", error_frame(exc.ref, exc.error.code, exc.error.message))
        return None
    _frames_in(frame.type).inc()  # type: ignore[attr-defined]
    if isinstance(frame, PingFrame):
        _reply(conn, "pong", pong_frame(ref))
        return None
    conn.active = conn.heard  # the socket just heard this frame
    return _handle(deps, conn, ref, frame)


async def _handle(deps: Dependencies, conn: Connection, ref: str | None, frame: Any) -> None:
    """Run the frame's handler; a refusal (``TidingsError``) becomes an ``error`` frame."""
    if conn.auto_away and not isinstance(frame, PresenceFrame):
        try:
            await deps.presence.resumed(conn)
        except Unavailable:
            conn.reported = -1.0  # presence is not delivery: the next sweep reports the socket
    try:
        await HANDLERS[type(frame)](deps, conn, ref, frame)
    except TidingsError as exc:
        _reply(conn, "error", error_frame(ref, exc.code, exc.message, exc.retry_after))


async def _send(deps: Dependencies, conn: Connection, ref: str | None, frame: SendFrame) -> None:
    started = time.perf_counter()
    try:
        with deps.tracer.span("gateway.send", {"tidings.conversation_id": frame.conversation_id}):
            result = await deps.messaging.send(conn.user_id, conn.device_id, frame.conversation_id, frame)
    except TidingsError as exc:
        SENDS.labels(exc.code).inc()
        raise
    _observe_send(time.perf_counter() - started)
    _SENT_OK.inc()
    ack = ack_frame(ref, result.client_msg_id, result.message_id, result.conversation_id, result.ts)
    _reply(conn, "ack", ack)


async def _receipt(deps: Dependencies, conn: Connection, ref: str | None, frame: ReceiptFrame) -> None:
    """No reply on success (the protocol defines none)."""
    await deps.messaging.receipt(
        conn.user_id, conn.device_id, frame.conversation_id, frame.message_id, frame.status
    )


async def _presence(deps: Dependencies, conn: Connection, ref: str | None, frame: PresenceFrame) -> None:
    """This socket says ``online`` or ``away``; the user's presence follows from all of theirs."""
    await deps.limiter.check("presence", conn.user_id)
    await deps.presence.set_state(conn, frame.state)


async def _watch(deps: Dependencies, conn: Connection, ref: str | None, frame: WatchFrame) -> None:
    """Replace the socket's watch list. Only users who share a conversation with the caller
    can be watched; the others are left out and named in a ``forbidden`` error frame. Each
    newly watched user's current presence is sent at once, then every change."""
    wanted = list(dict.fromkeys(frame.user_ids))
    try:
        await deps.limiter.check("presence", conn.user_id)
        allowed = await deps.contacts.shared_with(conn.user_id, wanted)
        added = await deps.hub.watch(conn, allowed)
        current = await deps.presence_reads.of([u for u in wanted if u in added])
    except TidingsError:
        conn.watch_pending.clear()
        raise
    snapshot = [(v.user_id, v.at, presence_frame(v.user_id, v.state, v.last_seen)) for v in current]
    deps.hub.watch_settled(conn, snapshot)
    FRAMES_OUT.labels("presence").inc(len(current))
    refused = [u for u in wanted if u not in allowed]
    if refused:
        shown = ", ".join(refused[:10]) + (" ..." if len(refused) > 10 else "")
        message = f"{len(refused)} user(s) share no conversation with you and are not watched: {shown}"
        _reply(conn, "error", error_frame(ref, "forbidden", message))


async def _view(deps: Dependencies, conn: Connection, ref: str | None, frame: ViewFrame) -> None:
    """Which conversation this socket shows; only members may view one."""
    if frame.conversation_id is not None:
        await _check_member(deps, conn, frame.conversation_id)
    conn.view = frame.conversation_id


async def _typing(deps: Dependencies, conn: Connection, ref: str | None, frame: TypingFrame) -> None:
    """Forwarded at once to the members viewing the conversation; never stored."""
    if not conn.typing_allowance.take():
        raise RateLimited("too many typing frames", retry_after=1)
    await deps.limiter.check("typing", conn.user_id)
    await _check_member(deps, conn, frame.conversation_id)
    await deps.publish(typing_pushes(frame.conversation_id, conn.user_id, frame.state))


async def _check_member(deps: Dependencies, conn: Connection, conversation_id: str) -> None:
    """Membership, remembered by the socket for a short while (typing is frequent; a removal
    takes effect on the socket within ``MEMBERSHIP_TTL_S``)."""
    now = time.monotonic()
    if conn.member_of.get(conversation_id, 0.0) > now:
        return
    await deps.conversations.role(conversation_id, conn.user_id)
    conn.member_of[conversation_id] = now + MEMBERSHIP_TTL_S


# Each frame type that needs I/O and its handler (``ping`` is answered in ``_dispatch``). A
# handler raises ``TidingsError`` to refuse; ``_handle`` turns it into the ``error`` frame.
Handler = Callable[[Dependencies, Connection, "str | None", Any], Awaitable[None]]
HANDLERS: dict[type[Frame], Handler] = {
    SendFrame: _send,
    ReceiptFrame: _receipt,
    ViewFrame: _view,
    TypingFrame: _typing,
    PresenceFrame: _presence,
    WatchFrame: _watch,
}


def _reply(conn: Connection, kind: str, frame: bytes) -> None:
    _frames_out(kind).inc()
    conn.push(frame)


# Each frame's counters, their label values looked up once (``labels()`` takes a lock and
# builds a tuple per call: a few µs per frame, three times per send).
_frames_in = functools.lru_cache(maxsize=None)(FRAMES_IN.labels)
_frames_out = functools.lru_cache(maxsize=None)(FRAMES_OUT.labels)
_SENT_OK = SENDS.labels("ok")
_observe_send = SEND_SECONDS.observe
