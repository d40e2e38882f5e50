"""Every multi-key command, script and transaction touches one Redis Cluster hash slot: the slot
of each key set the adapters use together, computed with redis-py's ``key_slot`` (the CRC16 the
cluster uses), with the presence store's real grouping of reports into script calls."""

from __future__ import annotations

import uuid
from typing import Any

from redis.crc import key_slot

from commands.adapters.redis_presence import CHUNK, RedisPresence
from commands.presence import Beat
from events import keys


def _slot(key: str) -> int:
    return key_slot(key.encode())


def _users(n: int) -> list[str]:
    return [f"u{uuid.uuid4().hex[:8]}" for _ in range(n)]


class RecordingScript:
    """Stands for the presence script: records each call's keys, answers no changes."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, names: list[str], args: list[Any]) -> list[Any]:
        self.calls.append(names)
        return []


async def test_each_presence_script_call_touches_one_slot_and_the_calls_cover_every_user() -> None:
    store = RedisPresence(object(), ttl_ms=1000)  # type: ignore[arg-type]  # the script is replaced
    script = RecordingScript()
    store._script = script  # type: ignore[assignment]
    users = _users(5 * CHUNK)
    await store.set([Beat(u, "c", "online", 0) for u in users])
    assert script.calls
    for names in script.calls:
        assert len({_slot(k) for k in names}) == 1, names
        assert len(names) <= 1 + 4 * CHUNK
    covered = {k for names in script.calls for k in names}
    for user in users:
        assert {
            keys.presence_online(user),
            keys.presence_away(user),
            keys.presence_info(user),
            keys.presence_closed(user),
        } <= covered


def test_presence_shards_are_sixteen_slots_and_users_spread_over_them() -> None:
    shards = [keys.presence_live(s) for s in range(keys.PRESENCE_SHARDS)]
    assert len({_slot(k) for k in shards}) == keys.PRESENCE_SHARDS
    counts = [0] * keys.PRESENCE_SHARDS
    for user in _users(1600):
        shard = keys.presence_shard(user)
        counts[shard] += 1
        assert _slot(keys.presence_info(user)) == _slot(keys.presence_live(shard))
    assert min(counts) > 50  # about 100 each: no shard (and so no node) holds most users


def test_a_devices_push_state_shares_its_users_slot() -> None:
    # The other scripts and MULTI blocks each touch one key (rate limit, lease renew and
    # release, recent's cache script, the to-device queue, the media quota), which the
    # integration tests run on a real cluster that refuses a cross-slot call.
    assert _slot(keys.push_sent("u1", "d1")) == _slot(keys.push_sent("u1", "d2"))


def test_delivery_channels_spread_over_slots() -> None:
    # Sharded pub/sub: a channel lives on its slot's node, so user channels and the group shards
    # must not all land on one.
    channels = [keys.user_channel(u) for u in _users(300)]
    channels += [keys.group_shard_channel(n) for n in range(16)]
    assert len({_slot(c) for c in channels}) > 250
