"""``IdempotencyStore`` on Redis: one key per ``(sender, client_msg_id)`` with a TTL.

Both commands go through a ``RedisPipeliner``: the claims and marks of concurrent sends share
pipelines (one round trip and one pool checkout for many), which is what a busy gateway's CPU
went to. Only the claim is waited for: the mark goes out with the next pipeline (within
``MARK_DELAY_S``) while the ack is written, so a send costs one Redis round trip of idempotency
on its path, and on a busy gateway the mark shares a pipeline with other sends' commands. A
mark that is lost (Redis failed, or the process stopped first) is as one never made: a retry
appends the recorded event again, which readers drop by ``message_id``
(``commands.handlers.send_message``)."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import orjson
from redis.exceptions import RedisError

from commands.adapters.redis_scripts import RELEASE_IF_HELD
from commands.ports import SendRecord
from events import MessageSent, keys
from events.errors import Unavailable
from projections.adapters.redis_client import RedisClient
from projections.adapters.redis_pipeliner import PipelinedScript, RedisPipeliner

log = logging.getLogger(__name__)

# How long a mark may wait for the pipeline of another command (the next send's rate-limit
# check or claim, on the gateway's shared pipeliner) before it goes out alone: at a few hundred
# sends a second it rides along, one Redis round trip a send fewer (docs/benchmarks.md, issue
# #19 session 9). Waiting changes nothing a client sees: the mark is already not awaited, and
# a retry's claim queued meanwhile goes out behind it in the same pipeline.
MARK_DELAY_S = 0.02


def _dump(record: SendRecord, event_json: bytes | None = None) -> bytes:
    """``{"appended": ..., "event": {...}}``: the event as pydantic writes it in JSON (in Rust,
    without the Python dict a ``model_dump`` builds first), or ``event_json`` when given."""
    appended = b"true" if record.appended else b"false"
    if event_json is None:
        event_json = record.event.model_dump_json().encode()
    return b'{"appended":' + appended + b',"event":' + event_json + b"}"


# Events whose JSON a claim wrote, until their mark (by identity: the mark of a send carries
# the event its claim carried); bounded, for sends whose mark never comes (a failed append).
_REMEMBERED = 1024


def _load(raw: bytes) -> SendRecord:
    data = orjson.loads(raw)
    return SendRecord(MessageSent.model_validate(data["event"]), bool(data["appended"]))


class RedisIdempotencyStore:
    def __init__(self, redis: RedisClient, ttl_s: int, *, pipeliner: RedisPipeliner | None = None) -> None:
        """``pipeliner``: shared with the process's other pipelined stores (the gateway's rate
        limiter), so a send's claim goes out with its own rate-limit check and its mark with
        the next send's."""
        self._redis = pipeliner or RedisPipeliner(redis)
        self._release = PipelinedScript(self._redis, redis, RELEASE_IF_HELD)
        self._owns_pipeliner = pipeliner is None
        self._ttl_s = ttl_s
        # id(event) -> (event, its JSON): the mark reuses what the claim serialized (the dump
        # of a send's record, twice per send before, was 8-24 µs of the gateway's CPU each).
        self._event_json: collections.OrderedDict[int, tuple[MessageSent, bytes]] = collections.OrderedDict()

    async def aclose(self) -> None:
        """Send the marks still waiting for company and stop (before the client is closed). A
        shared pipeliner is its owner's to close."""
        if self._owns_pipeliner:
            await self._redis.aclose()

    async def claim(self, sender_id: str, client_msg_id: str, record: SendRecord) -> SendRecord | None:
        key = keys.idempotency(sender_id, client_msg_id)
        event_json = record.event.model_dump_json().encode()
        self._event_json[id(record.event)] = (record.event, event_json)
        if len(self._event_json) > _REMEMBERED:
            self._event_json.popitem(last=False)
        try:
            # SET NX returns the old value with GET (Redis >= 7.0): one round trip, atomic.
            old = await self._redis.execute(
                "SET", key, _dump(record, event_json), "NX", "EX", self._ttl_s, "GET", get=True
            )
        except RedisError as exc:
            raise Unavailable("idempotency store unavailable") from exc
        if old is None:
            return None
        return _load(old if isinstance(old, bytes) else str(old).encode())

    async def mark_appended(self, sender_id: str, client_msg_id: str, record: SendRecord) -> None:
        """Queued for the next pipeline and not waited for; a failure is logged. A retry whose
        claim overtakes it (another pipeline, on another connection) appends again."""
        key = keys.idempotency(sender_id, client_msg_id)
        remembered = self._event_json.pop(id(record.event), None)
        event_json = remembered[1] if remembered is not None and remembered[0] is record.event else None
        mark = self._redis.queue_later(MARK_DELAY_S, "SET", key, _dump(record, event_json), "XX", "KEEPTTL")
        mark.add_done_callback(_marked)

    async def withdraw(self, sender_id: str, client_msg_id: str, record: SendRecord) -> None:
        """Deleted only if it still holds the claim's value (compared in Redis, one script)."""
        remembered = self._event_json.pop(id(record.event), None)
        event_json = remembered[1] if remembered is not None and remembered[0] is record.event else None
        try:
            key = keys.idempotency(sender_id, client_msg_id)
            await self._release(keys=[key], args=[_dump(record, event_json)])
        except RedisError as exc:
            raise Unavailable("idempotency store unavailable") from exc


def _marked(mark: asyncio.Future[Any]) -> None:
    if mark.cancelled():
        return
    exc = mark.exception()
    if exc is not None:
        # As a mark never made: a retry of the send appends the recorded event again.
        log.warning("idempotency mark not stored (%r); a retry of that send appends it again", exc)
