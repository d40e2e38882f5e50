"""The web client: static files served at ``/`` (the page) and ``/web/`` (its scripts and
styles), with a strict Content-Security-Policy, and the development login.

The client is plain JavaScript modules and CSS in ``query_api/web/``: no build step. It talks
to the same HTTP and WebSocket API as any other client (docs/web.md).

``POST /v1/dev/token`` hands out a token for any user id. It exists only when
``TIDINGS_DEV_LOGIN`` is true (``tidings up`` turns it on for local development); otherwise the
route is not registered at all and the path is 404 ``not_found``, like any unknown path.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field
from sanic import HTTPResponse, Request, Sanic

from query_api.auth import issue_token
from query_api.bodies import Body, parse_body
from query_api.context import deps_of
from query_api.errors import json_response
from query_api.openapi import documented
from query_api.schemas import DevToken

WEB_DIR = Path(__file__).resolve().parent / "web"
PREFIX = "/web/"
DEV_TOKEN_PATH = "/v1/dev/token"
DEV_TOKEN_TTL_S = 12 * 3600
ID_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"


# Scripts, styles and connections from this origin only: no inline script or style, no eval,
# no other origin (a WebSocket to this origin is 'self' to Chromium and Firefox). The one other
# origin is the media object store's, for `connect-src` only: the page fetches media through
# the gateway, which answers with a 302 to a presigned URL there (the bytes then become a
# `blob:` image), and a large upload PUTs to a presigned URL there.
def content_security_policy(media_origin: str | None = None) -> str:
    connect = "connect-src 'self'" + (f" {media_origin}" if media_origin else "")
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            connect,
            "manifest-src 'self'",
            "worker-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def media_origin(endpoint: str | None) -> str | None:
    """The scheme, host and port of ``endpoint``, the object store's public address (where
    presigned media URLs point)."""
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


CSP = content_security_policy()
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def is_public(path: str) -> bool:
    """Paths the authentication middleware lets through: the client's files and its login."""
    return path == "/" or path.startswith(PREFIX) or path == DEV_TOKEN_PATH


class DevLogin(Body):
    user_id: str = Field(pattern=ID_PATTERN)
    device_id: str = Field(default="web", pattern=ID_PATTERN)


@documented(
    "a development token for any user (only when TIDINGS_DEV_LOGIN is on; 404 otherwise)",
    {200: DevToken},
    body=DevLogin,
    errors=(400,),
    public=True,
    tag="web client",
)
async def dev_token(request: Request) -> HTTPResponse:
    body = parse_body(request, DevLogin)
    now = time.time()
    token = issue_token(
        deps_of(request).secret, body.user_id, device_id=body.device_id, ttl_s=DEV_TOKEN_TTL_S, now=now
    )
    expires = (int(now) + DEV_TOKEN_TTL_S) * 1000
    return json_response(
        {"token": token, "user_id": body.user_id, "device_id": body.device_id, "expires_ts": expires}
    )


def install(app: Sanic, *, dev_login: bool, media_endpoint: str | None) -> None:
    app.static("/", WEB_DIR / "index.html", name="web_index")
    app.static(PREFIX, WEB_DIR, name="web_files")
    if dev_login:
        app.add_route(dev_token, DEV_TOKEN_PATH, methods=["POST"], name="dev_token")

    headers = {
        **SECURITY_HEADERS,
        "Content-Security-Policy": content_security_policy(media_origin(media_endpoint)),
    }

    @app.on_response
    async def security_headers(request: Request, response: HTTPResponse) -> None:
        if request.path == "/" or request.path.startswith(PREFIX):
            response.headers.update(headers)
