"""Which pub/sub channels an event is pushed to, and with which frame.

The push is the fast path only: pub/sub drops messages during outages, and clients that
reconnect sync from the read models, which are the truth.
"""

from __future__ import annotations

from functools import singledispatch

from events import ChatEvent, MessageSent, dm_members, keys
from projections.wire import message_frame, message_json


@singledispatch
def deliveries(event: ChatEvent) -> list[tuple[str, bytes]]:
    """``(channel, frame bytes)`` pairs to publish for ``event``."""
    return []


@deliveries.register
def _(event: MessageSent) -> list[tuple[str, bytes]]:
    members = dm_members(event.conversation_id) or ()
    frame = message_frame(message_json(event))
    return [(keys.user_channel(uid), frame) for uid in dict.fromkeys(members)]
