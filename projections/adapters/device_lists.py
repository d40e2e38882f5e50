"""Device-list changes of end-to-end encryption: who must hear that a user's devices changed.

The fact is in the log: ``DeviceKeysPublished`` and ``DeviceKeysDeleted`` on the key topic. A
client that shares a conversation with that user must fetch their devices again before it
encrypts (a new device gets the room keys; a deleted one no longer does). This module is the
deliver worker's stage over those events: for every user sharing a conversation with the changed
user (and the user themself, whose other devices encrypt to it too) it

- appends the changed user's id to that user's notice stream in Redis (``devicelists:{uid}``),
  which ``/v1/sync`` reads after the position its cursor carries (``device_lists``), and
- publishes a ``{"type": "device_list", "user_id"}`` frame on that user's channel, so connected
  devices hear it at once.

The stream is a projection like the hot cache: bounded to ``MAX_NOTICES`` per user and expiring
``TTL_S`` after its last change (the to-device queue's bound and lifetime). A device whose
cursor is older than what the stream still holds missed some: it fetches the device lists of
everyone it shares a conversation with, as after its first sync.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson
from redis.exceptions import RedisError

from events import ChatEvent, DeviceKeysDeleted, DeviceKeysPublished, Role, dm_members, keys
from events.errors import Unavailable
from projections.adapters.redis_client import RedisClient, publish
from projections.delivery import MESSAGE

NAME = "device-lists"
MAX_NOTICES = 1000  # per user
TTL_S = 7 * 24 * 3600
_MEMBERS_PAGE = 1000

Contacts = Callable[[str], Awaitable[set[str]]]


class MembershipQueries(Protocol):
    async def conversation_ids(self, user_id: str) -> set[str]: ...
    async def members_page(
        self, conversation_id: str, *, after: str, limit: int
    ) -> list[tuple[str, Role]]: ...


def contacts_from(membership: MembershipQueries) -> Contacts:
    """Everyone sharing a conversation with a user, from the membership read model (the other
    side of each direct chat, every member of each group, paged)."""

    async def contacts(user_id: str) -> set[str]:
        found: set[str] = set()
        for cid in await membership.conversation_ids(user_id):
            pair = dm_members(cid)
            if pair is not None:
                found.update(pair)
                continue
            after = ""
            while page := await membership.members_page(cid, after=after, limit=_MEMBERS_PAGE):
                found.update(uid for uid, _ in page)
                if len(page) < _MEMBERS_PAGE:
                    break
                after = page[-1][0]
        return found

    return contacts


def device_list_frame(user_id: str) -> bytes:
    return orjson.dumps({"type": "device_list", "user_id": user_id})


class DeviceListNotices:
    """The stage: notices and frames for every device-list change of a batch of key events."""

    name = NAME

    def __init__(
        self, redis: RedisClient, contacts: Contacts, *, max_len: int = MAX_NOTICES, ttl_s: int = TTL_S
    ) -> None:
        self._redis = redis
        self._contacts = contacts
        self._max_len = max_len
        self._ttl_s = ttl_s

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        changed = [e.user_id for e in events if isinstance(e, (DeviceKeysPublished, DeviceKeysDeleted))]
        for user_id in dict.fromkeys(changed):
            recipients = sorted(await self._contacts(user_id) | {user_id})
            frame = MESSAGE + device_list_frame(user_id)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for uid in recipients:
                        stream = keys.device_lists(uid)
                        pipe.xadd(stream, {"u": user_id}, maxlen=self._max_len, approximate=False)
                        pipe.expire(stream, self._ttl_s)
                        publish(pipe, keys.user_channel(uid), frame)
                    await pipe.execute()
            except RedisError as exc:
                raise Unavailable("Redis did not take the device-list notices") from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDeviceLists:
    """What ``/v1/sync`` reads: the users whose device lists changed after a position of the
    syncing user's notice stream (positions are Redis stream ids, ``<ms>-<seq>``)."""

    def __init__(self, redis: RedisClient, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._clock = clock

    async def head(self, user_id: str) -> str:
        """The position of the newest notice (``0-0`` when none): a first sync starts there."""
        try:
            rows = await self._redis.xrevrange(keys.device_lists(user_id), count=1)
        except RedisError as exc:
            raise Unavailable("the device-list notices are unavailable") from exc
        return _text(rows[0][0]) if rows else "0-0"

    async def after(self, user_id: str, position: str, limit: int) -> tuple[list[str], str, bool]:
        """The distinct users of up to ``limit`` notices after ``position`` (oldest first), the
        position to carry next, and whether more are waiting."""
        try:
            rows = await self._redis.xrange(
                keys.device_lists(user_id), min=f"({position}", max="+", count=limit + 1
            )
        except RedisError as exc:
            raise Unavailable("the device-list notices are unavailable") from exc
        rows = rows or []
        more = len(rows) > limit
        rows = rows[:limit]
        users = [_text((fields or {}).get(b"u", (fields or {}).get("u", b""))) for _, fields in rows]
        return list(dict.fromkeys(users)), _text(rows[-1][0]) if rows else position, more
