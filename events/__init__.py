"""The event catalogue: every fact Tidings records, as frozen pydantic models.

Events are named in the past tense, carry ``type`` and ``v``, and are the only thing written to
Kafka. Everything else in Tidings (read models, caches, the archive) is derived from them.
"""

from events import errors, keys
from events.catalogue import (
    USER_EVENTS,
    ChatEvent,
    ConversationMuted,
    DirectOpened,
    GroupCreated,
    GroupEvent,
    GroupRenamed,
    MediaRef,
    Member,
    MemberRemoved,
    MemberRoleChanged,
    MembersAdded,
    MessageKind,
    MessageSent,
    OwnershipTransferred,
    PresenceChanged,
    PresenceState,
    PushProvider,
    PushRegistered,
    PushUnregistered,
    ReceiptRecorded,
    Role,
    UserEvent,
    decode_event,
    encode_event,
)
from events.ids import Snowflake, SnowflakeClockError, snowflake_ts
from events.naming import (
    DM_PREFIX,
    direct_conversation_id,
    dm_members,
    is_valid_user_id,
)
from events.topics import Topics, partition_key

__all__ = [
    "DM_PREFIX",
    "USER_EVENTS",
    "ChatEvent",
    "ConversationMuted",
    "DirectOpened",
    "GroupCreated",
    "GroupEvent",
    "GroupRenamed",
    "MediaRef",
    "Member",
    "MemberRemoved",
    "MemberRoleChanged",
    "MembersAdded",
    "MessageKind",
    "MessageSent",
    "OwnershipTransferred",
    "PresenceChanged",
    "PresenceState",
    "PushProvider",
    "PushRegistered",
    "PushUnregistered",
    "ReceiptRecorded",
    "Role",
    "Snowflake",
    "SnowflakeClockError",
    "Topics",
    "UserEvent",
    "decode_event",
    "direct_conversation_id",
    "dm_members",
    "encode_event",
    "errors",
    "is_valid_user_id",
    "keys",
    "partition_key",
    "snowflake_ts",
]
