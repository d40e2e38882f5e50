"""In-memory fakes of the write-side ports, for unit tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from commands.ports import Conversation, SendRecord
from commands.presence import Beat
from events import (
    ChatEvent,
    DeviceKeysDeleted,
    DeviceKeysPublished,
    EncryptionEnabled,
    GroupCreated,
    GroupRenamed,
    KeyEvent,
    MemberRemoved,
    MemberRoleChanged,
    MembersAdded,
    OneTimeKeysAdded,
    OwnershipTransferred,
    PresenceChanged,
    PresenceState,
    Role,
    SignedKey,
)
from events.errors import Unavailable
from projections.views import DeviceKeys, PresenceView


class MemoryEventLog:
    def __init__(self) -> None:
        self.events: list[ChatEvent] = []
        self.fail_next = 0

    async def append(self, event: ChatEvent) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable("event log down (fake)")
        self.events.append(event)


class MemoryIdempotencyStore:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], SendRecord] = {}

    async def claim(self, sender_id: str, client_msg_id: str, record: SendRecord) -> SendRecord | None:
        existing = self.records.get((sender_id, client_msg_id))
        if existing is None:
            self.records[(sender_id, client_msg_id)] = record
        return existing

    async def mark_appended(self, sender_id: str, client_msg_id: str, record: SendRecord) -> None:
        if (sender_id, client_msg_id) in self.records:
            self.records[(sender_id, client_msg_id)] = record

    async def withdraw(self, sender_id: str, client_msg_id: str, record: SendRecord) -> None:
        if self.records.get((sender_id, client_msg_id)) == record:
            del self.records[(sender_id, client_msg_id)]


class MemoryDirectory:
    """The membership read model, in memory, applied with the same rules as the real one: each
    value remembers the id of the event that wrote it, and an older event applied late (the
    worker after the gateway's write-through, a redelivered batch) never undoes a newer one,
    as the real model's ``USING TIMESTAMP`` writes do."""

    def __init__(self) -> None:
        self._created: set[str] = set()
        self._titles: dict[str, tuple[int, str]] = {}
        self._counts: dict[str, tuple[int, int]] = {}
        # (event id, role), or (event id, None) for a removal
        self._roles: dict[str, dict[str, tuple[int, Role | None]]] = {}
        self.encrypted_ids: set[str] = set()  # never unset, so no event id to compare

    @property
    def members(self) -> dict[str, dict[str, Role]]:
        """Each group's current members and their roles."""
        return {
            cid: {u: role for u, (_, role) in roles.items() if role is not None}
            for cid, roles in self._roles.items()
        }

    @property
    def groups(self) -> dict[str, Conversation]:
        """Each group's current row."""
        return {
            cid: Conversation(cid, "group", self._titles[cid][1], self._counts[cid][1])
            for cid in self._created
        }

    async def encrypted(self, conversation_id: str) -> bool:
        return conversation_id in self.encrypted_ids

    async def conversation(self, conversation_id: str) -> Conversation | None:
        return self.groups.get(conversation_id)

    async def roles(self, conversation_id: str, user_ids: Sequence[str]) -> dict[str, Role]:
        members = self.members.get(conversation_id, {})
        return {u: members[u] for u in user_ids if u in members}

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        for event in events:
            if isinstance(event, EncryptionEnabled) or (isinstance(event, GroupCreated) and event.encrypted):
                self.encrypted_ids.add(event.conversation_id)
            if isinstance(event, GroupCreated | MembersAdded | MemberRemoved | MemberRoleChanged):
                self._apply_member_event(event)
            elif isinstance(event, OwnershipTransferred):
                self._role(event.conversation_id, event.user_id, event.event_id, "owner")
                self._role(event.conversation_id, event.actor_id, event.event_id, "admin")
            elif isinstance(event, GroupRenamed):
                _newer(self._titles, event.conversation_id, event.event_id, event.title)

    def _apply_member_event(
        self, event: GroupCreated | MembersAdded | MemberRemoved | MemberRoleChanged
    ) -> None:
        cid, at = event.conversation_id, event.event_id
        if isinstance(event, GroupCreated):
            self._created.add(cid)
            _newer(self._titles, cid, at, event.title)
        if isinstance(event, GroupCreated | MembersAdded):
            for m in event.members:
                self._role(cid, m.user_id, at, m.role)
        elif isinstance(event, MemberRemoved):
            self._role(cid, event.user_id, at, None)
        else:
            self._role(cid, event.user_id, at, event.role)
        if not isinstance(event, MemberRoleChanged):
            _newer(self._counts, cid, at, event.member_count)

    def _role(self, conversation_id: str, user_id: str, at: int, role: Role | None) -> None:
        _newer(self._roles.setdefault(conversation_id, {}), user_id, at, role)


def _newer(cells: dict[str, tuple[int, Any]], key: str, at: int, value: Any) -> None:
    """Write ``value`` at ``key`` unless a newer event (a higher id) wrote it already."""
    if key not in cells or cells[key][0] <= at:
        cells[key] = (at, value)


class MemoryLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        async with self._locks.setdefault(name, asyncio.Lock()):
            yield


class MemoryKeyStore:
    """The key directory (``commands.keys.KeyStore``) in memory; ``try_claim`` is atomic
    because nothing awaits inside it."""

    def __init__(self) -> None:
        self.devices_: dict[tuple[str, str], DeviceKeys] = {}
        self.one_time: dict[tuple[str, str], dict[str, tuple[SignedKey, str | None]]] = {}
        self.fallbacks: dict[tuple[str, str], SignedKey] = {}
        self.claims: dict[tuple[str, str, str], str] = {}

    async def device(self, user_id: str, device_id: str) -> DeviceKeys | None:
        return self.devices_.get((user_id, device_id))

    async def devices(self, user_id: str) -> list[DeviceKeys]:
        return [d for (u, _), d in sorted(self.devices_.items()) if u == user_id]

    async def key_ids(self, user_id: str, device_id: str) -> set[str]:
        return set(self.one_time.get((user_id, device_id), {}))

    async def write(self, events: Sequence[KeyEvent]) -> None:
        for e in events:
            dev = (e.user_id, e.device_id)
            if isinstance(e, DeviceKeysPublished):
                self.devices_[dev] = DeviceKeys(*dev, e.identity_key, e.signing_key, e.signature)
            elif isinstance(e, DeviceKeysDeleted):
                self.devices_.pop(dev, None)
                self.one_time.pop(dev, None)
                self.fallbacks.pop(dev, None)
            elif isinstance(e, OneTimeKeysAdded):
                keys = self.one_time.setdefault(dev, {})
                for k in e.keys:
                    keys[k.key_id] = (k, keys.get(k.key_id, (k, None))[1])
                if e.fallback is not None:
                    self.fallbacks[dev] = e.fallback
            else:
                keys = self.one_time.setdefault(dev, {})
                if e.key_id in keys:
                    keys[e.key_id] = (keys[e.key_id][0], e.claimed_by)
                self.claims[(e.user_id, e.device_id, e.key)] = e.claimed_by

    async def unclaimed(self, user_id: str, device_id: str, limit: int) -> list[SignedKey]:
        keys = self.one_time.get((user_id, device_id), {})
        return [k for _, (k, by) in sorted(keys.items()) if by is None][:limit]

    async def try_claim(
        self, user_id: str, device_id: str, key: SignedKey, claimed_by: str, claim_id: str
    ) -> bool:
        if (user_id, device_id, key.key) in self.claims:
            keys = self.one_time.get((user_id, device_id), {})
            if key.key_id in keys:
                keys[key.key_id] = (keys[key.key_id][0], self.claims[(user_id, device_id, key.key)])
            return False
        self.claims[(user_id, device_id, key.key)] = claimed_by
        return True

    async def fallback(self, user_id: str, device_id: str) -> SignedKey | None:
        return self.fallbacks.get((user_id, device_id))

    async def remaining(self, user_id: str, device_id: str) -> int:
        return sum(1 for _, by in self.one_time.get((user_id, device_id), {}).values() if by is None)


@dataclass
class _UserPresence:
    online: dict[str, int] = field(default_factory=dict)  # connection -> expiry (ms)
    away: dict[str, int] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)  # closed connections, as in Redis
    closed_until: int = 0  # when the closed set expires (ms)
    state: PresenceState = "offline"
    last_seen: int | None = None
    seen: int | None = None  # the last heartbeat or close (ms)
    at: int = 0  # when ``state`` began (µs)


