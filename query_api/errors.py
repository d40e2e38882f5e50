"""Rendering of every error over HTTP, in one place (JSON bodies; the WebSocket's ``error`` frame
is ``projections.wire.error_frame``)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import raw

from events.errors import TidingsError

log = logging.getLogger(__name__)

_SANIC_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "invalid",
    413: "too_large",
    503: "unavailable",
}


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> HTTPResponse:
    return raw(orjson.dumps(body), status=status, headers=headers, content_type="application/json")


def install(app: Sanic) -> None:
    @app.exception(TidingsError)
    async def _domain(request: Request, exc: TidingsError) -> HTTPResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return raw(
            error_body(exc.code, exc.message),
            status=exc.status,
            headers=headers,
            content_type="application/json",
        )

    @app.exception(SanicException)
    async def _framework(request: Request, exc: SanicException) -> HTTPResponse:
        status = exc.status_code
        code = _SANIC_CODES.get(status, "invalid" if status < 500 else "internal")
        return raw(error_body(code, str(exc) or code), status=status, content_type="application/json")

    @app.exception(Exception)
    async def _unexpected(request: Request, exc: Exception) -> HTTPResponse:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return raw(error_body("internal", "internal error"), status=500, content_type="application/json")
