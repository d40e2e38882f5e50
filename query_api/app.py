"""The gateway's app factory. Each Sanic worker process builds its dependencies in
``before_server_start`` with the ``build`` the shell passes in (``tidings.gateway_root``), and
closes them in ``after_server_stop``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from sanic import HTTPResponse, Request, Sanic

from events.errors import Unavailable
from query_api import (
    errors,
    http_api,
    keys_api,
    media_api,
    messages_api,
    openapi,
    ops,
    push_api,
    search_api,
    sync_api,
    to_device_api,
    users_api,
    web,
    ws,
)
from query_api.auth import bearer_token, verify_token
from query_api.config import GatewayConfig
from query_api.context import GatewayContext
from query_api.deps import Dependencies
from query_api.drain import drain as hand_over
from query_api.limits import WS_PATH, guard_upgrade

Builder = Callable[[], Awaitable[Dependencies]]
_PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", openapi.PATH})


def create_app(
    config: GatewayConfig,
    build: Builder,
    *,
    name: str = "tidings",
    started: Callable[[], None] = lambda: None,
) -> Sanic:
    """The app; ``build`` makes each worker process's dependencies, ``started`` runs once they
    and the background tasks exist (the shell tunes the garbage collector there)."""
    ctx = GatewayContext()
    app = Sanic(name, ctx=ctx)
    app.config.WEBSOCKET_MAX_SIZE = config.max_frame_bytes * 16  # bigger frames: closed (1009)
    app.config.REQUEST_MAX_SIZE = 1024 * 1024
    app.config.KEEP_ALIVE_TIMEOUT = 75
    # No server pings: clients heartbeat (presence), and a socket silent for
    # `idle_close_s` is closed by the presence sweep. Pings to 100,000 idle sockets cost CPU.
    app.config.WEBSOCKET_PING_INTERVAL = None  # type: ignore[assignment]
    errors.install(app)
    app.blueprint(ops.bp)
    app.blueprint(http_api.bp)
    app.blueprint(messages_api.bp)
    app.blueprint(users_api.bp)
    app.blueprint(sync_api.bp)
    app.blueprint(push_api.bp)
    app.blueprint(ws.bp)
    app.blueprint(openapi.bp)
    web.install(app, dev_login=config.dev_login, media_endpoint=config.media_endpoint)
    app.blueprint(media_api.bp)
    app.blueprint(search_api.bp)
    app.blueprint(keys_api.bp)
    app.blueprint(to_device_api.bp)

    @app.on_request
    async def authenticate(request: Request) -> HTTPResponse | None:
        if request.path in _PUBLIC or web.is_public(request.path):
            return None
        # Runs before the WebSocket upgrade, so a bad token is a plain HTTP 401.
        token = bearer_token(request.headers.get("authorization"), request.args.get("token"))
        request.ctx.principal = verify_token(ctx.deps.secret, token)
        if request.path == WS_PATH:
            if ctx.draining:
                raise Unavailable("this gateway is draining; connect to another")
            await guard_upgrade(request, config.allowed_origins)
        return None

    _lifecycle(app, ctx, config, build, started)
    return app


def _lifecycle(
    app: Sanic, ctx: GatewayContext, config: GatewayConfig, build: Builder, started: Callable[[], None]
) -> None:
    """Per worker process: build the dependencies and start the pub/sub listener and the
    presence sweep; on stop, hand the sockets over, then close everything."""

    @app.before_server_start
    async def open_dependencies(app: Sanic) -> None:
        ctx.deps = await build()
        ctx.listener = asyncio.create_task(ctx.deps.hub.listen(), name="pubsub")
        ctx.sweeper = asyncio.create_task(ctx.deps.presence.run(), name="presence")
        started()

    @app.before_server_stop
    async def drain(app: Sanic) -> None:
        ctx.draining = True
        deps = getattr(ctx, "deps", None)
        if deps is not None:
            # /readyz answers 503 from now on; the sockets are handed over once a load
            # balancer has had the time to see it, so their reconnects go to other gateways.
            await asyncio.sleep(config.drain_unready_s)
            await hand_over(deps.presence.connections(), spread_s=config.drain_spread_s)

    @app.after_server_stop
    async def close_dependencies(app: Sanic) -> None:
        ctx.listener.cancel()
        ctx.sweeper.cancel()
        await asyncio.wait([ctx.listener, ctx.sweeper], timeout=5)
        await ctx.deps.presence.drain()
        await ctx.deps.close()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # its connection gauge goes with it
