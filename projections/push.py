"""Read models ``push_registrations`` and ``conversation_mutes`` (Cassandra), from the
user-events topic.

Each write uses the event's own time as the write timestamp, so applying the log in any order,
twice, or from the start (a replay) leaves the same rows. The gateway writes the same
statements right after appending (read-your-writes); the notify worker applies the topic, so a
write-through lost to a Cassandra outage is made good.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from events import ChatEvent, ConversationMuted, PushRegistered, PushUnregistered
from projections.adapters.cql import Cql

NAME = "push-settings"

_REGISTER = (
    "INSERT INTO {ks}.push_registrations (user_id, device_id, provider, endpoint, device_token, "
    "p256dh, auth, registered_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
)
_UNREGISTER = "DELETE FROM {ks}.push_registrations USING TIMESTAMP ? WHERE user_id = ? AND device_id = ?"
_MUTE = (
    "INSERT INTO {ks}.conversation_mutes (conversation_id, user_id, muted) VALUES (?, ?, ?) USING TIMESTAMP ?"
)
_SELECT_USERS = (
    "SELECT user_id, device_id, provider, endpoint, device_token, p256dh, auth, registered_ts "
    "FROM {ks}.push_registrations WHERE user_id IN ?"
)
_SELECT_DEVICE = (
    "SELECT user_id, device_id, provider, endpoint, device_token, p256dh, auth, registered_ts "
    "FROM {ks}.push_registrations WHERE user_id = ? AND device_id = ?"
)
_SELECT_MUTED = "SELECT user_id, muted FROM {ks}.conversation_mutes WHERE conversation_id = ?"
_SELECT_MUTE = "SELECT muted FROM {ks}.conversation_mutes WHERE conversation_id = ? AND user_id = ?"
STATEMENTS = (_REGISTER, _UNREGISTER, _MUTE, _SELECT_USERS, _SELECT_DEVICE, _SELECT_MUTED, _SELECT_MUTE)

# Users per IN query: Cassandra fans one query out per partition key.
_USERS_PER_QUERY = 100
_QUERIES_IN_FLIGHT = 8


@dataclass(frozen=True)
class Registration:
    user_id: str
    device_id: str
    provider: str
    endpoint: str | None
    token: str | None
    p256dh: str | None
    auth: str | None
    registered_ts: int


def _us(ms: int) -> int:
    return ms * 1000


@functools.singledispatch
def statements(event: ChatEvent) -> list[tuple[str, Sequence[Any]]]:
    return []


@statements.register
def _(event: PushRegistered) -> list[tuple[str, Sequence[Any]]]:
    return [
        (
            _REGISTER,
            (
                event.user_id,
                event.device_id,
                event.provider,
                event.endpoint,
                event.token,
                event.p256dh,
                event.auth,
                event.ts,
                _us(event.ts),
            ),
        )
    ]


@statements.register
def _(event: PushUnregistered) -> list[tuple[str, Sequence[Any]]]:
    # A receiver's 404/410 ends the registration it answered for, and nothing newer (+1 µs:
    # a delete wins a tie with the write it follows).
    at = _us(event.registered_ts) + 1 if event.registered_ts is not None else _us(event.ts)
    return [(_UNREGISTER, (at, event.user_id, event.device_id))]


@statements.register
def _(event: ConversationMuted) -> list[tuple[str, Sequence[Any]]]:
    return [(_MUTE, (event.conversation_id, event.user_id, event.muted, _us(event.ts)))]


def _registration(row: Any) -> Registration:
    return Registration(
        row.user_id,
        row.device_id,
        row.provider,
        row.endpoint,
        row.device_token,
        row.p256dh,
        row.auth,
        row.registered_ts,
    )


class CassandraPushSettings:
    """The projection (a ``Stage``) and its queries."""

    name = NAME

    def __init__(self, cql: Cql) -> None:
        self._cql = cql

    def prepare(self) -> None:
        for cql in STATEMENTS:
            self._cql.prepare(cql)

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        work = [stmt for event in events for stmt in statements(event)]
        # In log order per user; execute_all's batches of one partition run as one mutation,
        # and the write timestamps decide between them.
        await self._cql.execute_all(work)

    async def registrations(self, user_ids: Sequence[str]) -> list[Registration]:
        """Every registered device of ``user_ids``: 100 users per query, at most 8 queries at
        once (a large group's members)."""
        users = list(dict.fromkeys(user_ids))
        slots = asyncio.Semaphore(_QUERIES_IN_FLIGHT)

        async def chunk(first: int) -> list[Any]:
            async with slots:
                return await self._cql.execute_paged(
                    _SELECT_USERS, (users[first : first + _USERS_PER_QUERY],)
                )

        pages = await asyncio.gather(*(chunk(f) for f in range(0, len(users), _USERS_PER_QUERY)))
        return [_registration(r) for rows in pages for r in rows]

    async def registration(self, user_id: str, device_id: str) -> Registration | None:
        rows = await self._cql.execute(_SELECT_DEVICE, (user_id, device_id))
        return _registration(rows[0]) if rows else None

    async def muted(self, conversation_id: str) -> set[str]:
        """Members who muted the conversation."""
        rows = await self._cql.execute_paged(_SELECT_MUTED, (conversation_id,))
        return {r.user_id for r in rows if r.muted}

    async def is_muted(self, conversation_id: str, user_id: str) -> bool:
        rows = await self._cql.execute(_SELECT_MUTE, (conversation_id, user_id))
        return bool(rows and rows[0].muted)
