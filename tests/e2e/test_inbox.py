"""The inbox: most recent activity first, previews, unread counts, cursor paging, for direct
chats, small groups and large groups."""

from __future__ import annotations

from typing import Any

from events import direct_conversation_id
from tests.e2e.conftest import FANOUT_THRESHOLD, System, user, wait_until
from tests.e2e.test_groups import create_group


def inbox(system: System, who: str, limit: int = 50) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    path = f"/v1/conversations?limit={limit}"
    while True:
        status, body = system.request("GET", path, user=who)
        assert status == 200, body
        out += body["conversations"]
        if body["next"] is None:
            return out
        path = f"/v1/conversations?limit={limit}&before={body['next']}"


async def _settled(system: System, who: str, check: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []

    def shown() -> bool:
        nonlocal items
        items = inbox(system, who)
        return bool(check(items))

    await wait_until(shown)
    return items


async def test_inbox_orders_previews_counts_and_pages(system: System) -> None:
    me, friend, owner = user(), user(), user()
    dm = direct_conversation_id(me, friend)
    small = create_group(system, owner, [me], title="Small")
    large = create_group(system, owner, [me, *(user() for _ in range(FANOUT_THRESHOLD + 1))], title="Large")
    async with system.connect(friend) as friend_ws, system.connect(owner) as owner_ws:
        await friend_ws.send_message(dm, "dm one")
        await owner_ws.send_message(small, "small one")
        await owner_ws.send_message(large, "large one")
        await owner_ws.send_message(large, "large two")
        await friend_ws.send_message(dm, "dm two " + "x" * 150)

    items = await _settled(
        system,
        me,
        lambda xs: (
            len(xs) == 3
            and xs[0]["last_message"] is not None
            and xs[0]["last_message"]["preview"].startswith("dm two")
        ),
    )
    assert [i["conversation_id"] for i in items] == [dm, large, small]
    by_id = {i["conversation_id"]: i for i in items}
    assert by_id[dm]["kind"] == "direct" and by_id[dm]["member_count"] == 2
    assert len(by_id[dm]["last_message"]["preview"]) == 100
    assert by_id[large]["title"] == "Large" and by_id[large]["member_count"] == FANOUT_THRESHOLD + 3
    assert by_id[large]["last_message"]["preview"] == "large two"
    assert [by_id[c]["unread_count"] for c in (dm, large, small)] == [2, 2, 1]
    # Paging one at a time gives the same order.
    assert [i["conversation_id"] for i in inbox(system, me, limit=1)] == [dm, large, small]

    # Writing in a conversation reads it: the unread count drops to zero.
    async with system.connect(me) as me_ws:
        await me_ws.send_message(large, "read it")
    items = await _settled(
        system, me, lambda xs: xs[0]["conversation_id"] == large and xs[0]["unread_count"] == 0
    )
    by_id = {i["conversation_id"]: i for i in items}
    assert items[0]["conversation_id"] == large
    assert by_id[large]["unread_count"] == 0 and by_id[dm]["unread_count"] == 2


def test_a_removed_group_leaves_the_inbox_and_bad_cursors_are_rejected(system: System) -> None:
    owner, me = user(), user()
    cid = create_group(system, owner, [me])
    assert [i["conversation_id"] for i in inbox(system, me)] == [cid]
    status, _ = system.request("DELETE", f"/v1/conversations/{cid}/members/{me}", user=me)
    assert status == 204
    assert inbox(system, me) == []
    status, body = system.request("GET", "/v1/conversations?before=!!notacursor", user=me)
    assert status == 400 and body["error"]["code"] == "invalid"
