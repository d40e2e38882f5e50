"""``PresenceStore`` on Redis: one Lua script per user decides the state atomically."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from commands.presence import Beat, PresenceView
from commands.redis_scripts import PRESENCE
from events import PresenceChanged, keys
from events.errors import Unavailable


def _keys(user_id: str) -> list[str]:
    return [
        keys.presence_online(user_id),
        keys.presence_away(user_id),
        keys.presence_info(user_id),
        keys.presence_closed(user_id),
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPresence:
    def __init__(self, redis: Redis, *, ttl_ms: int) -> None:
        self._redis = redis
        self._ttl_ms = ttl_ms
        self._script = redis.register_script(PRESENCE)

    async def _run(self, calls: Sequence[tuple[str, str, str, str, int]]) -> list[list[Any]]:
        """Run the script once per ``(user_id, op, conn_id, state, idle_ms)`` in one pipeline,
        and keep the reaper's index of live users current."""
        if not calls:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, op, conn_id, state, idle_ms in calls:
                    await self._script(
                        keys=_keys(user_id), args=[op, conn_id, state, idle_ms, self._ttl_ms], client=pipe
                    )
                results: list[list[Any]] = await pipe.execute()
                if calls[0][1] == "read":
                    return results
                live = {
                    u: int(r[4])
                    for (u, *_), r in zip(calls, results, strict=True)
                    if _text(r[1]) != "offline"
                }
                gone = [u for (u, *_), r in zip(calls, results, strict=True) if _text(r[1]) == "offline"]
                if live:
                    pipe.zadd(keys.presence_live(), live)
                if gone:
                    pipe.zrem(keys.presence_live(), *gone)
                if live or gone:
                    await pipe.execute()
        except RedisError as exc:
            raise Unavailable("presence store unavailable") from exc
        return results

    @staticmethod
    def _changes(
        calls: Sequence[tuple[str, ...] | tuple[Any, ...]], results: list[list[Any]]
    ) -> list[PresenceChanged]:
        changes = []
        for call, (changed, state, last_seen, at, _latest) in zip(calls, results, strict=True):
            if int(changed):
                state_text = _text(state)
                seen = _text(last_seen)
                changes.append(
                    PresenceChanged(
                        user_id=call[0],
                        state=state_text,  # type: ignore[arg-type]
                        last_seen=int(seen) if state_text == "offline" and seen else None,
                        at=int(at),
                    )
                )
        return changes

    async def set(self, beats: Sequence[Beat]) -> list[PresenceChanged]:
        calls = [(b.user_id, "set", b.conn_id, b.state, b.idle_ms) for b in beats]
        return self._changes(calls, await self._run(calls))

    async def leave(self, user_id: str, conn_id: str) -> PresenceChanged | None:
        calls = [(user_id, "leave", conn_id, "", 0)]
        changes = self._changes(calls, await self._run(calls))
        return changes[0] if changes else None

    async def reap(self, limit: int) -> list[PresenceChanged]:
        try:
            now_s, now_us = await self._redis.time()
            now_ms = now_s * 1000 + now_us // 1000
            due = await self._redis.zrangebyscore(keys.presence_live(), "-inf", now_ms, start=0, num=limit)
        except RedisError as exc:
            raise Unavailable("presence store unavailable") from exc
        calls = [(_text(u), "reap", "", "", 0) for u in due]
        return self._changes(calls, await self._run(calls))

    async def read(self, user_ids: Sequence[str]) -> list[PresenceView]:
        calls = [(u, "read", "", "", 0) for u in user_ids]
        views = []
        for user_id, (_changed, state, last_seen, at, _latest) in zip(
            user_ids, await self._run(calls), strict=True
        ):
            state_text = _text(state)
            seen = _text(last_seen)
            views.append(
                PresenceView(
                    user_id,
                    state_text,  # type: ignore[arg-type]
                    int(seen) if state_text == "offline" and seen else None,
                    int(at),
                )
            )
        return views
