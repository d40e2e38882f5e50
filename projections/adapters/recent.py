"""Read model ``recent`` (hot tier): each conversation's newest messages in a Redis sorted set.

All members have score 0 and sort by their text, ``<message_id as 20 digits>|<message JSON>``:
ids are 64-bit and a float score would round them. Re-adding the same event re-adds the same
member, so the write is idempotent. The set is a contiguous suffix of the conversation's
history (every message goes through here in log order), which is what lets the history query
answer from it alone when it holds enough.

The batch's pushes go out in the same pipeline, each after its event's cache writes (on one
instance the pipeline is a ``RedisPipeliner``'s write on its own connection). On one instance
a message's cache commands (add, trim, expire) and the publishes to its recipients are one
script call: the deliver worker's CPU goes mostly to per-command packing and parsing, so fewer
commands per event is cheaper (docs/benchmarks.md; ``bench/deliver_redis.py``); a publish on a
group shard is a plain publish beside it. A script may only publish to its keys' slot on a
Redis Cluster, where channels are sharded (SPUBLISH): there the script only caches and the
pushes are SPUBLISHed beside it, each routed to its channel's node by the cluster pipeline.

On one instance the pushes are routed to gateways, not users (``projections.delivery``): the
script that publishes a payload also reads its recipients' route sets (``keys.route``) and
publishes once per gateway on the gateway's channel, with the recipients' ids, and on the
user's own channel for a recipient with no live route. Reading the routes and publishing in
one script is what makes the switch safe: Redis runs the script whole, so a route the gateway
added before it (which the gateway waits for before it counts a socket as registered) is read
by it, and the gateway has listened on its own channel since it started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from functools import singledispatch
from typing import Any

import orjson
from redis.exceptions import NoScriptError, RedisError

from events import ChatEvent, MessageSent, keys
from events.errors import Unavailable
from projections.adapters.redis_client import AnyPipeline, RedisClient, is_cluster, publish
from projections.adapters.redis_pipeliner import RedisPipeliner
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


# Redis Cluster. KEYS[1] = recent:{cid}; ARGV = member, size, ttl. Same effect as ZADD,
# ZREMRANGEBYRANK, EXPIRE; the pushes are SPUBLISHed beside it (a script may publish only to its
# key's slot there).
_CACHE_LUA = """
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


# Single instance. KEYS = [recent:{cid} when ARGV[1] == '1'] + route:{uid} per recipient;
# ARGV = cache flag, member, payload, now (ms). Caches like _CACHE_LUA (the size and TTL, like
# the channels' prefixes, are written into the script, and each recipient's id is read off its
# route key: as few arguments to pack per call as _CACHE_LUA's), then publishes the payload
# once per gateway with a live route to any recipient (in the order first met;
# ``projections.delivery.routed``'s bytes), and on their own channel to recipients with none.
_USER_PREFIX = keys.user_channel("")
_GATEWAY_PREFIX = keys.gateway_channel(0).removesuffix("0")
_ROUTE_PREFIX = keys.route("")


def _route_lua(size: int) -> str:
    return f"""
local c = tonumber(ARGV[1])
if c == 1 then
  redis.call('ZADD', KEYS[1], 0, ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -{size + 1})
  redis.call('EXPIRE', KEYS[1], {_TTL_S})
end
local payload, now = ARGV[3], ARGV[4]
local by_gw, order = {{}}, {{}}
for i = c + 1, #KEYS do
  local uid = string.sub(KEYS[i], {len(_ROUTE_PREFIX) + 1})
  local gws = redis.call('ZRANGEBYSCORE', KEYS[i], now, '+inf')
  if #gws == 0 then
    redis.call('PUBLISH', '{_USER_PREFIX}' .. uid, payload)
  else
    for _, gw in ipairs(gws) do
      local users = by_gw[gw]
      if users == nil then
        users = {{}}
        by_gw[gw] = users
        order[#order + 1] = gw
      end
      users[#users + 1] = uid
    end
  end
end
for _, gw in ipairs(order) do
  redis.call('PUBLISH', '{_GATEWAY_PREFIX}' .. gw, table.concat(by_gw[gw], ',') .. '\\0' .. payload)
end
return 1
"""


class _Queued:
    """The two pipeline methods the routing calls use (``execute_command``, ``publish``), each
    queued on a ``RedisPipeliner`` at once; ``replies`` are their futures, in order."""

    def __init__(self, pipeliner: RedisPipeliner) -> None:
        self._pipeliner = pipeliner
        self.replies: list[asyncio.Future[Any]] = []

    def execute_command(self, *args: Any) -> None:
        self.replies.append(self._pipeliner.queue(*args))

    def publish(self, channel: str, payload: bytes) -> None:
        self.execute_command("PUBLISH", channel, payload)


