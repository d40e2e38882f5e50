"""Who may act in a conversation, resolved once for every command and query."""

from __future__ import annotations

from commands.groups import GROUP_PREFIX
from commands.ports import Conversation, ConversationInfo, Directory
from events import DM_PREFIX, Role, dm_members
from events.errors import Forbidden, Invalid, NotFound


async def member_role(directory: Directory, conversation_id: str, user_id: str) -> Role:
    """The user's role; ``Invalid`` for a malformed direct id, ``NotFound`` for an unknown
    conversation, ``Forbidden`` for a non-member. One read for a member of a group (this is on
    the path of every send, receipt and typing frame); the group's row is read only to tell a
    stranger (403) from an unknown id (404)."""
    if conversation_id.startswith(DM_PREFIX):
        members = _dm_members(conversation_id)
        if user_id not in members:
            raise Forbidden("not a member of this conversation")
        return "member"
    if not conversation_id.startswith(GROUP_PREFIX):
        raise NotFound(f"no conversation {conversation_id!r}")
    role = (await directory.roles(conversation_id, [user_id])).get(user_id)
    if role is not None:
        return role
    if await directory.conversation(conversation_id) is None:
        raise NotFound(f"no conversation {conversation_id!r}")
    raise Forbidden("not a member of this conversation")


async def require_member(
    directory: Directory, conversation_id: str, user_id: str
) -> tuple[ConversationInfo, Role]:
    """The conversation and the user's role in it, with the errors of ``member_role``."""
    role = await member_role(directory, conversation_id, user_id)
    if conversation_id.startswith(DM_PREFIX):
        return Conversation(conversation_id, "direct", None, len(set(_dm_members(conversation_id)))), role
    group = await directory.conversation(conversation_id)
    if group is None:  # its row is not readable yet (write-through in flight) or any more
        raise NotFound(f"no conversation {conversation_id!r}")
    return group, role


def _dm_members(conversation_id: str) -> tuple[str, str]:
    members = dm_members(conversation_id)
    if members is None:
        raise Invalid("a direct conversation id is dm:<a>:<b> with two user ids in byte order")
    return members