class MemoryPresence:
    """``commands.presence.PresenceStore`` in memory: the rules of the Redis script
    (``commands/adapters/redis_scripts.py`` ``PRESENCE``) on a clock that tests can move
    (``clock``: seconds, like ``time.time``). One call reads the clock once, as one script
    call reads Redis's."""

    def __init__(self, *, ttl_ms: int, clock: Callable[[], float] = time.time) -> None:
        self._ttl = ttl_ms
        self._clock = clock
        self.users: dict[str, _UserPresence] = {}
        self.live: dict[str, int] = {}  # user -> their newest connection's expiry (ms)
        self.beats: list[Beat] = []  # every beat reported, in order (for tests)

    def _now(self) -> tuple[int, int]:
        at = int(self._clock() * 1_000_000)
        return at // 1000, at

    async def set(self, beats: Sequence[Beat]) -> list[PresenceChanged]:
        self.beats += beats
        now, at = self._now()
        out = [self._step(b.user_id, "set", now, at, b) for b in beats]
        return [c for c in out if c is not None]

    async def leave(self, user_id: str, conn_id: str) -> PresenceChanged | None:
        now, at = self._now()
        return self._step(user_id, "leave", now, at, Beat(user_id, conn_id, "online", 0))

    async def reap(self, limit: int) -> list[PresenceChanged]:
        now, at = self._now()
        due = sorted((expiry, u) for u, expiry in self.live.items() if expiry <= now)[:limit]
        out = [self._step(u, "reap", now, at, None) for _, u in due]
        return [c for c in out if c is not None]

    async def read(self, user_ids: Sequence[str]) -> list[PresenceView]:
        now, at = self._now()
        return [self._view(self.users.get(u, _UserPresence()), u, now, at) for u in user_ids]

    def _step(self, user_id: str, op: str, now: int, at: int, beat: Beat | None) -> PresenceChanged | None:
        user = self.users.setdefault(user_id, _UserPresence())
        if user.closed_until <= now:
            user.closed.clear()
        if op == "set" and beat is not None and beat.conn_id not in user.closed:
            heard = now - beat.idle_ms
            mine, other = (user.away, user.online) if beat.state == "away" else (user.online, user.away)
            other.pop(beat.conn_id, None)
            mine[beat.conn_id] = heard + self._ttl
            user.seen = max(user.seen or 0, heard)
        elif op == "leave" and beat is not None:
            user.online.pop(beat.conn_id, None)
            user.away.pop(beat.conn_id, None)
            user.seen = now
            user.closed = {c: e for c, e in user.closed.items() if e > now}
            user.closed[beat.conn_id] = user.closed_until = now + self._ttl
        for conns in (user.online, user.away):
            for conn in [c for c, expiry in conns.items() if expiry <= now]:
                del conns[conn]
        state = _state(user, now)
        if state == "offline":
            self.live.pop(user_id, None)
        else:
            self.live[user_id] = max([*user.online.values(), *user.away.values()])
        if state == user.state:
            return None
        if state == "offline":
            user.last_seen = user.seen if user.seen is not None else now
        user.state, user.at = state, max(at, user.at + 1)
        last_seen = user.last_seen if state == "offline" else None
        return PresenceChanged(user_id=user_id, state=state, last_seen=last_seen, at=user.at)

    @staticmethod
    def _view(user: _UserPresence, user_id: str, now: int, at: int) -> PresenceView:
        state = _state(user, now)
        if state == user.state:
            return PresenceView(user_id, state, user.last_seen if state == "offline" else None, user.at)
        # lapsed since the last call that changed anything: as the script reads it, not stored
        seen = user.seen if user.seen is not None else now
        return PresenceView(user_id, state, seen if state == "offline" else None, at)


def _state(user: _UserPresence, now: int) -> PresenceState:
    if any(expiry > now for expiry in user.online.values()):
        return "online"
    if any(expiry > now for expiry in user.away.values()):
        return "away"
    return "offline"
