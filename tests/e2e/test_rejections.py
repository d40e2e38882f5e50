"""Bad tokens, strangers, and malformed or oversized input: each gets its protocol error, and
the socket survives what it should survive."""

from __future__ import annotations

import orjson
import pytest
import websockets

from events import direct_conversation_id
from tests.e2e.conftest import System, user


@pytest.mark.parametrize("token_kind", ["missing", "garbage", "wrong_secret", "expired", "bad_subject"])
async def test_bad_tokens_get_401_before_the_upgrade(system: System, token_kind: str) -> None:
    import jwt

    tokens = {
        "missing": None,
        "garbage": "not.a.jwt",
        "wrong_secret": jwt.encode(
            {"sub": "alice", "exp": 2**31}, "another-secret-of-thirty-two-bytes!!", algorithm="HS256"
        ),
        "expired": system.token("alice", ttl_s=-10),
        "bad_subject": jwt.encode(
            {"sub": "a b", "exp": 2**31}, system.settings.resolved_auth_secret(), algorithm="HS256"
        ),
    }
    token = tokens[token_kind]
    url = system.ws if token is None else f"{system.ws}?token={token}"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url):
            pass
    assert info.value.response.status_code == 401
    status, body = system.request("GET", "/v1/conversations/dm:a:b/messages", token=token or "")
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_header_token_works_for_websocket(system: System) -> None:
    me = user()
    headers = {"Authorization": f"Bearer {system.token(me)}"}
    async with websockets.connect(system.ws, additional_headers=headers) as ws:
        await ws.send('{"type": "ping", "ref": "p"}')
        assert orjson.loads(await ws.recv()) == {"type": "pong", "ref": "p"}


async def test_strangers_are_forbidden(system: System) -> None:
    alice, bob, eve = user(), user(), user()
    cid = direct_conversation_id(alice, bob)
    async with system.connect(eve) as client:
        await client.send(
            {"type": "send", "ref": "s", "client_msg_id": "x", "conversation_id": cid, "body": "hi"}
        )
        error = await client.expect("error", ref="s")
        assert error["code"] == "forbidden"
    for method, path, body in [
        ("GET", f"/v1/conversations/{cid}/messages", None),
        ("GET", f"/v1/conversations/{cid}", None),
        ("POST", f"/v1/conversations/{cid}/messages", {"client_msg_id": "x", "body": "hi"}),
    ]:
        status, payload = system.request(method, path, user=eve, body=body)
        assert status == 403 and payload["error"]["code"] == "forbidden", (method, path)


async def test_malformed_and_oversized_frames_get_errors_and_the_socket_survives(system: System) -> None:
    me, other = user(), user()
    cid = direct_conversation_id(me, other)
    cases: list[tuple[str | bytes, str, str | None]] = [
        ("{not json", "invalid", None),
        (b"\x00\x01binary", "invalid", None),
        ('{"type": "warp", "ref": "r1"}', "invalid", "r1"),
        ('{"type": "send", "ref": "r2"}', "invalid", "r2"),
        (
            orjson.dumps(
                {
                    "type": "send",
                    "ref": "r3",
                    "client_msg_id": "c",
                    "conversation_id": cid,
                    "body": "x" * 4001,
                }
            ).decode(),
            "too_large",
            "r3",
        ),
        (
            orjson.dumps(
                {
                    "type": "send",
                    "ref": "r4",
                    "client_msg_id": "c",
                    "conversation_id": "dm:zz:aa",
                    "body": "x",
                }
            ).decode(),
            "invalid",
            "r4",
        ),
        (
            orjson.dumps(
                {"type": "send", "ref": "r5", "client_msg_id": "c", "conversation_id": "g:404", "body": "x"}
            ).decode(),
            "not_found",
            "r5",
        ),
        ('{"type": "ping", "pad": "' + "x" * 70_000 + '"}', "too_large", None),
    ]
    async with system.connect(me) as client:
        for raw, code, ref in cases:
            await client.send(raw)
            error = await client.expect("error")
            assert (error["code"], error["ref"]) == (code, ref), raw[:80]
            assert error["message"]
        ack = await client.send_message(cid, "still here")
        assert ack["message_id"]


