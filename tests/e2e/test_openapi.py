"""``/v1/openapi.json`` of the running gateway: public, the document of the app it runs, and
every HTTP route's real answers (successes and errors) valid against it."""

from __future__ import annotations

import re
import urllib.request
import uuid
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from query_api.openapi import build_document
from tests.e2e import media_support
from tests.e2e.conftest import System, user
from tests.e2ee_support import Device
from tidings.gateway_root import gateway_app

BASE = "urn:tidings-openapi"
NOT_JSON = {"/metrics", "/", "/web/{__file_uri__}"}


class Checker:
    def __init__(self, system: System, doc: dict[str, Any]) -> None:
        self.system = system
        self.doc = doc
        self.registry = Registry().with_resource(BASE, Resource.from_contents(doc, DRAFT202012))
        self.seen: set[tuple[str, str]] = set()

    def call(
        self,
        method: str,
        template: str,
        *,
        who: str | None = None,
        body: Any = None,
        query: str = "",
        **params: str,
    ) -> tuple[int, Any]:
        """Calls the route and checks the answer against the document's answer for its status."""
        path = template.format(**params) + query
        if template in NOT_JSON:
            status, payload, ctype = self._raw(method, path, who)
            if ctype.startswith("application/json"):
                payload = orjson.loads(payload)
        else:
            status, payload = self.system.request(method, path, user=who, body=body)
            ctype = "application/json"
        operation = self.doc["paths"][template][method.lower()]
        answer = operation["responses"].get(str(status))
        assert answer is not None, f"{method} {template} answered {status}, which the document does not list"
        self.seen.add((method.lower(), template))
        content = answer.get("content")
        if payload is None or not ctype.startswith("application/json"):
            assert content is None or ctype.split(";")[0] in content or template in NOT_JSON
            return status, payload
        assert content and "application/json" in content, f"{method} {template} {status}: body not documented"
        schema = content["application/json"]["schema"]
        if "$ref" in schema:
            schema = {"$ref": BASE + schema["$ref"]}
        errors = list(Draft202012Validator(schema, registry=self.registry).iter_errors(payload))
        assert not errors, f"{method} {template} {status}: {[e.message for e in errors]} in {payload!r}"
        return status, payload

    def call_raw(
        self,
        method: str,
        template: str,
        *,
        who: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        **params: str,
    ) -> tuple[int, Any]:
        """Like ``call``, for routes that take raw bytes or answer a redirect (not followed)."""
        status, got, payload = media_support.call(
            self.system, method, template.format(**params), user=who, body=body, headers=headers
        )
        operation = self.doc["paths"][template][method.lower()]
        answer = operation["responses"].get(str(status))
        assert answer is not None, f"{method} {template} answered {status}, which the document does not list"
        self.seen.add((method.lower(), template))
        if isinstance(payload, (dict, list)):
            schema = answer["content"]["application/json"]["schema"]
            if "$ref" in schema:
                schema = {"$ref": BASE + schema["$ref"]}
            errors = list(Draft202012Validator(schema, registry=self.registry).iter_errors(payload))
            assert not errors, f"{method} {template} {status}: {[e.message for e in errors]} in {payload}"
        elif status == 302:
            assert got.get("location", "").startswith("http")
        return status, payload

    def _raw(self, method: str, path: str, who: str | None) -> tuple[int, bytes, str]:
        req = urllib.request.Request(f"{self.system.http}{path}", method=method)
        if who:
            req.add_header("Authorization", f"Bearer {self.system.token(who)}")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers.get("Content-Type", "")


@pytest.fixture
def doc(system: System) -> dict[str, Any]:
    status, document = system.request("GET", "/v1/openapi.json")  # no token: public
    assert status == 200
    return document


def test_the_served_document_is_the_running_apps(system: System, doc: dict[str, Any]) -> None:
    validate(doc)
    own = orjson.loads(orjson.dumps(build_document(gateway_app(system.settings, name="openapi_e2e"))))
    assert doc == own


