"""Property-based and fuzz tests (hypothesis) of every frame and HTTP body against the running
gateway: wrong types, missing and extra fields, any JSON, deep nesting, invalid UTF-8, binary
frames, 10 MB frames, unknown conversations and ids with odd characters. Each gets its protocol
error (never ``internal``), the socket or the process survives, and memory stays bounded."""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from events import direct_conversation_id
from tests.e2e.conftest import System, user

PROTOCOL_CODES = {
    "invalid",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "too_large",
    "rate_limited",
}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
odd_ids = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "",
            "g:",
            "g:404",
            "dm:",
            "dm:a",
            "dm:a:b:c",
            "dm:zz:aa",
            "g:../../etc",
            "g:%00",
            "g:\u202e",
            "g:" + "9" * 40,
            "dm:é:ü",
            "x" * 10_000,
        ]
    ),
)
FRAME_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "send": {
        "client_msg_id": st.text(max_size=70),
        "conversation_id": odd_ids,
        "kind": st.sampled_from(["text", "image", "sticker", ""]),
        "body": st.text(max_size=200),
        "media_id": st.none() | st.text(max_size=140),
    },
    "receipt": {
        "conversation_id": odd_ids,
        "message_id": st.text(max_size=25) | st.integers().map(str),
        "status": st.sampled_from(["delivered", "read", "seen", ""]),
    },
    "view": {"conversation_id": st.none() | odd_ids},
    "typing": {"conversation_id": odd_ids, "state": st.sampled_from(["start", "stop", "maybe"])},
    "ping": {},
    "presence": {"state": st.sampled_from(["online", "away", "busy", ""])},
    "watch": {"user_ids": st.lists(odd_ids, max_size=3)},
}


@st.composite
def frames(draw: st.DrawFn) -> dict[str, Any]:
    """A frame of a known (or unknown) type whose fields are each the right kind of value, any
    JSON value, or missing, plus maybe extra fields."""
    kind = draw(st.sampled_from([*FRAME_FIELDS, "warp", ""]))
    frame: dict[str, Any] = {"type": kind, "ref": draw(st.none() | st.text(max_size=20))}
    for name, good in FRAME_FIELDS.get(kind, {}).items():
        choice = draw(st.sampled_from(["good", "any", "missing"]))
        if choice == "good":
            frame[name] = draw(good)
        elif choice == "any":
            frame[name] = draw(json_values)
    frame.update(draw(st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=2)))
    return frame


def _recv(ws: ClientConnection) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(ws.recv(timeout=15))
    return result


def _ping_pong(ws: ClientConnection) -> list[dict[str, Any]]:
    """Frames until the pong of a fresh ping: proves the socket still works."""
    ws.send('{"type": "ping", "ref": "alive"}')
    seen: list[Any] = []
    while True:
        frame = _recv(ws)
        if frame == {"type": "pong", "ref": "alive"}:
            return seen
        seen.append(frame)


def _open(system: System, who: str) -> ClientConnection:
    return connect(f"{system.ws}?token={system.token(who)}", max_size=None)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def gateway_rss(system: System) -> dict[str, int]:
    return {"before": _rss_kb(system.procs["gateway"].pid)}


def test_any_frame_gets_its_answer_and_the_socket_survives(
    system: System, gateway_rss: dict[str, int]
) -> None:
    me = user()
    with _open(system, me) as ws:

        @FUZZ
        @given(frame=frames())
        def check(frame: dict[str, Any]) -> None:
            if frame["type"] == "send" and isinstance(frame.get("client_msg_id"), str):
                frame["client_msg_id"] = frame["client_msg_id"] + user()  # never a conflict by chance
            ws.send(orjson.dumps(frame).decode())
            for reply in _ping_pong(ws):
                assert reply["type"] in (
                    "ack",
                    "error",
                    "pong",
                    "message",
                    "conversation",
                    "receipt",
                    "presence",
                ), reply
                if reply["type"] == "error":
                    assert reply["code"] in PROTOCOL_CODES, (frame, reply)
                    assert reply["ref"] in (frame["ref"], None), (frame, reply)

        check()


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=300),  # binary frames
        json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: orjson.dumps(v).decode()),
        st.text(max_size=300).filter(lambda t: not t.lstrip().startswith("{")),
    )
)
def test_any_bytes_as_text_or_binary_get_invalid(system: System, raw: bytes | str) -> None:
    with _open(system, user()) as ws:
        ws.send(raw)
        replies = _ping_pong(ws)
        assert all(r["type"] == "error" and r["code"] in PROTOCOL_CODES for r in replies), replies


