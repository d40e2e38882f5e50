"""The worker's roster follows membership in log order, across the fan-out threshold."""

from __future__ import annotations

from events import GroupCreated, Member, MemberRemoved, MembersAdded
from projections.roster import Entry, Roster

CID = "g:1"


def _created(n: int) -> GroupCreated:
    members = tuple(Member(user_id=f"u{i}", role="owner" if i == 0 else "member") for i in range(n))
    return GroupCreated(
        conversation_id=CID, event_id=1, actor_id="u0", ts=1, title="t", members=members, member_count=n
    )


async def _loader_from(table: dict[str, set[str]]) -> Roster:
    async def load(cid: str, threshold: int) -> Entry:
        members = table.get(cid, set())
        return Entry(len(members), set(members) if len(members) < threshold else None, "t")

    return Roster(load, threshold=4)


async def test_follows_adds_and_removes_and_switches_modes() -> None:
    table: dict[str, set[str]] = {}
    roster = await _loader_from(table)
    await roster.observe(_created(2))
    assert await roster.recipients(CID) == ["u0", "u1"]
    add = MembersAdded(
        conversation_id=CID,
        event_id=2,
        actor_id="u0",
        ts=2,
        members=(Member(user_id="u2", role="member"), Member(user_id="u3", role="member")),
        member_count=4,
    )
    await roster.observe(add)
    assert await roster.recipients(CID) is None  # reached the threshold: publish once
    await roster.observe(add)  # redelivered: no change
    assert (await roster.group(CID)).member_count == 4
    table[CID] = {"u0", "u1", "u2"}  # what the read model holds after the removal
    await roster.observe(
        MemberRemoved(conversation_id=CID, event_id=3, actor_id="u0", ts=3, user_id="u3", member_count=3)
    )
    assert await roster.recipients(CID) == ["u0", "u1", "u2"]  # below again: listed from the model


async def test_direct_chats_need_no_lookup() -> None:
    roster = await _loader_from({})
    assert await roster.recipients("dm:a:b") == ["a", "b"]
    assert await roster.recipients("dm:a:a") == ["a"]


async def test_unknown_groups_are_loaded_once() -> None:
    calls = []

    async def load(cid: str, threshold: int) -> Entry:
        calls.append(cid)
        return Entry(2, {"x", "y"}, None)

    roster = Roster(load, threshold=10)
    assert await roster.recipients("g:9") == ["x", "y"]
    assert await roster.recipients("g:9") == ["x", "y"]
    assert calls == ["g:9"]
