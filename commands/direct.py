"""Direct conversations: opening one, and making a direct chat known to the read model at once.

A direct conversation exists by its id alone, so nothing has to be created before a send. What
the read model must learn promptly is that the two users now *share* it (presence and ``watch``
are allowed between users who share a conversation): when one of them opens it
(``DirectOpened``), and when the first message in it is acknowledged. Both are written through
to the membership read model right after the append, as group commands are, so the caller's next
request (on any gateway) sees it; the worker applies the same events again, idempotently.
"""

from __future__ import annotations

import logging

from cachetools import LRUCache

from commands.ports import Directory, EventLog, IdGenerator
from events import DirectOpened, MessageSent, dm_members, snowflake_ts
from events.errors import Invalid, Unavailable

log_ = logging.getLogger(__name__)


async def open_direct(
    actor_id: str, conversation_id: str, *, log: EventLog, directory: Directory, ids: IdGenerator
) -> DirectOpened:
    """Append that ``actor_id`` opened the direct conversation, and write it through."""
    members = dm_members(conversation_id)
    if members is None or actor_id not in members:
        raise Invalid("not a direct conversation of the caller")
    other = members[1] if members[0] == actor_id else members[0]
    event_id = ids.next_id()
    event = DirectOpened(
        conversation_id=conversation_id,
        event_id=event_id,
        actor_id=actor_id,
        user_id=other,
        ts=snowflake_ts(event_id),
    )
    await log.append(event)
    await write_through(directory, event)
    return event


async def write_through(directory: Directory, event: DirectOpened | MessageSent) -> bool:
    """Best effort: the event is in the log, so the caller must hear it succeeded even if the
    read model is down (the worker applies it when it is back). True when written."""
    try:
        await directory.apply([event])
    except Unavailable:
        log_.warning("event of %s is in the log but not yet in the read model", event.conversation_id)
        return False
    return True


class DirectChats:
    """The direct conversations this process has written a message of through to the read
    model. Only the first acknowledged send of each (per process) pays for the write; the rows
    it writes are the ones the worker writes for that message."""

    def __init__(self, directory: Directory, *, size: int = 100_000) -> None:
        self._directory = directory
        self._known: LRUCache[str, bool] = LRUCache(maxsize=size)

    async def sent(self, event: MessageSent) -> None:
        cid = event.conversation_id
        if cid in self._known or dm_members(cid) is None:
            return
        if await write_through(self._directory, event):
            self._known[cid] = True