async def test_huge_frame_closes_the_socket_with_1009(system: System) -> None:
    async with system.connect(user()) as client:
        # the close may come while sending or at the next read
        with pytest.raises(websockets.ConnectionClosed) as info:  # noqa: PT012
            await client.send("x" * (2 * 1024 * 1024))
            await client.ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "invalid"),
        (b"[]", "invalid"),
        (b'{"body": "no client_msg_id"}', "invalid"),
        (b'{"client_msg_id": "c", "body": 5}', "invalid"),
        (b'{"client_msg_id": "' + b"c" * 65 + b'", "body": "x"}', "invalid"),
    ],
)
def test_malformed_http_bodies_get_400(system: System, body: bytes, code: str) -> None:
    me = user()
    cid = direct_conversation_id(me, user())
    status, payload = system.request("POST", f"/v1/conversations/{cid}/messages", user=me, raw=body)
    assert status == 400 and payload["error"]["code"] == code


def test_oversized_http_body_gets_413(system: System) -> None:
    me = user()
    cid = direct_conversation_id(me, user())
    status, payload = system.request(
        "POST", f"/v1/conversations/{cid}/messages", user=me, raw=b"x" * (2 * 1024 * 1024)
    )
    assert status == 413 and payload["error"]["code"] == "too_large"


@pytest.mark.parametrize(
    "query", ["before=abc", "after=-5", "before=1&after=2", "limit=ten", "before=99999999999999999999999"]
)
def test_bad_paging_arguments_get_400(system: System, query: str) -> None:
    me = user()
    cid = direct_conversation_id(me, user())
    status, payload = system.request("GET", f"/v1/conversations/{cid}/messages?{query}", user=me)
    assert status == 400 and payload["error"]["code"] == "invalid"


def test_unknown_route_is_404_json_and_ops_endpoints_answer(system: System) -> None:
    status, payload = system.request("GET", "/v1/nothing-here", user=user())
    assert status == 404 and payload["error"]["code"] == "not_found"
    assert system.request("GET", "/healthz")[0] == 200
    status, ready = system.request("GET", "/readyz")
    assert status == 200
    assert ready["checks"] == {"kafka": "ok", "cassandra": "ok", "redis": "ok", "s3": "ok"}


async def test_metrics_count_traffic(system: System) -> None:
    import re
    import urllib.request

    def scrape() -> str:
        with urllib.request.urlopen(f"{system.http}/metrics", timeout=5) as r:
            return r.read().decode()

    def value(text: str, name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    before = scrape()
    me = user()
    async with system.connect(me) as client:
        await client.send_message(direct_conversation_id(me, user()), "counted")
        during = scrape()
    sent = 'tidings_sends_total{outcome="ok"}'
    assert value(during, sent) == value(before, sent) + 1
    assert value(during, "tidings_ws_connections") >= 1
    assert value(during, 'tidings_ws_frames_in_total{type="send"}') >= 1
    assert "tidings_send_ack_seconds_bucket" in during


# Every v1.1 part is built now; ciphertext is accepted only where the conversation is
# end-to-end encrypted (tests/e2e/test_encrypted.py has the rest).
async def test_encrypted_sends_into_a_plaintext_conversation_are_refused(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    encrypted = {
        "client_msg_id": "e1",
        "kind": "encrypted",
        "ciphertext": "AAAA",
        "algorithm": "megolm.v1",
        "session_id": "c2Vzc2lvbg",
        "sender_device": "default",
    }
    status, payload = system.request("POST", f"/v1/conversations/{cid}/messages", user=alice, body=encrypted)
    assert status == 400 and payload["error"]["code"] == "invalid"
    async with system.connect(alice) as ws:
        await ws.send({"type": "send", "ref": "e", "conversation_id": cid, **encrypted})
        assert (await ws.expect("error", ref="e"))["code"] == "invalid"
    status, page = system.request("GET", f"/v1/conversations/{cid}/messages", user=alice)
    assert status == 200 and page["messages"] == []