@pytest.mark.parametrize(
    "payload",
    [
        "[" * 100_000 + "]" * 100_000,  # deeper than any parser's stack
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        '{"type": "send", "body": "' + "\\ud800" * 100 + '"}',  # lone surrogates
        '{"type": "send", "ref": 1}',
        '{"type": ["send"]}',
        "null",
        '"send"',
        "1e999",
    ],
)
def test_pathological_json_frames_get_invalid(system: System, payload: str) -> None:
    with _open(system, user()) as ws:
        ws.send(payload)
        replies = _ping_pong(ws)
        assert [r["code"] for r in replies] in (["invalid"], ["too_large"]), replies


def test_invalid_utf8_text_frame_ends_that_socket_only(system: System) -> None:
    # The WebSocket rule: a close with 1007 (invalid frame payload data). The gateway and
    # other sockets carry on.
    with _open(system, user()) as ws:
        ws.send(b'{"type": "ping", "ref": "\xff\xfe"}', text=True)
        ws.send('{"type": "ping", "ref": "after"}')
        # the close comes at some recv: read until it does
        with pytest.raises(websockets.ConnectionClosed) as info:  # noqa: PT012
            while True:
                ws.recv(timeout=30)  # a TimeoutError (socket deaf and open) fails the test
    assert info.value.rcvd is not None and info.value.rcvd.code == 1007, info.value
    with _open(system, user()) as ws:
        assert _ping_pong(ws) == []


def test_ten_megabyte_frames_close_with_1009_and_memory_stays_bounded(
    system: System, gateway_rss: dict[str, int]
) -> None:
    for payload in ("x" * (10 * 1024 * 1024), b"\x00" * (10 * 1024 * 1024)):
        # the close may come while sending or at the next read
        with _open(system, user()) as ws, pytest.raises(websockets.ConnectionClosed) as info:  # noqa: PT012
            ws.send(payload)  # the server may close while it is still being sent
            _ping_pong(ws)
        # 1009, unless the client was still sending when the server closed: the kernel then
        # resets the connection and the close frame may never be read (abnormal closure).
        closed = info.value.rcvd
        assert (closed is not None and closed.code == 1009) or (closed is None and info.value.sent is None)
    assert system.procs["gateway"].poll() is None
    grown_mb = (_rss_kb(system.procs["gateway"].pid) - gateway_rss["before"]) / 1024
    print(f"gateway RSS grew {grown_mb:.1f} MB over the fuzz tests")
    assert grown_mb < 150, grown_mb


BODY_ENDPOINTS = [
    ("POST", "/v1/conversations"),
    ("POST", "/v1/conversations/{cid}/messages"),
    ("POST", "/v1/conversations/{cid}/receipts"),
    ("POST", "/v1/conversations/{cid}/members"),
    ("PUT", "/v1/conversations/{cid}/members/{other}"),
    ("PATCH", "/v1/conversations/{cid}"),
    ("GET", "/v1/sync"),
]


@pytest.mark.parametrize(("method", "template"), BODY_ENDPOINTS)
def test_any_http_body_gets_a_protocol_answer(system: System, method: str, template: str) -> None:
    me, other = user(), user()
    path = template.format(cid=direct_conversation_id(me, other), other=other)

    @FUZZ
    @given(
        body=st.one_of(
            json_values.map(orjson.dumps),
            st.binary(max_size=200),
            st.just(b"\xff\xfe\xfd"),
            st.just(b"[" * 10_000),
        )
    )
    def check(body: bytes) -> None:
        status, answer = system.request(method, path, user=me, raw=body)
        assert status < 500, (body, status, answer)
        if status >= 400:
            assert answer["error"]["code"] in PROTOCOL_CODES, answer

    check()


@FUZZ
@given(cid=odd_ids.filter(lambda c: "/" not in c and c.strip() != ""))
def test_odd_conversation_ids_in_paths_get_4xx(system: System, cid: str) -> None:
    me = user()
    quoted = urllib.parse.quote(cid, safe="")
    for method, path, body in [
        ("GET", f"/v1/conversations/{quoted}", None),
        ("GET", f"/v1/conversations/{quoted}/messages", None),
        ("GET", f"/v1/conversations/{quoted}/members", None),
        ("POST", f"/v1/conversations/{quoted}/messages", {"client_msg_id": "c", "body": "x"}),
        ("DELETE", f"/v1/conversations/{quoted}/members/{me}", None),
        ("GET", f"/v1/users/{quoted}/presence", None),
        ("GET", f"/v1/sync?since={quoted}", None),
    ]:
        status, answer = system.request(method, path, user=me, body=body)
        assert 400 <= status < 500, (method, cid, status, answer)
        assert answer["error"]["code"] in PROTOCOL_CODES, answer


def test_the_gateway_survived_it_all(system: System) -> None:
    assert system.procs["gateway"].poll() is None
    assert system.request("GET", "/healthz")[0] == 200
