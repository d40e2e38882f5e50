"""The gateway app's typed context: what each worker process keeps on ``app.ctx``, and the one
accessor handlers use to reach their dependencies."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from sanic import Request

from query_api.deps import Dependencies


class GatewayContext(SimpleNamespace):
    """``app.ctx`` of the gateway (``Sanic(name, ctx=GatewayContext())``)."""

    deps: Dependencies  # set in before_server_start
    draining: bool = False
    listener: asyncio.Task[None]  # the pub/sub listener
    sweeper: asyncio.Task[None]  # the presence sweep
    vapid_public_key: str | None = None  # computed on the first GET /v1/push/webpush-key
    openapi: dict[str, Any] | None = None  # built on the first GET /v1/openapi.json


def context_of(request: Request) -> GatewayContext:
    ctx = request.app.ctx
    assert isinstance(ctx, GatewayContext), "the app is made by query_api.app.create_app"
    return ctx


def deps_of(request: Request) -> Dependencies:
    """The dependencies of the worker process serving ``request``."""
    return context_of(request).deps
