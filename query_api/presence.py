"""This gateway process's side of presence: heartbeats, silence, transitions and watchers.

A socket counts as heard from whenever any of its frames arrives (a ``ping`` frame, a
WebSocket ping, or anything else). A socket whose client sent nothing but pings for
``away_after_s`` becomes ``away`` by itself, and ``online`` again with its next other frame.
Heartbeats cost nothing at the time: a sweep every few seconds reports, in one pipeline, the
sockets heard from since the last sweep, so the presence store sees each live socket's expiry
move forward; closes sockets silent for ``idle_close_s``; and reaps users whose last socket
expired without closing (a gateway that died). Transitions the store reports are appended to
the log as ``PresenceChanged`` events; watchers get them from the worker, never from here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from cachetools import TTLCache

from commands import EventLog
from commands.presence import Beat, ConnectionState, PresenceStore
from events import PresenceChanged
from events import direct_conversation_id as _direct
from events.errors import Unavailable
from query_api.hub import Connection
from query_api.metrics import HEARTBEAT_CLOSES, PRESENCE_EVENTS_DROPPED, PRESENCE_TRANSITIONS

log = logging.getLogger(__name__)

CLOSE_HEARTBEAT_TIMEOUT = 4408  # application range; mirrors HTTP 408
REAP_BATCH = 1000


class PresenceTracker:
    def __init__(
        self,
        store: PresenceStore,
        event_log: EventLog,
        *,
        idle_close_s: float,
        sweep_s: float,
        away_after_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._log = event_log
        self._idle_close_s = idle_close_s
        self._away_after_s = away_after_s
        self._sweep_s = sweep_s
        self._clock = clock
        self._prefix = secrets.token_hex(6)
        self._ids = itertools.count()
        self._conns: set[Connection] = set()
        self._emitting: set[asyncio.Task[None]] = set()

    async def connected(self, conn: Connection) -> None:
        """The socket is open: its user is online (unless another socket says away)."""
        conn.presence_id = f"{conn.device_id}:{self._prefix}:{next(self._ids)}"  # device first: see push
        conn.heard = conn.reported = conn.active = self._clock()
        self._conns.add(conn)
        await self._set([conn])

    async def set_state(self, conn: Connection, state: ConnectionState) -> None:
        """The client said ``online`` or ``away`` (a ``presence`` frame)."""
        conn.auto_away = False
        conn.presence_state = state
        conn.reported = conn.heard
        await self._set([conn])

    async def resumed(self, conn: Connection) -> None:
        """A socket made away by its silence sent a frame: it is online again."""
        if conn.auto_away:
            await self.set_state(conn, "online")

    async def disconnected(self, conn: Connection) -> None:
        self._conns.discard(conn)
        if not conn.presence_id:
            return
        try:
            change = await self._store.leave(conn.user_id, conn.presence_id)
        except Unavailable:
            # The socket's expiry lapses in the store by itself; a reaper reports it then.
            log.warning("presence store unavailable; %s's socket will lapse", conn.user_id)
            return
        self._announce([change] if change else [])

    async def _set(self, conns: Sequence[Connection]) -> None:
        now = self._clock()
        beats = [Beat(c.user_id, c.presence_id, c.presence_state, int((now - c.heard) * 1000)) for c in conns]
        self._announce(await self._store.set(beats))

    async def sweep(self) -> None:
        """Close silent sockets, make sockets that only pinged away, report heartbeats, reap
        lapsed users."""
        now = self._clock()
        fresh = []
        for conn in list(self._conns):
            if now - conn.heard >= self._idle_close_s:
                self._conns.discard(conn)
                HEARTBEAT_CLOSES.inc()
                conn.close_soon(CLOSE_HEARTBEAT_TIMEOUT, "no heartbeat")
            elif conn.presence_state == "online" and now - conn.active >= self._away_after_s:
                conn.auto_away = True
                conn.presence_state = "away"
                conn.reported = conn.heard
                fresh.append(conn)
            elif conn.heard > conn.reported:
                conn.reported = conn.heard
                fresh.append(conn)
        await self._set(fresh)
        self._announce(await self._store.reap(REAP_BATCH))

    async def run(self) -> None:
        """Sweep until cancelled; a store outage only delays the next sweep."""
        while True:
            await asyncio.sleep(self._sweep_s)
            try:
                await self.sweep()
            except Unavailable as exc:
                log.warning("presence sweep skipped: %s", exc)

    def _announce(self, changes: Iterable[PresenceChanged]) -> None:
        for change in changes:
            task = asyncio.create_task(self._emit(change))
            self._emitting.add(task)
            task.add_done_callback(self._emitting.discard)

    async def _emit(self, change: PresenceChanged, attempts: int = 6) -> None:
        delay = 0.1
        for attempt in range(attempts):
            try:
                await self._log.append(change)
            except Unavailable:
                if attempt == attempts - 1:
                    break
                await asyncio.sleep(delay)
                delay *= 2
                continue
            PRESENCE_TRANSITIONS.labels(change.state).inc()
            return
        # Not a message: the store still holds the state, and readers see it; only watchers miss
        # this transition. Counted and logged, never silent.
        PRESENCE_EVENTS_DROPPED.inc()
        log.error("presence transition of %s to %s not appended to the log", change.user_id, change.state)

    def connections(self) -> list[Connection]:
        """The sockets this process holds."""
        return list(self._conns)

    async def drain(self) -> None:
        """Wait for transitions being appended (at shutdown)."""
        if self._emitting:
            await asyncio.wait(list(self._emitting), timeout=5)


class Contacts:
    """Who shares a conversation with whom: a common group, or the direct conversation of the
    two in either one's conversation set (it is there once either opened it or a message in it
    was acknowledged; both are written through before the caller hears back).

    Conversation sets are cached for ``ttl_s``, and only a yes is answered from the cache: a
    removal takes effect within ``ttl_s``. A no is never cached: the sets are read again before
    refusing, so a conversation the read model has just learned counts at once."""

    def __init__(self, conversation_ids: Callable[[str], Awaitable[set[str]]], *, ttl_s: float = 5.0) -> None:
        self._conversation_ids = conversation_ids
        self._cache: TTLCache[str, frozenset[str]] = TTLCache(maxsize=100_000, ttl=ttl_s)

    async def _of(self, user_id: str, *, fresh: bool) -> frozenset[str]:
        cached = None if fresh else self._cache.get(user_id)
        if cached is None:
            cached = frozenset(await self._conversation_ids(user_id))
            self._cache[user_id] = cached
        return cached

    async def _sharing(self, user_id: str, others: Sequence[str], *, fresh: bool) -> set[str]:
        mine, *theirs = await asyncio.gather(
            self._of(user_id, fresh=fresh), *(self._of(o, fresh=fresh) for o in others)
        )
        return {
            other
            for other, their in zip(others, theirs, strict=True)
            if mine & their or _direct(user_id, other) in mine or _direct(user_id, other) in their
        }

    async def shared_with(self, user_id: str, others: Sequence[str]) -> set[str]:
        """Those of ``others`` who share at least one conversation with ``user_id`` (a user
        always shares with themselves)."""
        strangers = [o for o in dict.fromkeys(others) if o != user_id]
        allowed = await self._sharing(user_id, strangers, fresh=False) if strangers else set()
        unsure = [o for o in strangers if o not in allowed]
        if unsure:
            allowed |= await self._sharing(user_id, unsure, fresh=True)
        if user_id in others:
            allowed.add(user_id)
        return allowed
