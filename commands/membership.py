"""Who may act in a conversation, resolved once for every command and query."""

from __future__ import annotations

from commands.groups import GROUP_PREFIX
from commands.ports import Conversation, ConversationInfo, Directory
from events import Role, dm_members
from events.errors import Forbidden, Invalid, NotFound

DM_PREFIX = "dm:"


async def require_member(
    directory: Directory, conversation_id: str, user_id: str
) -> tuple[ConversationInfo, Role]:
    """The conversation and the user's role in it; ``Invalid`` for a malformed direct id,
    ``NotFound`` for an unknown conversation, ``Forbidden`` for a non-member."""
    if conversation_id.startswith(DM_PREFIX):
        members = dm_members(conversation_id)
        if members is None:
            raise Invalid("a direct conversation id is dm:<a>:<b> with two user ids in byte order")
        if user_id not in members:
            raise Forbidden("not a member of this conversation")
        info = Conversation(conversation_id, "direct", None, len(set(members)))
        return info, "member"
    group = (
        await directory.conversation(conversation_id) if conversation_id.startswith(GROUP_PREFIX) else None
    )
    if group is None:
        raise NotFound(f"no conversation {conversation_id!r}")
    role = (await directory.roles(conversation_id, [user_id])).get(user_id)
    if role is None:
        raise Forbidden("not a member of this conversation")
    return group, role