def test_real_answers_match_the_document(system: System, doc: dict[str, Any]) -> None:
    c = Checker(system, doc)
    alice, bob, carol, stranger = user(), user(), user(), user()
    dm = f"dm:{min(alice, bob)}:{max(alice, bob)}"
    conv, members, messages = (
        "/v1/conversations/{conversation_id}",
        "/v1/conversations/{conversation_id}/members",
        "/v1/conversations/{conversation_id}/messages",
    )

    c.call("GET", "/healthz")
    c.call("GET", "/readyz")
    c.call("GET", "/metrics")
    c.call("GET", "/v1/openapi.json")
    c.call("GET", "/")
    c.call("HEAD", "/")
    c.call("GET", "/web/{__file_uri__}", __file_uri__="app.js")
    c.call("HEAD", "/web/{__file_uri__}", __file_uri__="style.css")
    c.call("GET", "/web/{__file_uri__}", __file_uri__="nothing-here.js")  # 404

    c.call("POST", "/v1/conversations", who=alice, body={"kind": "direct", "members": [bob]})
    status, created = c.call(
        "POST", "/v1/conversations", who=alice, body={"kind": "group", "title": "Docs", "members": [bob]}
    )
    assert status == 201
    gid = created["conversation"]["conversation_id"]
    c.call("POST", "/v1/conversations", who=alice, body={"kind": "group"})  # 400
    c.call("POST", "/v1/conversations", body={"kind": "direct", "members": [bob]})  # 401

    status, sent = c.call(
        "POST",
        messages,
        conversation_id=dm,
        who=alice,
        body={"client_msg_id": uuid.uuid4().hex, "body": "Hi"},
    )
    assert status == 202
    c.call(
        "POST",
        messages,
        conversation_id=gid,
        who=bob,
        body={"client_msg_id": uuid.uuid4().hex, "body": "Hey"},
    )
    c.call(
        "POST", messages, conversation_id=gid, who=stranger, body={"client_msg_id": "x", "body": "no"}
    )  # 403
    c.call(
        "POST", messages, conversation_id=dm, who=alice, body={"client_msg_id": "y", "body": "x" * 4001}
    )  # 413
    c.call("GET", messages, conversation_id=dm, who=bob, query="?limit=10")
    c.call("GET", messages, conversation_id="g:1", who=bob)  # 404

    c.call("GET", "/v1/conversations", who=alice)
    c.call("GET", conv, conversation_id=gid, who=bob)
    c.call("PATCH", conv, conversation_id=gid, who=alice, body={"title": "Docs 2"})
    c.call("GET", members, conversation_id=gid, who=alice)
    c.call("POST", members, conversation_id=gid, who=alice, body={"user_ids": [carol]})
    c.call(
        "PUT", members + "/{user_id}", conversation_id=gid, user_id=carol, who=alice, body={"role": "admin"}
    )
    c.call("DELETE", members + "/{user_id}", conversation_id=gid, user_id=carol, who=carol)
    c.call("DELETE", members + "/{user_id}", conversation_id=gid, user_id=alice, who=alice)  # 409: the owner

    receipts = "/v1/conversations/{conversation_id}/receipts"
    c.call(
        "POST",
        receipts,
        conversation_id=dm,
        who=bob,
        body={"message_id": sent["message_id"], "status": "read"},
    )
    c.call("GET", receipts, conversation_id=dm, who=alice)

    c.call("GET", "/v1/users/{user_id}/presence", user_id=bob, who=alice)
    c.call("GET", "/v1/users/{user_id}/presence", user_id=stranger, who=alice)  # 403

    status, start = c.call("GET", "/v1/sync", who=bob)
    assert start["messages"] and start["conversations"]
    c.call(
        "POST",
        messages,
        conversation_id=dm,
        who=alice,
        body={"client_msg_id": uuid.uuid4().hex, "body": "Later"},
    )
    c.call("GET", "/v1/sync", who=bob, query=f"?since={start['cursor']}")
    c.call("GET", "/v1/sync", who=bob, query="?since=nonsense")  # 400

    media, one = "/v1/media", "/v1/media/{media_id}"
    picture = media_support.png()
    status, stored = c.call_raw("POST", media, who=alice, body=picture, headers={"Content-Type": "image/png"})
    assert status == 201
    c.call_raw("POST", media, who=alice, body=b"not a png", headers={"Content-Type": "image/png"})  # 400
    status, started = c.call_raw(
        "POST",
        "/v1/media/uploads",
        who=alice,
        body=orjson.dumps({"content_type": "image/png", "size": 3, "sha256": media_support.sha256(b"abc")}),
        headers={"Content-Type": "application/json"},
    )
    assert status == 201
    c.call_raw("POST", one + "/complete", who=alice, media_id=started["media_id"])  # 409: nothing PUT
    assert c.call_raw("GET", one, who=alice, media_id=stored["media_id"])[0] == 302
    c.call_raw("GET", one, who=stranger, media_id=stored["media_id"])  # 403
    c.call_raw("GET", one + "/thumbnail", who=alice, media_id=stored["media_id"])  # 302, or 404 until made

    device = "/v1/devices/{device_id}/push"
    hook = {"provider": "webhook", "endpoint": "http://127.0.0.1:9/hook"}
    assert c.call("PUT", device, device_id="default", who=alice, body=hook)[0] == 200
    c.call("PUT", device, device_id="another", who=alice, body=hook)  # 403: not the token's device
    c.call("PUT", device, device_id="default", who=alice, body={"provider": "carrier-pigeon"})  # 400
    assert c.call("DELETE", device, device_id="default", who=alice)[0] == 204
    settings = "/v1/conversations/{conversation_id}/settings"
    c.call("PUT", settings, conversation_id=dm, who=bob, body={"muted": True})
    c.call("PUT", settings, conversation_id=gid, who=stranger, body={"muted": True})  # 403
    c.call("GET", "/v1/push/webpush-key", who=alice)
    c.call("GET", "/v1/search", who=alice, query="?q=hi&limit=1")
    c.call("GET", "/v1/search", who=alice, query="?q=%22unbalanced")
    c.call("GET", "/v1/search", who=alice, query="?q=*")  # 400
    c.call("GET", "/v1/search", who=alice, query=f"?q=hi&conversation_id={gid}-not-mine")  # 404
    keys = Device()
    c.call("PUT", "/v1/keys/device", who=alice, body=keys.device_keys())
    c.call("PUT", "/v1/keys/device", who=alice, body=Device().device_keys())  # 409
    c.call("PUT", "/v1/keys/device", who=alice, body={**keys.device_keys(), "signature": "AAAA"})  # 400
    c.call("POST", "/v1/keys/one-time", who=alice, body={"keys": keys.one_time_keys(2)})
    c.call("POST", "/v1/keys/one-time", who=alice, body={"keys": [{"key_id": "k", "key": "x"}]})  # 400
    c.call("GET", "/v1/keys/users/{user_id}", user_id=alice, who=bob)
    c.call("POST", "/v1/keys/claim", who=bob, body={"devices": [{"user_id": alice, "device_id": "default"}]})
    c.call("GET", "/v1/keys/count", who=alice)
    bobs = {"user_id": bob, "device_id": "default", "type": "m.olm.v1", "ciphertext": "AAAA"}
    c.call("PUT", "/v1/keys/device", who=bob, body=Device().device_keys())
    c.call("POST", "/v1/to-device", who=alice, body={"messages": [bobs]})  # 202
    c.call("POST", "/v1/to-device", who=alice, body={"messages": [{**bobs, "device_id": "none"}]})  # 404
    c.call("POST", "/v1/to-device", who=alice, body={"messages": []})  # 400
    status, with_to_device = c.call("GET", "/v1/sync", who=bob)
    assert [m["ciphertext"] for m in with_to_device["to_device"]] == ["AAAA"]
    c.call("DELETE", "/v1/keys/device", who=alice)

    # Every documented operation was called, but the WebSocket upgrade (tests/e2e/test_socket_path.py).
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert documented - c.seen == {("get", "/v1/ws")}
    assert not any(re.search(r"[<>]", p) for p in doc["paths"])