def _route_call(
    pipe: _Queued,
    sha: str,
    cache: tuple[str, bytes] | None,
    payload: bytes,
    users: list[str],
    now_ms: int,
) -> None:
    """Queue one routing script call: ``cache`` (key, member) first if given, then ``payload``
    to ``users`` by their routes."""
    route_keys = [keys.route(u) for u in users]
    if cache is None:
        pipe.execute_command("EVALSHA", sha, len(route_keys), *route_keys, 0, b"", payload, now_ms)
    else:
        key, member = cache
        pipe.execute_command(
            "EVALSHA", sha, len(route_keys) + 1, key, *route_keys, 1, member, payload, now_ms
        )


def _route(event: ChatEvent, pipe: _Queued, sha: str, event_pushes: list[Push], now_ms: int) -> None:
    """Single instance: ``event``'s cache write (a message's) and pushes, in their order, the
    pushes to users routed to gateways: one script call per run of user pushes that share a
    payload, a plain publish for any other channel (a group shard)."""
    cache: tuple[str, bytes] | None = None
    if isinstance(event, MessageSent):
        cache = (keys.recent(event.conversation_id), _member(event.message_id, message_json(event)))
    # A run's users in order, once each (a dict: a group below the fan-out threshold has
    # hundreds of members, and a list's ``in`` would be quadratic per message).
    users: dict[str, None] = {}
    payload = b""
    for push in event_pushes:
        if push.channel.startswith(_USER_PREFIX):
            if users and push.payload != payload:
                _route_call(pipe, sha, cache, payload, list(users), now_ms)
                cache, users = None, {}
            payload = push.payload
            users[push.channel[len(_USER_PREFIX) :]] = None
            continue
        if users or cache is not None:
            _route_call(pipe, sha, cache, payload, list(users), now_ms)
            cache, users = None, {}
        pipe.publish(push.channel, push.payload)
    if users or cache is not None:
        _route_call(pipe, sha, cache, payload, list(users), now_ms)


@singledispatch
def _cache(event: ChatEvent, pipe: AnyPipeline, size: int, sha: str, event_pushes: list[Push]) -> None:
    """Redis Cluster: ``event``'s pushes, each a sharded publish on ``pipe``."""
    for push in event_pushes:
        publish(pipe, push.channel, push.payload)


@_cache.register
def _(event: MessageSent, pipe: AnyPipeline, size: int, sha: str, event_pushes: list[Push]) -> None:
    """Redis Cluster: the message cached by ``_CACHE_LUA``, then its pushes. (EVALSHA by
    execute_command: redis-py's cluster pipeline blocks its evalsha method, not the command.)"""
    key = keys.recent(event.conversation_id)
    member = _member(event.message_id, message_json(event))
    pipe.execute_command("EVALSHA", sha, 1, key, member, size, _TTL_S)
    for push in event_pushes:
        publish(pipe, push.channel, push.payload)


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
        # single instance: pushes to users are routed to gateways (one script for both)
        self._routed = not is_cluster(redis)
        # Single instance: the batch's script calls go out on a connection of their own
        # (``RedisPipeliner``), not in a redis-py ``Pipeline`` whose pool checkout, retry
        # wrapper and timeouts cost more than the calls at one or two events a batch
        # (docs/benchmarks.md, issue #19 session 17). Made at the first batch: a gateway builds
        # this class for its reads only.
        self._pipeliner: RedisPipeliner | None = None

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        """Cache ``events`` and push what they cause, in log order, in one round trip."""
        batch = [(event, await pushes(event, self._roster) if self._roster else []) for event in events]
        if self._trace_of is not None:
            batch = [(event, _with_trace(self._trace_of(event), p)) for event, p in batch]
        try:
            if self._sha is None:
                script = _route_lua(self.size) if self._routed else _CACHE_LUA
                self._sha = str(await self._redis.script_load(script))
            if self._routed:
                await self._route_all(batch, self._sha)
            else:
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

    async def _route_all(self, batch: list[tuple[ChatEvent, list[Push]]], sha: str) -> None:
        """Single instance: ``batch``'s script calls and publishes, queued in log order in one
        flush of the pipeliner (one write, one round trip). As a pipeline's ``execute``: every
        reply is read, then the first error is raised."""
        if self._pipeliner is None:
            self._pipeliner = RedisPipeliner(self._redis)
        queued = _Queued(self._pipeliner)
        now_ms = int(time.time() * 1000)
        for event, event_pushes in batch:
            _route(event, queued, sha, event_pushes, now_ms)
        error: Exception | None = None
        for reply in queued.replies:
            try:
                await reply
            except Exception as exc:  # noqa: BLE001 - the first is raised below, once all are read
                error = error or exc
        if error is not None:
            raise error

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
