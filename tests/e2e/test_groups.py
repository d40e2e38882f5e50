"""Groups over the client protocol: roles and permissions, delivery in both fan-out modes and
across the switch, removal and addition taking effect at once, and strangers shut out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.e2e.conftest import FANOUT_THRESHOLD, Client, System, settled, user, wait_until


def create_group(system: System, owner: str, members: list[str], title: str = "Team") -> str:
    status, body = system.request(
        "POST", "/v1/conversations", user=owner, body={"kind": "group", "title": title, "members": members}
    )
    assert status == 201, body
    conv = body["conversation"]
    assert conv["kind"] == "group" and conv["title"] == title
    assert conv["member_count"] == len({owner, *members})
    return str(conv["conversation_id"])


def members_of(system: System, cid: str, viewer: str) -> dict[str, str]:
    out: dict[str, str] = {}
    path = f"/v1/conversations/{cid}/members?limit=400"
    while True:
        status, body = system.request("GET", path, user=viewer)
        assert status == 200, body
        out.update({m["user_id"]: m["role"] for m in body["members"]})
        if body["next"] is None:
            return out
        path = f"/v1/conversations/{cid}/members?limit=400&after={body['next']}"


async def no_message(client: Client, within: float = 0.7) -> None:
    await client.expect_none("message", within)


def test_roles_and_permissions(system: System) -> None:
    owner, admin, m1, m2, m3 = (user() for _ in range(5))
    cid = create_group(system, owner, [admin, m1, m2])
    base = f"/v1/conversations/{cid}/members"

    def call(method: str, path: str, who: str, body: Any = None) -> int:
        return system.request(method, path, user=who, body=body)[0]

    assert call("POST", base, m1, {"user_ids": [m3]}) == 403  # members do not add
    assert call("PUT", f"{base}/{admin}", m1, {"role": "admin"}) == 403  # nor change roles
    assert call("PUT", f"{base}/{admin}", owner, {"role": "admin"}) == 200
    status, body = system.request("POST", base, user=admin, body={"user_ids": [m3, m1]})
    assert status == 200 and body["members"] == [{"user_id": m3, "role": "member"}]  # m1 already in
    assert call("DELETE", f"{base}/{owner}", admin) == 403  # nobody removes the owner
    assert call("DELETE", f"{base}/{m2}", m1) == 403  # members remove nobody else
    assert call("DELETE", f"{base}/{m2}", admin) == 204
    assert call("DELETE", f"{base}/{m2}", admin) == 404  # already gone
    assert call("PUT", f"{base}/{m1}", owner, {"role": "admin"}) == 200
    assert call("DELETE", f"{base}/{m1}", admin) == 403  # an admin does not remove an admin
    assert call("DELETE", f"{base}/{owner}", owner) == 409  # the owner hands over first
    assert call("PATCH", f"/v1/conversations/{cid}", m3, {"title": "Mine"}) == 403
    status, body = system.request("PATCH", f"/v1/conversations/{cid}", user=admin, body={"title": "Renamed"})
    assert status == 200 and body["conversation"]["title"] == "Renamed"
    assert call("PUT", f"{base}/{admin}", owner, {"role": "owner"}) == 200  # hand over
    assert members_of(system, cid, m3) == {owner: "admin", admin: "owner", m1: "admin", m3: "member"}
    assert call("DELETE", f"{base}/{owner}", owner) == 204  # now the old owner may leave
    assert call("DELETE", f"{base}/{m3}", m3) == 204  # anyone may leave
    status, body = system.request("GET", f"/v1/conversations/{cid}", user=m1)
    assert status == 200 and body["conversation"]["member_count"] == 2
    assert body["conversation"]["title"] == "Renamed"


def test_bad_group_requests(system: System) -> None:
    owner = user()
    for body, code in [
        ({"kind": "group", "members": []}, "invalid"),  # no title
        ({"kind": "group", "title": "  ", "members": []}, "invalid"),
        ({"kind": "group", "title": "x", "members": ["bad id!"]}, "invalid"),
        ({"kind": "channel", "title": "x"}, "invalid"),
        ({"kind": "group", "title": "x" * 201}, "invalid"),
    ]:
        status, payload = system.request("POST", "/v1/conversations", user=owner, body=body)
        assert (status, payload["error"]["code"]) == (400, code), body
    cid = create_group(system, owner, [])
    status, payload = system.request(
        "POST", f"/v1/conversations/{cid}/members", user=owner, body={"user_ids": []}
    )
    assert status == 400
    status, payload = system.request(
        "PUT", f"/v1/conversations/{cid}/members/{owner}", user=owner, body={"role": "god"}
    )
    assert status == 400
    status, _ = system.request("GET", "/v1/conversations/g:12345", user=owner)
    assert status == 404


async def test_strangers_get_403_on_every_endpoint_and_frame(system: System) -> None:
    owner, member, stranger = user(), user(), user()
    cid = create_group(system, owner, [member])
    base = f"/v1/conversations/{cid}"
    for method, path, body in [
        ("GET", base, None),
        ("PATCH", base, {"title": "x"}),
        ("GET", f"{base}/messages", None),
        ("POST", f"{base}/messages", {"client_msg_id": "c", "body": "hi"}),
        ("GET", f"{base}/members", None),
        ("POST", f"{base}/members", {"user_ids": [stranger]}),
        ("DELETE", f"{base}/members/{member}", None),
        ("DELETE", f"{base}/members/{stranger}", None),
        ("PUT", f"{base}/members/{member}", {"role": "admin"}),
    ]:
        status, payload = system.request(method, path, user=stranger, body=body)
        assert (status, payload["error"]["code"]) == (403, "forbidden"), (method, path, payload)
    async with system.connect(stranger) as client:
        await client.send(
            {"type": "send", "ref": "s", "client_msg_id": "c", "conversation_id": cid, "body": "x"}
        )
        assert (await client.expect("error", ref="s"))["code"] == "forbidden"


@pytest.mark.parametrize("mode", ["small", "large"])
async def test_delivery_removal_and_addition_take_effect_at_once(system: System, mode: str) -> None:
    owner, kept, leaver, joiner = user(), user(), user(), user()
    extra = [user() for _ in range(FANOUT_THRESHOLD + 2)] if mode == "large" else []
    cid = create_group(system, owner, [kept, leaver, *extra])
    async with (
        system.connect(owner, "phone") as owner_phone,
        system.connect(owner, "laptop") as owner_laptop,
        system.connect(kept) as kept_ws,
        system.connect(leaver) as leaver_ws,
        system.connect(joiner) as joiner_ws,
    ):
        await settled(owner_phone, owner_laptop, kept_ws, leaver_ws, joiner_ws)
        first = await owner_phone.send_message(cid, "hello all")
        for client in (owner_phone, owner_laptop, kept_ws, leaver_ws):
            assert (await client.expect("message"))["message"]["message_id"] == first["message_id"]
        await no_message(joiner_ws)

        status, _ = system.request("DELETE", f"/v1/conversations/{cid}/members/{leaver}", user=owner)
        assert status == 204
        status, _ = system.request(
            "POST", f"/v1/conversations/{cid}/members", user=owner, body={"user_ids": [joiner]}
        )
        assert status == 200
        second = await owner_phone.send_message(cid, "after the changes")

        removed = await leaver_ws.expect("conversation", event="removed")
        assert (removed["event"], removed["conversation"]["conversation_id"]) == ("removed", cid)
        await no_message(leaver_ws)
        added = await joiner_ws.expect("conversation", event="added")
        assert (added["event"], added["conversation"]["conversation_id"]) == ("added", cid)
        for client in (owner_phone, owner_laptop, kept_ws, joiner_ws):
            assert (await client.expect("message"))["message"]["message_id"] == second["message_id"]
        # The removed member can no longer read; the new one reads the whole history.
        status, _ = system.request("GET", f"/v1/conversations/{cid}/messages", user=leaver)
        assert status == 403

        def joiner_reads() -> list[dict[str, Any]]:
            _, page = system.request("GET", f"/v1/conversations/{cid}/messages", user=joiner)
            return list(page["messages"])

        await wait_until(lambda: len(joiner_reads()) == 2)
        assert [m["body"] for m in joiner_reads()] == ["hello all", "after the changes"]


async def test_crossing_the_threshold_both_ways_loses_and_duplicates_nothing(system: System) -> None:
    owner, watcher = user(), user()
    small = [user() for _ in range(FANOUT_THRESHOLD - 3)]
    cid = create_group(system, owner, [watcher, *small])
    async with system.connect(watcher) as ws, system.connect(owner) as owner_ws:
        await settled(ws, owner_ws)
        sent = [(await owner_ws.send_message(cid, "small 1"))["message_id"]]
        growth = [user() for _ in range(5)]
        system.request("POST", f"/v1/conversations/{cid}/members", user=owner, body={"user_ids": growth})
        sent.append((await owner_ws.send_message(cid, "large 1"))["message_id"])
        for uid in growth:
            system.request("DELETE", f"/v1/conversations/{cid}/members/{uid}", user=owner)
        sent.append((await owner_ws.send_message(cid, "small 2"))["message_id"])
        got = [(await ws.expect("message"))["message"]["message_id"] for _ in sent]
        assert got == sent
        await no_message(ws)


async def test_a_thousand_member_group(system: System) -> None:
    owner = user()
    online = [user() for _ in range(20)]
    cid = create_group(system, owner, [*online, *(user() for _ in range(979))])
    assert len(members_of(system, cid, owner)) == 1000
    clients = [system.connect(uid) for uid in online]
    entered = [await c.__aenter__() for c in clients]
    try:
        await settled(*entered)
        async with system.connect(owner) as owner_ws:
            ack = await owner_ws.send_message(cid, "to a thousand")
        for client in entered:
            assert (await client.expect("message"))["message"]["message_id"] == ack["message_id"]
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)


async def test_group_creation_pushes_added_frames(system: System) -> None:
    owner, member = user(), user()
    async with system.connect(member) as ws:
        await ws.settled()
        cid = create_group(system, owner, [member], title="Fresh")
        frame = await ws.expect("conversation")
        assert frame["event"] == "added"
        assert orjson.loads(orjson.dumps(frame["conversation"]))["conversation_id"] == cid
        assert frame["conversation"]["title"] == "Fresh"
