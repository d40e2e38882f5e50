"""Group commands with fakes: the permission rules, limits, and what gets appended."""

from __future__ import annotations

import pytest

from commands.group_handlers import change_group, create_group
from commands.groups import AddMembers, ChangeRole, CreateGroup, RemoveMember, RenameGroup
from commands.memory import MemoryDirectory, MemoryEventLog, MemoryLocks
from events import GroupCreated, MemberRemoved, MembersAdded, OwnershipTransferred
from events.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge
from events.ids import Snowflake


@pytest.fixture
def ports() -> dict[str, object]:
    return {"log": MemoryEventLog(), "directory": MemoryDirectory(), "ids": Snowflake(3), "max_members": 6}


async def _group(ports: dict, members: tuple[str, ...] = ("admin", "m1", "m2")) -> str:
    event = await create_group(CreateGroup(actor_id="owner", title="Team", members=members), **ports)
    assert isinstance(event, GroupCreated)
    await change_group(
        ChangeRole(actor_id="owner", conversation_id=event.conversation_id, user_id="admin", role="admin"),
        locks=MemoryLocks(),
        **ports,
    )
    return event.conversation_id


async def _change(ports: dict, cmd: object) -> object:
    return await change_group(cmd, locks=MemoryLocks(), **ports)  # type: ignore[arg-type]


async def test_create_makes_the_caller_owner_and_dedupes(ports: dict) -> None:
    event = await create_group(
        CreateGroup(actor_id="owner", title=" Team ", members=("a", "a", "owner")), **ports
    )
    assert isinstance(event, GroupCreated)
    assert [(m.user_id, m.role) for m in event.members] == [("owner", "owner"), ("a", "member")]
    assert event.member_count == 2 and event.title == "Team"
    assert event.conversation_id == f"g:{event.event_id}"
    assert ports["directory"].members[event.conversation_id] == {"owner": "owner", "a": "member"}


@pytest.mark.parametrize(
    ("cmd", "error"),
    [
        (CreateGroup(actor_id="o", title="t", members=tuple(f"u{i}" for i in range(6))), TooLarge),
        (CreateGroup(actor_id="o", title="   "), Invalid),
        (CreateGroup(actor_id="o", title="t", members=("no spaces",)), Invalid),
    ],
)
async def test_bad_creates(ports: dict, cmd: CreateGroup, error: type) -> None:
    with pytest.raises(error):
        await create_group(cmd, **ports)
    assert ports["log"].events == []


async def test_permission_matrix(ports: dict) -> None:
    cid = await _group(ports)
    denied = [
        (AddMembers(actor_id="m1", conversation_id=cid, user_ids=("x",)), Forbidden),
        (RemoveMember(actor_id="m1", conversation_id=cid, user_id="m2"), Forbidden),
        (RemoveMember(actor_id="admin", conversation_id=cid, user_id="owner"), Forbidden),
        (RemoveMember(actor_id="owner", conversation_id=cid, user_id="owner"), Conflict),
        (RemoveMember(actor_id="owner", conversation_id=cid, user_id="stranger"), NotFound),
        (ChangeRole(actor_id="admin", conversation_id=cid, user_id="m1", role="admin"), Forbidden),
        (ChangeRole(actor_id="owner", conversation_id=cid, user_id="owner", role="member"), Conflict),
        (RenameGroup(actor_id="m1", conversation_id=cid, title="x"), Forbidden),
        (AddMembers(actor_id="stranger", conversation_id=cid, user_ids=("x",)), Forbidden),
        (AddMembers(actor_id="owner", conversation_id="g:404", user_ids=("x",)), NotFound),
        (AddMembers(actor_id="owner", conversation_id=cid, user_ids=("x", "y", "z")), TooLarge),
    ]
    before = len(ports["log"].events)
    for cmd, error in denied:
        with pytest.raises(error):
            await _change(ports, cmd)
    assert len(ports["log"].events) == before


async def test_admins_remove_members_only_the_owner_removes_admins(ports: dict) -> None:
    cid = await _group(ports)
    await _change(ports, ChangeRole(actor_id="owner", conversation_id=cid, user_id="m1", role="admin"))
    with pytest.raises(Forbidden):
        await _change(ports, RemoveMember(actor_id="admin", conversation_id=cid, user_id="m1"))
    removed = await _change(ports, RemoveMember(actor_id="admin", conversation_id=cid, user_id="m2"))
    assert isinstance(removed, MemberRemoved) and removed.member_count == 3
    removed = await _change(ports, RemoveMember(actor_id="owner", conversation_id=cid, user_id="m1"))
    assert isinstance(removed, MemberRemoved) and removed.member_count == 2


async def test_adding_existing_members_appends_nothing(ports: dict) -> None:
    cid = await _group(ports)
    before = len(ports["log"].events)
    assert (
        await _change(ports, AddMembers(actor_id="owner", conversation_id=cid, user_ids=("m1", "admin")))
        is None
    )
    added = await _change(ports, AddMembers(actor_id="admin", conversation_id=cid, user_ids=("m1", "new")))
    assert isinstance(added, MembersAdded)
    assert [m.user_id for m in added.members] == ["new"] and added.member_count == 5
    assert len(ports["log"].events) == before + 1


async def test_handover_then_the_old_owner_may_leave(ports: dict) -> None:
    cid = await _group(ports)
    handover = await _change(
        ports, ChangeRole(actor_id="owner", conversation_id=cid, user_id="m1", role="owner")
    )
    assert isinstance(handover, OwnershipTransferred)
    assert ports["directory"].members[cid]["owner"] == "admin"
    assert ports["directory"].members[cid]["m1"] == "owner"
    left = await _change(ports, RemoveMember(actor_id="owner", conversation_id=cid, user_id="owner"))
    assert isinstance(left, MemberRemoved)
    assert "owner" not in ports["directory"].members[cid]


async def test_a_read_model_outage_after_the_append_still_answers_success(ports: dict) -> None:
    from events.errors import Unavailable

    class Down(MemoryDirectory):
        async def apply(self, events: object) -> None:
            raise Unavailable("cassandra down")

    ports["directory"] = Down()
    event = await create_group(CreateGroup(actor_id="owner", title="Team"), **ports)
    assert ports["log"].events == [event]  # in the log, which is what counts
