"""Handlers of the group commands: lock the group, read its state, decide, append, write through.

Membership changes of one group are serialized by a lock across gateway processes, so the
member count carried by each event (and the 200,000-member limit) is exact. Sends take no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from commands.groups import (
    AddMembers,
    ChangeRole,
    CreateGroup,
    GroupState,
    RemoveMember,
    RenameGroup,
    decide_add,
    decide_create,
    decide_remove,
    decide_rename,
    decide_role,
)
from commands.ports import Directory, EventLog, IdGenerator, Locks
from events import GroupEvent, snowflake_ts
from events.errors import Forbidden, NotFound, Unavailable

log_ = logging.getLogger(__name__)

GroupCommand = AddMembers | RemoveMember | ChangeRole | RenameGroup


async def create_group(
    cmd: CreateGroup, *, log: EventLog, directory: Directory, ids: IdGenerator, max_members: int
) -> GroupEvent:
    event_id = ids.next_id()
    event = decide_create(cmd, event_id=event_id, ts=snowflake_ts(event_id), max_members=max_members)
    await log.append(event)
    await _write_through(directory, event)
    return event


async def change_group(
    cmd: GroupCommand,
    *,
    log: EventLog,
    directory: Directory,
    locks: Locks,
    ids: IdGenerator,
    max_members: int,
) -> GroupEvent | None:
    """Apply one membership or metadata change; ``None`` when it changes nothing."""
    async with locks.hold(f"conversation:{cmd.conversation_id}"):
        state = await _state(directory, cmd.conversation_id, cmd.actor_id, _named(cmd))
        event_id = ids.next_id()
        ts = snowflake_ts(event_id)
        event: GroupEvent | None
        if isinstance(cmd, AddMembers):
            event = decide_add(cmd, state, event_id=event_id, ts=ts, max_members=max_members)
        elif isinstance(cmd, RemoveMember):
            event = decide_remove(cmd, state, event_id=event_id, ts=ts)
        elif isinstance(cmd, ChangeRole):
            event = decide_role(cmd, state, event_id=event_id, ts=ts)
        else:
            event = decide_rename(cmd, state, event_id=event_id, ts=ts)
        if event is not None:
            await log.append(event)
            await _write_through(directory, event)
        return event


async def _write_through(directory: Directory, event: GroupEvent) -> None:
    """The event is in the log: the caller must hear it succeeded even if the read model is
    down (the worker applies it when it is back; only read-your-writes is lost meanwhile)."""
    try:
        await directory.apply([event])
    except Unavailable:
        log_.warning("group event %s is in the log but not yet in the read model", event.event_id)


def _named(cmd: GroupCommand) -> Sequence[str]:
    if isinstance(cmd, AddMembers):
        return cmd.user_ids
    if isinstance(cmd, (RemoveMember, ChangeRole)):
        return (cmd.user_id,)
    return ()


async def _state(
    directory: Directory, conversation_id: str, actor_id: str, named: Sequence[str]
) -> GroupState:
    info = await directory.conversation(conversation_id)
    if info is None or info.kind != "group":
        raise NotFound(f"no group {conversation_id!r}")
    roles = await directory.roles(conversation_id, [actor_id, *named])
    if actor_id not in roles:
        raise Forbidden("not a member of this conversation")
    return GroupState(conversation_id, info.member_count, roles[actor_id], roles)
