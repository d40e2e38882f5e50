"""``tidings replay --projection search`` against the real broker: rebuilt shards find what the
log holds, ``switch`` puts them in place, ``verify`` sees a difference in hit sets."""

from __future__ import annotations

import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from events import Snowflake, Topics, encode_event
from projections.adapters.search import ShardReaders, analyze, shard_path
from projections.adapters.search_schema import SCHEMA_VERSION, read_state
from projections.search_query import parse
from tests.factories import message_sent
from tidings.search_rebuild import rebuild_search, rebuilt_root, switch_search, verify_search
from tidings.settings import Settings


async def produce(settings: Settings, cid: str, bodies: list[str], first_id: int) -> None:
    topic = Topics(settings.topic_prefix).conversation_events
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i, body in enumerate(bodies):
            await producer.send_and_wait(
                topic,
                encode_event(message_sent(first_id + i, conversation_id=cid, body=body)),
                key=cid.encode(),
            )
    finally:
        await producer.stop()


def found(root: Path, settings: Settings, q: str, cid: str) -> list[int]:
    topic = Topics(settings.topic_prefix).conversation_events
    hits = ShardReaders(root, topic).search(parse(q, analyze), [cid], before=None, limit=50)
    return [h.message_id for h in hits]


async def test_rebuild_switch_and_verify(services: Settings, tmp_path: Path) -> None:
    settings = services.model_copy(
        update={"search_dir": tmp_path / "search", "archive_dir": tmp_path / "archive"}
    )
    cid = f"g:rebuild{uuid.uuid4().hex[:10]}"
    word = f"w{uuid.uuid4().hex[:10]}"
    # Ids (and times) of now: these events stay in the shared test log, where a future time
    # would hold back every later archive run of their partition (it stops at the cutoff).
    base = Snowflake(uuid.uuid4().int % 1024).next_id()
    await produce(settings, cid, [f"hello {word} {i}" for i in range(4)], base)

    state = await rebuild_search(settings)
    assert state.from_log >= 4 and state.archived == 0
    assert found(rebuilt_root(settings), settings, word, cid) == [base + 3, base + 2, base + 1, base]
    topic = Topics(settings.topic_prefix).conversation_events
    assert all(
        read_state(shard_path(rebuilt_root(settings), topic, p)) == (end - 1, SCHEMA_VERSION)
        for p, end in state.ends.items()
        if end > 0
    )
    # A rebuilt shard has the n-gram field: a 3..8-letter prefix is one term of it.
    assert found(rebuilt_root(settings), settings, f"{word[:6]}*", cid) == [
        base + 3,
        base + 2,
        base + 1,
        base,
    ]

    switch_search(settings)
    assert found(settings.search_root, settings, word, cid) == [base + 3, base + 2, base + 1, base]

    # One more message: a new rebuild has it, the live shards (no worker here) do not.
    await produce(settings, cid, [f"hello {word} later"], base + 10)
    await rebuild_search(settings)
    diffs = {d.q: d for d in verify_search(settings)}
    assert diffs["hello"].only_rebuilt == [base + 10] and diffs["hello"].only_live == []
    assert all(d.equal for q, d in diffs.items() if q not in ("hello", "he*"))
