"""The worker-id lease's own fencing, with a fake Redis and a fake clock (the real Redis, other
processes, restarts and pauses: tests/integration/test_worker_ids.py)."""

from __future__ import annotations

from typing import Any

import pytest

from commands.adapters.redis_scripts import RENEW_IF_HELD
from commands.adapters.worker_ids import LeasedSnowflake, WorkerIdLease
from events.errors import Unavailable

TTL = 60.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Redis:
    """Keys without expiry (the test moves time itself), the renew script, and INFO."""

    def __init__(self, *, aof: bool = True, uptime_s: int = 3600) -> None:
        self.keys: dict[str, str] = {}
        self.aof, self.uptime_s = aof, uptime_s

    async def set(self, key: str, value: str, *, nx: bool, px: int) -> bool:
        if nx and key in self.keys:
            return False
        self.keys[key] = value
        return True

    async def eval(self, script: str, numkeys: int, key: str, token: str, *args: Any) -> int:
        held = self.keys.get(key) == token
        if held and script != RENEW_IF_HELD:
            del self.keys[key]
        return 1 if held else 0

    async def info(self, section: str) -> dict[str, int]:
        return (
            {"aof_enabled": int(self.aof)}
            if section == "persistence"
            else {"uptime_in_seconds": self.uptime_s}
        )


async def test_ids_only_until_the_lease_deadline_then_again_after_a_renewal() -> None:
    clock, redis = _Clock(), _Redis()
    lease = await WorkerIdLease.acquire(redis, ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    ids = LeasedSnowflake(lease)
    try:
        ids.next_id()
        clock.now += TTL * 0.89
        ids.next_id()
        clock.now += TTL * 0.02  # past ttl minus a tenth since the acquisition was sent
        with pytest.raises(Unavailable, match="not confirmed"):
            ids.next_id()
        assert await lease.renew()
        ids.next_id()
    finally:
        await lease.release()


async def test_a_pause_between_the_check_and_the_ids_time_gives_no_id_past_the_deadline() -> None:
    """A process paused after it found the lease good but before it took the id's time would
    stamp the id after the deadline, when another process may hold the worker id."""
    clock, redis = _Clock(), _Redis()
    lease = await WorkerIdLease.acquire(redis, ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    ids = LeasedSnowflake(lease)
    stamp = ids._ids.next_id

    def paused_then_stamped() -> int:
        clock.now += TTL  # the pause: the deadline passes before the time is taken
        return stamp()

    ids._ids.next_id = paused_then_stamped  # type: ignore[method-assign]
    try:
        clock.now += TTL * 0.5  # still good when checked
        with pytest.raises(Unavailable, match="not confirmed"):
            ids.next_id()
    finally:
        await lease.release()


async def test_an_id_taken_meanwhile_is_lost_for_good() -> None:
    clock, redis = _Clock(), _Redis()
    lease = await WorkerIdLease.acquire(redis, ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    try:
        clock.now += TTL * 2  # paused past the TTL: the key expired, another process took the id
        redis.keys[f"snowflake:worker:{lease.worker_id}"] = "another"
        with pytest.raises(Unavailable, match="not confirmed"):
            LeasedSnowflake(lease).next_id()
        assert not await lease.renew()
        with pytest.raises(Unavailable, match="lost"):
            LeasedSnowflake(lease).next_id()
        assert not await lease.renew()  # final, even once the id is free again
        del redis.keys[f"snowflake:worker:{lease.worker_id}"]
        assert not await lease.renew()
    finally:
        await lease.release()


async def test_a_lapsed_id_still_free_is_taken_back() -> None:
    clock, redis = _Clock(), _Redis()
    lease = await WorkerIdLease.acquire(redis, ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    try:
        clock.now += TTL * 2
        redis.keys.clear()  # expired, nobody took it
        assert await lease.renew()
        LeasedSnowflake(lease).next_id()
    finally:
        await lease.release()


@pytest.mark.parametrize(
    ("aof", "uptime_s", "wait_s"),
    # Redis's whole-second uptime may be up to a second ahead of its real age: one more second
    [(True, 1, 0.0), (False, 3600, 0.0), (False, 61, 0.0), (False, 60, 1.0), (False, 59, 2.0)],
)
async def test_a_young_redis_without_persistence_makes_the_new_lease_wait(
    aof: bool, uptime_s: int, wait_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    clock, redis = _Clock(), _Redis(aof=aof, uptime_s=uptime_s)
    monkeypatch.setattr("commands.adapters.worker_ids.asyncio.sleep", sleep)
    lease = await WorkerIdLease.acquire(redis, ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    try:
        assert slept[:1] == ([wait_s] if wait_s else [])
        assert lease.usable() is (wait_s == 0)
        clock.now += wait_s
        assert lease.usable()
    finally:
        await lease.release()
