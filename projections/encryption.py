"""Read model ``conversation_encryption``: which conversations are end-to-end encrypted.

Consumes ``GroupCreated`` (``encrypted: true``) and ``EncryptionEnabled`` (a direct
conversation, the first time either side asks). A row is only ever inserted, always with the
same value, so any order of arrival, a redelivery and a replay give the same table, and nothing
un-sets it. Applied as part of the membership read model (``projections/membership.py``), so the
gateway's write-through after a creation and the worker's apply write it the same way.

The send path asks ``encrypted`` for every send (the protocol's rule: only ``encrypted``
messages there, and none elsewhere); the conversation objects carry the flag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from functools import singledispatch
from typing import Any

from cachetools import LRUCache, TTLCache
from prometheus_client import Counter

from events import ChatEvent, EncryptionEnabled, GroupCreated
from events.errors import Unavailable
from projections.adapters.cql import Cql

NAME = "conversation_encryption"
# How long a process trusts "not encrypted" before reading again (see EncryptionFlags).
PLAIN_TTL_S = 1.0

Statement = tuple[str, tuple[Any, ...]]

STALE_PLAIN = Counter(
    "tidings_encryption_stale_plain_total",
    "Sends judged 'not encrypted' from a process's last read, Cassandra being unavailable",
)

_INSERT = "INSERT INTO {ks}.conversation_encryption (conversation_id, encrypted) VALUES (?, true)"
_SELECT = "SELECT conversation_id FROM {ks}.conversation_encryption WHERE conversation_id = ?"
_SELECT_MANY = "SELECT conversation_id FROM {ks}.conversation_encryption WHERE conversation_id IN ?"
STATEMENTS = (_INSERT, _SELECT, _SELECT_MANY)


@singledispatch
def statements(event: ChatEvent) -> list[Statement]:
    """The upserts ``event`` causes in this read model (none for most events)."""
    return []


@statements.register
def _(event: GroupCreated) -> list[Statement]:
    return [(_INSERT, (event.conversation_id,))] if event.encrypted else []


@statements.register
def _(event: EncryptionEnabled) -> list[Statement]:
    return [(_INSERT, (event.conversation_id,))]


class EncryptionFlags:
    """Queries over ``conversation_encryption``, on the path of every send. Encryption is never
    turned off, so a conversation once seen encrypted is remembered by the process for good;
    "not encrypted" is trusted for ``plain_ttl_s`` (a burst of sends in one conversation costs
    one read a second, not one per send). So a gateway other than the one that turned a direct
    chat's encryption on may accept a plaintext send for up to that long after it
    (docs/e2ee.md); the gateway that turned it on knows at once (``note``). A group is encrypted
    by its creation event, before anyone can send to it.

    While Cassandra is unavailable, a conversation this process last read as "not encrypted"
    keeps that answer (``stale_answers`` counts them), so direct chats stay writable through an
    outage, as they were before encryption existed; one never read raises ``Unavailable``. The
    window above then lasts as long as the outage, for a chat turned encrypted on another
    gateway (docs/e2ee.md)."""

    def __init__(
        self,
        cql: Cql,
        *,
        cache_size: int = 100_000,
        plain_ttl_s: float = PLAIN_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cql = cql
        self._known: LRUCache[str, bool] = LRUCache(maxsize=cache_size)
        self._plain: TTLCache[str, bool] = TTLCache(maxsize=cache_size, ttl=plain_ttl_s, timer=clock)
        self._last_plain: LRUCache[str, bool] = LRUCache(maxsize=cache_size)
        self.stale_answers = 0

    def prepare(self) -> None:
        for cql in STATEMENTS:
            self._cql.prepare(cql)

    async def encrypted(self, conversation_id: str) -> bool:
        """Whether the conversation is end-to-end encrypted."""
        if conversation_id in self._known:
            return True
        if conversation_id in self._plain:
            return False
        try:
            rows = await self._cql.execute(_SELECT, (conversation_id,))
        except Unavailable:
            if conversation_id not in self._last_plain:
                raise
            self.stale_answers += 1
            STALE_PLAIN.inc()
            return False
        if rows:
            self._known[conversation_id] = True
            self._last_plain.pop(conversation_id, None)
        else:
            self._plain[conversation_id] = True
            self._last_plain[conversation_id] = True
        return bool(rows)

    def note(self, events: Sequence[ChatEvent]) -> None:
        """Remember the conversations ``events`` make encrypted (after writing them through)."""
        for event in events:
            for _, (conversation_id,) in statements(event):
                self._known[conversation_id] = True
                self._plain.pop(conversation_id, None)
                self._last_plain.pop(conversation_id, None)

    async def encrypted_of(self, conversation_ids: Iterable[str]) -> set[str]:
        """Those of ``conversation_ids`` that are encrypted (one read for the unknown ones)."""
        ids = list(dict.fromkeys(conversation_ids))
        found = {cid for cid in ids if cid in self._known}
        rest = [cid for cid in ids if cid not in found]
        for start in range(0, len(rest), 100):
            rows = await self._cql.execute(_SELECT_MANY, (rest[start : start + 100],))
            for row in rows:
                self._known[row.conversation_id] = True
                found.add(row.conversation_id)
        return found
