"""Abuse: per-user rate limits shared by every gateway process (sends, typing, presence and
watch, connection attempts), the WebSocket Origin allow-list, and no message text in any process log."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import websockets
from websockets.typing import Origin

from events import direct_conversation_id
from tests.e2e.conftest import Client, Gateway, System, user, wait_until

ALLOWED_ORIGIN = Origin("https://chat.example")


@pytest.fixture(scope="module")
def first(system: System) -> Iterator[Gateway]:
    gateway = Gateway(system, "limits-first", default_limits=True)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def second(system: System) -> Iterator[Gateway]:
    gateway = Gateway(system, "limits-second", default_limits=True, origins=[ALLOWED_ORIGIN])
    try:
        yield gateway
    finally:
        gateway.stop()


async def test_limits_are_shared_by_gateway_processes(
    system: System, first: Gateway, second: Gateway
) -> None:
    # Connection attempts (1/s, bursts of 30): 25 on each process, under the burst for either
    # alone, over it together (unless the 50 took more than 20 s).
    me = user()
    refused: dict[str, int] = {"first": 0, "second": 0}
    started = time.monotonic()
    for name, url in (("first", first.ws), ("second", second.ws)):
        for _ in range(25):
            try:
                async with websockets.connect(f"{url}?token={system.token(me)}"):
                    pass
            except websockets.InvalidStatus as exc:
                # counted, not expected: some connects pass
                assert exc.response.status_code == 429  # noqa: PT017
                refused[name] += 1
    elapsed = time.monotonic() - started
    print(f"connects: refused {refused} in {elapsed:.1f}s")
    assert refused["first"] == 0 and refused["second"] > 0, (refused, elapsed)


def test_http_sends_get_429_with_retry_after(system: System, first: Gateway) -> None:
    me = user()
    cid = direct_conversation_id(me, user())

    def post(i: int) -> tuple[int, str | None, Any]:
        req = urllib.request.Request(
            f"{first.http}/v1/conversations/{cid}/messages",
            data=orjson.dumps({"client_msg_id": f"h{i}", "body": "x"}),
            method="POST",
            headers={"Authorization": f"Bearer {system.token(me)}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, None, None
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Retry-After"), orjson.loads(err.read())

    # At once (sequential requests would be slower than the refill).
    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(post, range(90)))
    limited = [(h, b) for s, h, b in answers if s == 429]
    assert limited, [s for s, _, _ in answers]
    assert all(b["error"]["code"] == "rate_limited" and h is not None and int(h) >= 1 for h, b in limited)


async def test_a_duplicate_send_over_the_limit_is_refused_not_acknowledged(
    system: System, first: Gateway
) -> None:
    """The send limit is asked with the idempotency claim, in one Redis round trip, and its
    answer comes first: a resend of an acknowledged ``client_msg_id`` while the sender is over
    the limit gets ``rate_limited`` (never a second message), as when the check went alone
    first; one that finds a token gets the original ack."""
    me = user()
    cid = direct_conversation_id(me, user())

    def send(ref: str, client_msg_id: str) -> dict[str, Any]:
        return {
            "type": "send",
            "ref": ref,
            "client_msg_id": client_msg_id,
            "conversation_id": cid,
            "body": "x",
        }

    # 60 new sends empty the burst of 50; then resends of the first, between new sends, while
    # the bucket refills at 20 per second (a few of them may find a token).
    frames = [send(f"n{i}", f"n{i}") for i in range(60)]
    for i in range(10):
        frames += [send(f"d{i}", "n0"), send(f"m{i}", f"m{i}")]
    async with websockets.connect(f"{first.ws}?token={system.token(me)}") as ws:
        client = Client(ws)
        for frame in frames:
            await client.send(frame)
        await client.settled(timeout=60)
    answers = {f["ref"]: f for f in client.backlog if f["type"] in ("ack", "error")}
    assert set(answers) == {f["ref"] for f in frames}, sorted(set(answers) ^ {f["ref"] for f in frames})
    original = answers["n0"]["message_id"]
    resends = [answers[f"d{i}"] for i in range(10)]
    refused = [a for a in resends if a["type"] == "error"]
    assert all(a["message_id"] == original for a in resends if a["type"] == "ack"), resends
    assert all(a["code"] == "rate_limited" and a["retry_after"] >= 1 for a in refused), refused
    assert len(refused) >= 5, resends


async def test_typing_limit_is_per_user_not_per_socket(system: System, first: Gateway) -> None:
    me = user()
    cid = direct_conversation_id(me, user())
    sockets = [websockets.connect(f"{first.ws}?token={system.token(me, f'd{i}')}") for i in range(6)]
    clients = [Client(await s.__aenter__()) for s in sockets]
    try:
        # 5 frames per socket is within each socket's own burst; 30 in all is over the user's 20.
        for n, client in enumerate(clients):
            for i in range(5):
                await client.send(
                    {"type": "typing", "ref": f"t{n}-{i}", "conversation_id": cid, "state": "start"}
                )
        errors = []
        for client in clients:
            await client.send({"type": "ping", "ref": "end"})
            await client.expect("pong", ref="end")
            errors += [f for f in client.backlog if f["type"] == "error"]
    finally:
        for s in sockets:
            await s.__aexit__(None, None, None)
    assert errors and {e["code"] for e in errors} == {"rate_limited"}, errors


async def test_presence_and_watch_frames_share_one_allowance_across_processes(
    system: System, first: Gateway, second: Gateway
) -> None:
    # 2 per second, bursts of 20, for presence and watch frames together: 12 presence frames on
    # one process and 12 watch frames on the other are each under the burst, together over it.
    me = user()
    async with (
        websockets.connect(f"{first.ws}?token={system.token(me, 'phone')}") as a,
        websockets.connect(f"{second.ws}?token={system.token(me, 'laptop')}") as b,
    ):
        phone, laptop = Client(a), Client(b)
        for i in range(12):
            state = "away" if i % 2 == 0 else "online"
            await phone.send({"type": "presence", "ref": f"p{i}", "state": state})
        for i in range(12):
            await laptop.send({"type": "watch", "ref": f"w{i}", "user_ids": []})
        errors = []
        for client in (phone, laptop):
            await client.send({"type": "ping", "ref": "end"})
            await client.expect("pong", ref="end")
            errors += [f for f in client.backlog if f["type"] == "error"]
    assert errors, "24 presence and watch frames at once were all accepted"
    assert {e["code"] for e in errors} == {"rate_limited"}, errors
    assert all(e["retry_after"] >= 1 for e in errors), errors
    assert len(errors) < 12, errors  # the allowance was shared, not refused outright


async def test_connection_attempts_are_limited_before_the_upgrade(system: System, first: Gateway) -> None:
    me = user()
    refused: list[websockets.InvalidStatus] = []
    for _ in range(45):
        try:
            async with websockets.connect(f"{first.ws}?token={system.token(me)}"):
                pass
        except websockets.InvalidStatus as exc:
            refused.append(exc)
    assert refused, "45 connection attempts at once were all accepted"
    assert {e.response.status_code for e in refused} == {429}
    assert int(refused[0].response.headers["Retry-After"]) >= 1


async def test_origin_allow_list(system: System, second: Gateway) -> None:
    url = f"{second.ws}?token={system.token(user())}"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, origin=Origin("https://evil.example")):
            pass
    assert info.value.response.status_code == 403
    for origin in (ALLOWED_ORIGIN, None):  # allowed, and a client that is not a browser
        async with websockets.connect(url, origin=origin) as ws:
            await ws.send('{"type": "ping", "ref": "o"}')
            assert orjson.loads(await ws.recv()) == {"type": "pong", "ref": "o"}
    # Without a list (the first gateway), any origin may connect.
    async with websockets.connect(
        f"{system.ws}?token={system.token(user())}", origin=Origin("https://evil.example")
    ):
        pass


async def test_no_message_text_in_any_log(system: System) -> None:
    marker = f"SECRET-{uuid.uuid4().hex}"
    me, other, eve = user(), user(), user()
    cid = direct_conversation_id(me, other)
    async with system.connect(me) as client, system.connect(eve) as stranger:
        await client.send_message(cid, f"hello {marker}", client_msg_id="m1")
        # Failing paths: a conflict, too large, invalid fields, forbidden.
        await client.send(
            {"type": "send", "ref": "c", "client_msg_id": "m1", "conversation_id": cid, "body": marker}
        )
        await client.expect("error", ref="c")
        await client.send(
            {"type": "send", "ref": "l", "client_msg_id": "m2", "conversation_id": cid, "body": marker * 200}
        )
        await client.expect("error", ref="l")
        await client.send(
            {"type": "send", "ref": "k", "client_msg_id": "m3", "conversation_id": cid, "kind": marker}
        )
        await client.expect("error", ref="k")
        await stranger.send(
            {"type": "send", "ref": "f", "client_msg_id": "m4", "conversation_id": cid, "body": marker}
        )
        await stranger.expect("error", ref="f")
    system.request(
        "POST", f"/v1/conversations/{cid}/messages", user=me, body={"client_msg_id": "m5", "body": marker}
    )
    system.request(
        "POST",
        f"/v1/conversations/{cid}/messages",
        user=me,
        raw=b'{"client_msg_id": 5, "body": "' + marker.encode() + b'"}',
    )

    # Until the message is projected (the workers saw it), then every process log.
    def projected() -> bool:
        status, page = system.request("GET", f"/v1/conversations/{cid}/messages", user=me)
        return status == 200 and len(page["messages"]) >= 2

    await wait_until(projected)
    logs = {p.name: p.read_text(errors="replace") for p in system.logs.glob("*.log")}
    assert logs, "no process logs found"
    leaked = [name for name, text in logs.items() if marker in text]
    assert not leaked, f"message text in logs: {leaked}"
