"""``/v1/openapi.json`` is made from the app's router and the handlers' own models: every route
the app has is in it and nothing else, and it is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate
from sanic import HTTPResponse, Request, Sanic
from sanic.response import empty

from query_api.messages_api import PostMessage
from query_api.openapi import Undocumented, build_document
from tidings.gateway_root import gateway_app
from tidings.settings import Settings

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def router_operations(app: Sanic) -> set[tuple[str, str]]:
    """(method, path) of every route, read from the router without the document's code."""
    out = set()
    for route in app.router.routes:
        path = "/" + re.sub(r"<([^:>]+)(:[^>]*)?>", r"{\1}", route.path)
        out |= {(m.lower(), path.rstrip("/") or "/") for m in route.methods}
    return out


def document_operations(doc: dict) -> set[tuple[str, str]]:
    return {(m, path) for path, item in doc["paths"].items() for m in item if m in METHODS}


@pytest.mark.parametrize("dev_login", [False, True])
def test_the_document_has_every_route_and_nothing_else(dev_login: bool) -> None:
    app = gateway_app(Settings(dev_login=dev_login), name=f"openapi_{dev_login}")
    doc = build_document(app)
    validate(doc)  # raises on anything that is not valid OpenAPI 3.1
    assert doc["openapi"] == "3.1.0"
    assert document_operations(doc) == router_operations(app)
    assert ("post", "/v1/conversations/{conversation_id}/messages") in document_operations(doc)
    assert ("get", "/v1/ws") in document_operations(doc)
    assert (("post", "/v1/dev/token") in document_operations(doc)) is dev_login


def test_bodies_are_the_handlers_own_models() -> None:
    doc = build_document(gateway_app(Settings(), name="openapi_models"))
    schema = doc["components"]["schemas"]["PostMessage"]
    own = PostMessage.model_json_schema()
    assert schema["properties"] == own["properties"]
    assert schema["properties"]["client_msg_id"]["maxLength"] == 64
    op = doc["paths"]["/v1/conversations/{conversation_id}/messages"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PostMessage"
    }
    assert set(op["responses"]) >= {"202", "400", "401", "403", "413", "429", "503"}
    # public routes need no token; the others say they take a bearer token
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/v1/openapi.json"]["get"]["security"] == []
    assert "security" not in op and doc["security"] == [{"bearer": []}]


def test_a_route_without_a_description_fails_the_document() -> None:
    app = gateway_app(Settings(), name="openapi_undocumented")

    @app.get("/v1/undocumented")
    async def undocumented(request: Request) -> HTTPResponse:
        return empty()

    with pytest.raises(Undocumented, match="GET /v1/undocumented"):
        build_document(app)
