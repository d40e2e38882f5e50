"""Read model ``recent`` (hot tier): each conversation's newest messages in a Redis sorted set.

All members have score 0 and sort by their text, ``<message_id as 20 digits>|<message JSON>``:
ids are 64-bit and a float score would round them. Re-adding the same event re-adds the same
member, so the write is idempotent. The set is a contiguous suffix of the conversation's
history (every message goes through here in log order), which is what lets the history query
answer from it alone when it holds enough.

The batch's pushes go out in the same pipeline, each after its event's cache writes. A
message's cache commands (add, trim, expire) and its publishes (one per member of a small
conversation, or one on a group shard) are one script call: the deliver worker's CPU goes
mostly to redis-py's per-command packing and parsing, so fewer commands per event is cheaper
(docs/benchmarks.md; ``bench/deliver_redis.py``). The script touches one key (channels are not
keys), but a script may only publish to its keys' slot on a Redis Cluster, where channels are
sharded (SPUBLISH): there the script only caches and the pushes are SPUBLISHed beside it, each
routed to its channel's node by the cluster pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import singledispatch
from typing import Any

import orjson
from redis.exceptions import NoScriptError, RedisError

from events import ChatEvent, MessageSent, keys
from events.errors import Unavailable
from projections.adapters.redis_client import AnyPipeline, RedisClient, is_cluster, publish
from projections.delivery import Push, pushes
from projections.roster import Roster
from projections.wire import message_json, traced

NAME = "recent"
_TTL_S = 7 * 24 * 3600
_ID_DIGITS = 20


def _member(message_id: int, message: bytes) -> bytes:
    return f"{message_id:0{_ID_DIGITS}d}|".encode() + message


def _id_bound(message_id: int) -> bytes:
    return f"{message_id:0{_ID_DIGITS}d}".encode()


# KEYS[1] = recent:{cid}; ARGV = member, size, ttl, payload, channel... Same effect as ZADD,
# ZREMRANGEBYRANK, EXPIRE, then PUBLISH of the payload on each channel.
_CACHE_LUA = """
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[3])
for i = 5, #ARGV do
  redis.call('PUBLISH', ARGV[i], ARGV[4])
end
return 1
"""


@singledispatch
def _cache(event: ChatEvent, pipe: AnyPipeline, size: int, sha: str, event_pushes: list[Push]) -> None:
    for push in event_pushes:
        publish(pipe, push.channel, push.payload)


@_cache.register
def _(event: MessageSent, pipe: AnyPipeline, size: int, sha: str, event_pushes: list[Push]) -> None:
    key = keys.recent(event.conversation_id)
    member = _member(event.message_id, message_json(event))
    payloads = {push.payload for push in event_pushes}
    # every member gets the same frame today; if not, publish apart. (EVALSHA by
    # execute_command: redis-py's cluster pipeline blocks its evalsha method, not the command.)
    if len(payloads) > 1 or is_cluster(pipe):
        pipe.execute_command("EVALSHA", sha, 1, key, member, size, _TTL_S, b"")
        for push in event_pushes:
            publish(pipe, push.channel, push.payload)
        return
    payload = payloads.pop() if payloads else b""
    pipe.execute_command(
        "EVALSHA", sha, 1, key, member, size, _TTL_S, payload, *(push.channel for push in event_pushes)
    )


def _with_trace(traceparent: str | None, event_pushes: list[Push]) -> list[Push]:
    if traceparent is None:
        return event_pushes
    return [Push(push.channel, traced(traceparent, push.payload)) for push in event_pushes]


class RedisCacheAndPush:
    """The deliver stage (``apply``: cache each message in the hot tier and publish the pushes
    its events cause, in one round trip) and the hot tier's reads (``newest``, ``all``)."""

    name = NAME

    def __init__(
        self,
        redis: RedisClient,
        size: int,
        *,
        roster: Roster | None,
        trace_of: Callable[[ChatEvent], str | None] | None = None,
    ) -> None:
        self._redis = redis
        self.size = size
        # None when rebuilding: a replay must not push old messages to clients.
        self._roster = roster
        # Tracing on only (``tidings.telemetry.traceparent_of``): an event's trace context,
        # carried in its pushes' envelope to the gateway.
        self._trace_of = trace_of
        self._sha: str | None = None

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        """Cache ``events`` and push what they cause, in log order, in one round trip."""
        batch = [(event, await pushes(event, self._roster) if self._roster else []) for event in events]
        if self._trace_of is not None:
            batch = [(event, _with_trace(self._trace_of(event), p)) for event, p in batch]
        try:
            if self._sha is None:
                self._sha = str(await self._redis.script_load(_CACHE_LUA))
            async with self._redis.pipeline(transaction=False) as pipe:
                for event, event_pushes in batch:
                    _cache(event, pipe, self.size, self._sha, event_pushes)
                await pipe.execute()
        except NoScriptError as exc:
            # Redis restarted or flushed its scripts: load it again and let the projector retry
            # the batch (writes are idempotent; that batch's pushes may go out twice).
            self._sha = None
            raise Unavailable("Redis lost the cache script") from exc
        except RedisError as exc:
            raise Unavailable("Redis did not take the batch") from exc

    async def newest(self, conversation_id: str, *, before: int | None, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` cached messages older than ``before`` (or the newest), ascending."""
        upper = b"(" + _id_bound(before) if before is not None else b"+"
        members = await self._range("zrevrangebylex", keys.recent(conversation_id), upper, b"-", limit)
        return [_parse(m) for m in reversed(members)]

    async def all(self, conversation_id: str) -> list[dict[str, Any]]:
        """Everything cached for the conversation, ascending."""
        members = await self._range("zrangebylex", keys.recent(conversation_id), b"-", b"+", None)
        return [_parse(m) for m in members]

    async def _range(self, op: str, key: str, a: bytes, b: bytes, limit: int | None) -> list[bytes]:
        kwargs = {"start": 0, "num": limit} if limit is not None else {}
        try:
            result: list[bytes] = await getattr(self._redis, op)(key, a, b, **kwargs)
        except RedisError as exc:
            raise Unavailable("Redis did not answer") from exc
        return result


def _parse(member: bytes) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(member[_ID_DIGITS + 1 :])
    return result
