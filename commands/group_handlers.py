"""Handlers of the group commands: lock the group, read its state, decide, append, write through.

Membership changes of one group are serialized by a lock across gateway processes, so the
member count carried by each event (and the 200,000-member limit) is exact. Sends take no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
        rule = _RULES[type(cmd)]
        state = await _state(directory, cmd.conversation_id, cmd.actor_id, rule.named(cmd))
        event_id = ids.next_id()
        event = rule.decide(cmd, state, event_id, snowflake_ts(event_id), max_members)
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


@dataclass(frozen=True)
class _Rule:
    """How a group command is decided, and which users besides the actor it names (their roles
    are read with the actor's)."""

    decide: Callable[[Any, GroupState, int, int, int], GroupEvent | None]  # cmd, state, id, ts, max
    named: Callable[[Any], Sequence[str]]


# One entry per group command (``CreateGroup`` has no group to lock yet: ``create_group``).
_RULES: dict[type[GroupCommand], _Rule] = {
    AddMembers: _Rule(
        lambda cmd, state, event_id, ts, max_members: decide_add(
            cmd, state, event_id=event_id, ts=ts, max_members=max_members
        ),
        lambda cmd: cmd.user_ids,
    ),
    RemoveMember: _Rule(
        lambda cmd, state, event_id, ts, _: decide_remove(cmd, state, event_id=event_id, ts=ts),
        lambda cmd: (cmd.user_id,),
    ),
    ChangeRole: _Rule(
        lambda cmd, state, event_id, ts, _: decide_role(cmd, state, event_id=event_id, ts=ts),
        lambda cmd: (cmd.user_id,),
    ),
    RenameGroup: _Rule(
        lambda cmd, state, event_id, ts, _: decide_rename(cmd, state, event_id=event_id, ts=ts),
        lambda cmd: (),
    ),
}


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
