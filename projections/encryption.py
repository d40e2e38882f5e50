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

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import singledispatch
from typing import Any

from cachetools import LRUCache
from prometheus_client import Counter

from events import ChatEvent, EncryptionEnabled, GroupCreated
from events.errors import Unavailable
from projections.adapters.cql import Cql

log = logging.getLogger(__name__)

NAME = "conversation_encryption"
# How long a process trusts "not encrypted" before reading again (see EncryptionFlags): on
# its own, and while it hears the gateways' broadcasts of newly encrypted direct chats.
PLAIN_TTL_S = 1.0
WATCHED_PLAIN_TTL_S = 10.0

Statement = tuple[str, tuple[Any, ...]]

STALE_PLAIN = Counter(
    "tidings_encryption_stale_plain_total",
    "Sends judged 'not encrypted' from a process's last read, Cassandra being unavailable",
)

_INSERT = "INSERT INTO {ks}.conversation_encryption (conversation_id, encrypted) VALUES (?, true)"
_SELECT = "SELECT conversation_id FROM {ks}.conversation_encryption WHERE conversation_id = ?"
_SELECT_MANY = "SELECT conversation_id FROM {ks}.conversation_encryption WHERE conversation_id IN ?"
STATEMENTS = (_INSERT, _SELECT, _SELECT_MANY)
# Conversations per IN query (``encrypted_of`` and the refresh).
_IDS_PER_QUERY = 100


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
    turned off, so a conversation once seen encrypted is remembered by the process for good.

    "Not encrypted" is trusted for a while after a read, so a burst of sends in one conversation
    costs one read, not one per send: for ``plain_ttl_s`` (1 s) on its own, and for
    ``watched_plain_ttl_s`` (10 s) while the process hears the gateways' broadcasts of the
    direct chats they turn encrypted (``watching``, set by
    ``projections.adapters.encryption_broadcasts``): then another gateway's change reaches this
    one within the broadcast's latency (``heard``), and the longer interval only bounds the case
    of a broadcast lost without the subscription noticing (docs/e2ee.md). Starting or stopping
    to watch forgets every "not encrypted" (broadcasts may have been missed meanwhile); a read
    that was in flight across that, or across a broadcast of its conversation, is not kept. The
    gateway that turned a chat's encryption on knows at once (``note``). A group is encrypted
    by its creation event, before anyone can send to it.

    While Cassandra is unavailable, a conversation this process last read as "not encrypted"
    keeps that answer (``stale_answers`` counts them), so direct chats stay writable through an
    outage, as they were before encryption existed; one never read raises ``Unavailable``. The
    window above then lasts as long as the outage, for a chat turned encrypted on another
    gateway whose broadcast this process did not hear (docs/e2ee.md).

    With ``refresh_ahead`` (the gateway's), a send that finds its conversation's "not
    encrypted" past half its interval still gets that answer, and the conversation is read
    again off the send path: the conversations due within ``gather_s`` (a tenth of the interval
    unless given) are read together, 100 to a query. A conversation in use then costs no read on
    its sends' path and a share of one query per interval, not a read of its own (each one a
    request Cassandra wakes for: docs/benchmarks.md, session 18). Every answer still rests on a
    read begun less than the interval before; a refresh read across a forget is not kept, and
    one that fails leaves the entries to run out, for the send path to read them as before."""

    def __init__(
        self,
        cql: Cql,
        *,
        cache_size: int = 100_000,
        plain_ttl_s: float = PLAIN_TTL_S,
        watched_plain_ttl_s: float = WATCHED_PLAIN_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        refresh_ahead: bool = False,
        gather_s: float | None = None,
    ) -> None:
        self._cql = cql
        self._refresh_ahead = refresh_ahead
        self._gather_s = gather_s
        # Conversations to read again off the send path, and the task that reads them.
        self._due: dict[str, None] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._clock = clock
        self._ttl_s = plain_ttl_s
        self._watched_ttl_s = watched_plain_ttl_s
        self._known: LRUCache[str, bool] = LRUCache(maxsize=cache_size)
        # conversation -> when a read found it "not encrypted" (this process's clock).
        self._plain: LRUCache[str, float] = LRUCache(maxsize=cache_size)
        self._last_plain: LRUCache[str, bool] = LRUCache(maxsize=cache_size)
        # Moved each time every "not encrypted" is forgotten: a read that began before is not kept.
        self._epoch = 0
        self.watching = False
        self.stale_answers = 0
        self.reads = 0  # Cassandra reads of the flag (tests and benchmarks)
        self.refreshes = 0  # of them, refresh queries (``refresh_ahead``)

    def prepare(self) -> None:
        for cql in STATEMENTS:
            self._cql.prepare(cql)

    async def encrypted(self, conversation_id: str) -> bool:
        """Whether the conversation is end-to-end encrypted."""
        if conversation_id in self._known:
            return True
        read_at = self._plain.get(conversation_id)
        now = self._clock()
        trust_s = self._trust_s()
        if read_at is not None and now - read_at < trust_s:
            if self._refresh_ahead and now - read_at >= trust_s / 2:
                self._refresh_later(conversation_id)
            return False
        epoch = self._epoch
        self.reads += 1
        try:
            rows = await self._cql.execute(_SELECT, (conversation_id,))
        except Unavailable:
            if conversation_id in self._known:
                return True
            if conversation_id not in self._last_plain:
                raise
            self.stale_answers += 1
            STALE_PLAIN.inc()
            return False
        if rows:
            self._known[conversation_id] = True
            self._plain.pop(conversation_id, None)
            self._last_plain.pop(conversation_id, None)
            return True
        if conversation_id in self._known:  # heard while the read was in flight
            return True
        if epoch == self._epoch:
            self._plain[conversation_id] = now
        self._last_plain[conversation_id] = True
        return False

    def _trust_s(self) -> float:
        return self._watched_ttl_s if self.watching else self._ttl_s

    def _refresh_later(self, conversation_id: str) -> None:
        self._due[conversation_id] = None
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh(), name="encryption-flags-refresh"
            )

    async def _refresh(self) -> None:
        """Read the due conversations again, a gathering at a time, until none is due."""
        try:
            while self._due:
                await asyncio.sleep(self._gather_s if self._gather_s is not None else self._trust_s() / 10)
                due, self._due = [cid for cid in self._due if cid not in self._known], {}
                await self._reread(due)
        finally:
            self._refresher = None

    async def _reread(self, conversation_ids: Sequence[str]) -> None:
        epoch, now = self._epoch, self._clock()
        for start in range(0, len(conversation_ids), _IDS_PER_QUERY):
            chunk = list(conversation_ids[start : start + _IDS_PER_QUERY])
            self.reads += 1
            self.refreshes += 1
            try:
                found = await self._encrypted_among(chunk)
            except Unavailable as exc:
                # Nothing is lost: the entries run out and the send path reads them, with its
                # outage rules.
                log.warning("encryption flags not refreshed (%r); the sends read them", exc)
                return
            if epoch != self._epoch:
                continue  # forgotten while the read was in flight: not kept
            for conversation_id in chunk:
                if conversation_id not in found and conversation_id not in self._known:
                    self._plain[conversation_id] = now
                    self._last_plain[conversation_id] = True

    async def aclose(self) -> None:
        """Stop the refresh in flight, if any (the gateway's closers)."""
        task, self._refresher = self._refresher, None
        self._due.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def note(self, events: Sequence[ChatEvent]) -> None:
        """Remember the conversations ``events`` make encrypted (after writing them through)."""
        for event in events:
            for _, (conversation_id,) in statements(event):
                self.heard(conversation_id)

    def heard(self, conversation_id: str) -> None:
        """``conversation_id`` is encrypted: this process turned it on, or a broadcast said so."""
        self._known[conversation_id] = True
        self._plain.pop(conversation_id, None)
        self._last_plain.pop(conversation_id, None)

    def watch(self, watching: bool) -> None:
        """Whether this process hears the broadcasts from now on. Every "not encrypted" read
        so far is forgotten either way: what was broadcast while it was not listening is lost."""
        self.watching = watching
        self._plain.clear()
        self._due.clear()
        self._epoch += 1

    async def encrypted_of(self, conversation_ids: Iterable[str]) -> set[str]:
        """Those of ``conversation_ids`` that are encrypted (one read for the unknown ones)."""
        ids = list(dict.fromkeys(conversation_ids))
        found = {cid for cid in ids if cid in self._known}
        rest = [cid for cid in ids if cid not in found]
        for start in range(0, len(rest), _IDS_PER_QUERY):
            found |= await self._encrypted_among(rest[start : start + _IDS_PER_QUERY])
        return found

    async def _encrypted_among(self, conversation_ids: list[str]) -> set[str]:
        """One read: those of ``conversation_ids`` (at most ``_IDS_PER_QUERY``) that are
        encrypted, remembered for good."""
        rows = await self._cql.execute(_SELECT_MANY, (conversation_ids,))
        found = {row.conversation_id for row in rows}
        for conversation_id in found:
            self.heard(conversation_id)
        return found
