"""The Redis idempotency store serializes a send's event once: the mark reuses the claim's JSON
and writes the same bytes as before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from commands.adapters.redis_idempotency import RedisIdempotencyStore, _dump
from commands.ports import SendRecord
from events import MessageSent
from tests.factories import message_sent


class _Pipe:
    def __init__(self, commands: list[tuple[Any, ...]]) -> None:
        self.commands = commands
        self.batch: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> _Pipe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.batch.append(args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.commands.extend(self.batch)
        return [None if "NX" in c else True for c in self.batch]  # a new claim; a mark stored


class _Redis:
    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self.commands)


async def test_the_mark_reuses_the_claims_json_and_writes_the_same_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dumps: list[int] = []
    original = MessageSent.model_dump_json

    def counting(self: MessageSent, **kwargs: Any) -> str:
        dumps.append(self.message_id)
        return original(self, **kwargs)

    monkeypatch.setattr(MessageSent, "model_dump_json", counting)
    redis = _Redis()
    store = RedisIdempotencyStore(redis, ttl_s=60)  # type: ignore[arg-type]
    event = message_sent(7, body="x" * 200)
    assert await store.claim("alice", "c7", SendRecord(event, False)) is None
    await store.mark_appended("alice", "c7", SendRecord(event, True))
    await asyncio.sleep(0.05)  # the mark goes alone after its delay
    assert dumps == [7]
    claim, mark = redis.commands
    monkeypatch.setattr(MessageSent, "model_dump_json", original)
    assert claim[2] == _dump(SendRecord(event, False)) and mark[2] == _dump(SendRecord(event, True))
    assert mark[3:] == ("XX", "KEEPTTL")
    # a mark for another event object (a retry's recorded one) serializes its own
    other = message_sent(7, body="x" * 200)
    await store.mark_appended("alice", "c7", SendRecord(other, True))
    await asyncio.sleep(0.05)
    assert redis.commands[-1][2] == _dump(SendRecord(other, True))
