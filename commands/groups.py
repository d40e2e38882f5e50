"""Group commands and the pure decisions behind them.

Permissions, as group chat users expect them:
- anyone may create a group (and becomes its owner) and any member may leave, except the owner,
  who hands ownership over first;
- the owner and admins add members and rename the group; they remove members, but only the
  owner removes an admin, and nobody removes the owner;
- only the owner makes or unmakes admins and hands over ownership.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from events import (
    GroupCreated,
    GroupRenamed,
    Member,
    MemberRemoved,
    MemberRoleChanged,
    MembersAdded,
    OwnershipTransferred,
    Role,
    is_valid_user_id,
)
from events.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge

GROUP_PREFIX = "g:"
MAX_TITLE_CHARS = 200
_MANAGERS = ("owner", "admin")


def group_id(event_id: int) -> str:
    return f"{GROUP_PREFIX}{event_id}"


@dataclass(frozen=True)
class GroupState:
    """What the write side knows of a group when it decides."""

    conversation_id: str
    member_count: int
    actor_role: Role | None
    # roles of the users a command names (absent: not a member)
    roles: dict[str, Role]


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    actor_id: str


class CreateGroup(_Command):
    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    members: tuple[str, ...] = ()
    encrypted: bool = False  # end-to-end encrypted, for good


class AddMembers(_Command):
    conversation_id: str
    user_ids: tuple[str, ...] = Field(min_length=1)


class RemoveMember(_Command):
    conversation_id: str
    user_id: str


class ChangeRole(_Command):
    conversation_id: str
    user_id: str
    role: Role


class RenameGroup(_Command):
    conversation_id: str
    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)


def _check_ids(user_ids: tuple[str, ...]) -> tuple[str, ...]:
    bad = [u for u in user_ids if not is_valid_user_id(u)]
    if bad:
        raise Invalid(f"invalid user id {bad[0]!r}")
    return tuple(dict.fromkeys(user_ids))


def _require_member(state: GroupState) -> Role:
    if state.actor_role is None:
        raise Forbidden("not a member of this conversation")
    return state.actor_role


def decide_create(cmd: CreateGroup, *, event_id: int, ts: int, max_members: int) -> GroupCreated:
    if not cmd.title.strip():
        raise Invalid("title must not be blank")
    others = [u for u in _check_ids(cmd.members) if u != cmd.actor_id]
    if len(others) + 1 > max_members:
        raise TooLarge(f"a group has at most {max_members} members")
    members = (
        Member(user_id=cmd.actor_id, role="owner"),
        *(Member(user_id=u, role="member") for u in others),
    )
    return GroupCreated(
        conversation_id=group_id(event_id),
        event_id=event_id,
        actor_id=cmd.actor_id,
        ts=ts,
        title=cmd.title.strip(),
        members=members,
        member_count=len(members),
        encrypted=cmd.encrypted,
    )


def decide_add(
    cmd: AddMembers, state: GroupState, *, event_id: int, ts: int, max_members: int
) -> MembersAdded | None:
    """The event adding whoever is not a member yet; ``None`` when all already are."""
    if _require_member(state) not in _MANAGERS:
        raise Forbidden("only the owner or an admin adds members")
    new = [u for u in _check_ids(cmd.user_ids) if u not in state.roles]
    if not new:
        return None
    if state.member_count + len(new) > max_members:
        raise TooLarge(f"a group has at most {max_members} members")
    return MembersAdded(
        conversation_id=state.conversation_id,
        event_id=event_id,
        actor_id=cmd.actor_id,
        ts=ts,
        members=tuple(Member(user_id=u, role="member") for u in new),
        member_count=state.member_count + len(new),
    )


def decide_remove(cmd: RemoveMember, state: GroupState, *, event_id: int, ts: int) -> MemberRemoved:
    actor_role = _require_member(state)
    target_role = state.roles.get(cmd.user_id)
    if target_role is None:
        raise NotFound(f"{cmd.user_id!r} is not a member")
    if cmd.user_id == cmd.actor_id:
        if actor_role == "owner":
            raise Conflict("the owner hands ownership over before leaving")
    elif actor_role not in _MANAGERS:
        raise Forbidden("only the owner or an admin removes members")
    elif target_role == "owner" or (target_role == "admin" and actor_role != "owner"):
        raise Forbidden(f"an {actor_role} cannot remove the {target_role}")
    return MemberRemoved(
        conversation_id=state.conversation_id,
        event_id=event_id,
        actor_id=cmd.actor_id,
        ts=ts,
        user_id=cmd.user_id,
        member_count=state.member_count - 1,
    )


def decide_role(
    cmd: ChangeRole, state: GroupState, *, event_id: int, ts: int
) -> MemberRoleChanged | OwnershipTransferred | None:
    """``None`` when the member already has that role."""
    if _require_member(state) != "owner":
        raise Forbidden("only the owner changes roles")
    current = state.roles.get(cmd.user_id)
    if current is None:
        raise NotFound(f"{cmd.user_id!r} is not a member")
    if current == cmd.role:
        return None
    common = dict(conversation_id=state.conversation_id, event_id=event_id, actor_id=cmd.actor_id, ts=ts)
    if cmd.role == "owner":
        return OwnershipTransferred(user_id=cmd.user_id, **common)  # type: ignore[arg-type]
    if cmd.user_id == cmd.actor_id:
        raise Conflict("the owner hands ownership over instead of stepping down")
    return MemberRoleChanged(user_id=cmd.user_id, role=cmd.role, **common)  # type: ignore[arg-type]


def decide_rename(cmd: RenameGroup, state: GroupState, *, event_id: int, ts: int) -> GroupRenamed:
    if _require_member(state) not in _MANAGERS:
        raise Forbidden("only the owner or an admin renames the group")
    if not cmd.title.strip():
        raise Invalid("title must not be blank")
    return GroupRenamed(
        conversation_id=state.conversation_id,
        event_id=event_id,
        actor_id=cmd.actor_id,
        ts=ts,
        title=cmd.title.strip(),
    )
