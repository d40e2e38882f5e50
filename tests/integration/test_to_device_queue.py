"""The to-device queue on the real Redis: positions, acknowledgement, the bound and the age."""

from __future__ import annotations

import time
import uuid
from typing import Any

from commands.adapters.redis_to_device import RedisToDevice


async def test_after_acknowledge_bound_and_expiry(redis: Any) -> None:
    now = [time.time()]  # stream ids come from Redis's clock: start from the real time
    queue = RedisToDevice(redis, ttl_s=3600, clock=lambda: now[0])
    user = f"q{uuid.uuid4().hex[:10]}"
    positions = [await queue.add(user, "d", f"f{i}".encode(), max_len=5, ttl_s=3600) for i in range(7)]
    rows = await queue.after(user, "d", None, 100)
    assert [f for _, f in rows] == [b"f2", b"f3", b"f4", b"f5", b"f6"]  # the bound: the oldest dropped
    assert [p for p, _ in rows] == positions[2:]
    assert [f for _, f in await queue.after(user, "d", positions[3], 100)] == [b"f4", b"f5", b"f6"]
    await queue.acknowledge(user, "d", positions[4])
    assert [f for _, f in await queue.after(user, "d", None, 100)] == [b"f5", b"f6"]
    assert await queue.after(user, "other", None, 100) == []
    # An hour and a second later, what was queued before has expired, even unread.
    now[0] += 3601
    assert await queue.after(user, "d", None, 100) == []
