"""``/v1/media``: direct and presigned uploads, downloads and thumbnails (protocol v1.1 § Media).

The direct upload is a streaming route: Sanic lifts its body size limit for it, and the body is
read chunk by chunk into ``MediaService.upload``, which counts it against the media limit while it
streams (413 ``too_large`` as soon as it is over) and sends it to the object store in parts.
Downloads are a 302 to a presigned URL of the object store (valid ``media_url_ttl_s``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import Field
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import redirect

from events.errors import Invalid, NotFound
from query_api.bodies import Body, parse_body
from query_api.context import deps_of
from query_api.errors import json_response
from query_api.openapi import documented
from query_api.schemas import MediaObject, UploadStarted
from query_api.services import Media

bp = Blueprint("media")


def _service(request: Request) -> Media:
    deps = deps_of(request)
    if deps.media is None:
        raise NotFound("media is not configured on this server")
    return deps.media


def _media_id(media_id: str) -> str:
    if len(media_id) != 32 or any(c not in "0123456789abcdef" for c in media_id):
        raise NotFound(f"no media {media_id!r}")
    return media_id


async def _body(request: Request) -> AsyncIterator[bytes]:
    assert request.stream is not None
    # Sanic types `stream` as its protocol base; at run time it is the HTTP/1 body reader.
    while (chunk := await request.stream.read()) is not None:  # type: ignore[attr-defined]
        if chunk:
            yield chunk


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise Invalid("bad Content-Length")
    return int(value)


@bp.post("/v1/media", stream=True)
@documented(
    "upload media (raw body with its Content-Type, <= 25 MiB), streamed to the object store",
    {201: MediaObject},
    errors=(400, 413, 429, 503),
    tag="media",
    description="The body is the file itself. An optional `X-Content-SHA256` header is checked.",
)
async def upload(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    service = _service(request)
    user_id = request.ctx.principal.user_id
    await deps.limiter.check("media", user_id)
    media = await service.upload(
        user_id,
        request.headers.get("content-type"),
        _body(request),
        declared_size=_content_length(request),
        declared_sha256=request.headers.get("x-content-sha256"),
    )
    return json_response(media, status=201)


class NewUpload(Body):
    content_type: str = Field(min_length=1, max_length=255)
    size: int
    sha256: str = Field(min_length=64, max_length=64)


@bp.post("/v1/media/uploads")
@documented(
    "start a large upload (<= 2 GiB): a presigned PUT URL of the object store",
    {201: UploadStarted},
    body=NewUpload,
    errors=(400, 413, 429, 503),
    tag="media",
)
async def begin_upload(request: Request) -> HTTPResponse:
    deps = deps_of(request)
    service = _service(request)
    user_id = request.ctx.principal.user_id
    body = parse_body(request, NewUpload)
    await deps.limiter.check("media", user_id)
    answer = await service.begin_upload(user_id, body.content_type, body.size, body.sha256)
    return json_response(answer, status=201)


@bp.post("/v1/media/<media_id:str>/complete")
@documented(
    "finish a large upload once its bytes are PUT: checked against size and sha256",
    {201: MediaObject},
    errors=(404, 409, 503),
    tag="media",
)
async def complete_upload(request: Request, media_id: str) -> HTTPResponse:
    service = _service(request)
    media = await service.complete_upload(request.ctx.principal.user_id, _media_id(media_id))
    return json_response(media, status=201)


@bp.get("/v1/media/<media_id:str>")
@documented(
    "download media: a 302 to a presigned URL (uploader and members of a conversation it was sent to)",
    {302: ("text/plain", "a redirect: Location is a presigned URL of the object store, valid <= 15 min")},
    errors=(403, 404, 503),
    tag="media",
)
async def download(request: Request, media_id: str) -> HTTPResponse:
    service = _service(request)
    url = await service.download_url(request.ctx.principal.user_id, _media_id(media_id))
    return redirect(url, status=302, headers={"Cache-Control": "private, no-store"})


@bp.get("/v1/media/<media_id:str>/thumbnail")
@documented(
    "the thumbnail (WebP, longest side <= 320 px): a 302 to a presigned URL; 404 until it exists",
    {302: ("text/plain", "a redirect: Location is a presigned URL of the object store, valid <= 15 min")},
    errors=(403, 404, 503),
    tag="media",
)
async def thumbnail(request: Request, media_id: str) -> HTTPResponse:
    service = _service(request)
    url = await service.thumbnail_url(request.ctx.principal.user_id, _media_id(media_id))
    return redirect(url, status=302, headers={"Cache-Control": "private, no-store"})
