"""``GET /v1/openapi.json``: an OpenAPI 3.1 document of the gateway's HTTP routes, made from the
app's own router and models, never kept by hand.

Each handler says what it takes and answers with ``@documented(...)`` (request bodies are the
handlers' own pydantic ``Body`` models, answers the models of ``query_api.schemas``); the
document walks ``app.router.routes``, so a route exists in it exactly when the app has it.
A route without ``@documented`` makes the document fail to build, and
``tests/unit/test_openapi.py`` fails with it: a new route cannot go undocumented.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sanic import Blueprint, HTTPResponse, Request, Sanic

from query_api.errors import json_response
from query_api.schemas import ErrorAnswer

PATH = "/v1/openapi.json"
REF_TEMPLATE = "#/components/schemas/{model}"
_PARAM = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)(?::[^>]*)?>")
_ERROR_TEXT = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}

# An answer is a model (JSON), None (no body), or a (media type, description) pair.
Answer = type[BaseModel] | tuple[str, str] | None
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    type: str = "string"


@dataclass(frozen=True)
class Operation:
    summary: str
    answers: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    query: tuple[Query, ...] = ()
    errors: tuple[int, ...] = ()
    public: bool = False
    tag: str = "api"
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


# Sanic's static file routes (the web client, query_api.web) have no handler of ours to mark.
STATIC_FILES = Operation(
    summary="the web client (static files: the page at /, its scripts and styles under /web/)",
    answers={200: ("text/html", "the page, or one of its scripts and styles")},
    errors=(404,),
    public=True,
    tag="web client",
)


def documented(
    summary: str,
    answers: Mapping[int, Answer],
    *,
    body: type[BaseModel] | None = None,
    query: tuple[Query, ...] = (),
    errors: tuple[int, ...] = (400, 403, 404, 503),
    public: bool = False,
    tag: str = "api",
    description: str = "",
) -> Callable[[F], F]:
    """Marks a route handler with what the document says of it (put it under ``@bp.get``)."""
    op = Operation(summary, answers, body, query, errors, public, tag, description)

    def mark(handler: F) -> F:
        handler.__openapi__ = op  # type: ignore[attr-defined]
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    # WebSocket routes are registered as a partial around the handler.
    target = handler.args[0] if hasattr(handler, "func") and handler.args else handler
    return getattr(target, "__openapi__", None)


def openapi_path(route_path: str) -> str:
    """``v1/conversations/<conversation_id:str>`` -> ``/v1/conversations/{conversation_id}``."""
    return "/" + _PARAM.sub(r"{\1}", route_path.strip("/")) if route_path.strip("/") else "/"


class Undocumented(RuntimeError):
    pass


def build_document(app: Sanic, *, version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route ``app`` has."""
    operations: dict[str, dict[str, Any]] = {}
    bodies: set[type[BaseModel]] = set()
    answers: set[type[BaseModel]] = {ErrorAnswer}
    missing = []
    found: list[tuple[str, str, Operation]] = []
    for route in app.router.routes:
        op = STATIC_FILES if route.extra.static else operation_of(route.handler)
        path = openapi_path(route.path)
        if op is None:
            missing.append(f"{'/'.join(sorted(route.methods))} {path}")
            continue
        for method in sorted(route.methods):
            found.append((path, method.lower(), op))
        if op.body is not None:
            bodies.add(op.body)
        answers.update(a for a in op.answers.values() if isinstance(a, type))
    if missing:
        raise Undocumented(f"routes without @documented: {', '.join(sorted(missing))}")
    keys, schemas = models_json_schema(
        [*((m, "validation") for m in bodies), *((m, "serialization") for m in answers)],
        ref_template=REF_TEMPLATE,
    )
    # A model both taken and answered would need two schemas; none is, so one ref per model.
    ref: dict[Any, str] = {model: value["$ref"] for (model, _), value in keys.items()}
    for path, method, op in found:
        operations.setdefault(path, {})[method] = _operation(path, method, op, ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tidings HTTP API",
            "version": version,
            "description": "The HTTP half of the Tidings client protocol (docs/protocol.md). "
            "The WebSocket frames are described there.",
        },
        "paths": dict(sorted(operations.items())),
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    }


def _operation(path: str, method: str, op: Operation, ref: Mapping[Any, str]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{([^}]+)}", path)
    ]
    params += [
        {
            "name": q.name,
            "in": "query",
            "required": False,
            "description": q.description,
            "schema": {"type": q.type},
        }
        for q in op.query
    ]
    responses: dict[str, Any] = {}
    for status, answer in sorted(op.answers.items()):
        responses[str(status)] = _response(status, answer, ref)
    error_ref = {"$ref": ref[ErrorAnswer]}
    for status in sorted({*op.errors, *(() if op.public else (401,))}):
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "error"),
            "content": {"application/json": {"schema": error_ref}},
        }
    out: dict[str, Any] = {
        "operationId": f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_') or 'root'}",
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": ref[op.body]}}},
        }
    if op.public:
        out["security"] = []
    return out


def _response(status: int, answer: Answer, ref: Mapping[Any, str]) -> dict[str, Any]:
    if answer is None:
        text = {101: "switching protocols", 204: "no content"}.get(status, "accepted")
        return {"description": text}
    if isinstance(answer, tuple):
        media_type, description = answer
        schema = {"type": "object"} if media_type == "application/json" else {"type": "string"}
        return {"description": description, "content": {media_type: {"schema": schema}}}
    return {
        "description": (answer.__doc__ or answer.__name__).strip().splitlines()[0],
        "content": {"application/json": {"schema": {"$ref": ref[answer]}}},
    }


bp = Blueprint("openapi")


@bp.get(PATH)
@documented(
    "this document (OpenAPI 3.1)",
    {200: ("application/json", "the OpenAPI document")},
    errors=(),
    public=True,
    tag="ops",
)
async def openapi_json(request: Request) -> HTTPResponse:
    document = getattr(request.app.ctx, "openapi", None)
    if document is None:  # built once per process, after every route is registered
        document = request.app.ctx.openapi = build_document(request.app)
    return json_response(document)
