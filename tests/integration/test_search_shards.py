"""Search shards against real tantivy on disk (a restart resumes from the stored offset, a
redelivery adds nothing, non-text is never indexed) and the gap fill against the real broker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import pytest
import tantivy
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from events import ChatEvent, MediaRef, MessageSent, Topics, encode_event
from events.errors import Unavailable
from projections.adapters.search import (
    APPLIED,
    SearchIndexer,
    Shard,
    ShardReaders,
    analyze,
    read_applied,
    shard_path,
)
from projections.adapters.search_schema import (
    PREFIX_FIELD,
    SCHEMA_VERSION,
    TOKENIZER,
    analyzer,
    fields,
    read_state,
)
from projections.search_query import parse
from streams.adapters.search_backfill import KafkaBackfill
from tests.factories import message_sent
from tidings.settings import Settings

TOPIC = "conv"


def sent(cid: str, mid: int, body: str, kind: str = "text") -> MessageSent:
    media = MediaRef(media_id="m1", content_type="image/png", size=3) if kind != "text" else None
    return message_sent(mid, conversation_id=cid, kind=kind, body=body, media=media, ts=mid)


def found(root: Path, q: str, cids: list[str], topic: str = TOPIC) -> list[int]:
    return [
        h.message_id for h in ShardReaders(root, topic).search(parse(q, analyze), cids, before=None, limit=50)
    ]


async def test_restart_resumes_and_redelivery_adds_nothing(tmp_path: Path) -> None:
    events: list[tuple[int, int, ChatEvent]] = [
        (0, 0, sent("g:1", 100, "hello world")),
        (0, 1, sent("g:1", 101, "hello picture", kind="image")),  # a caption: never indexed
        (1, 0, sent("g:2", 102, "hello again")),
        (0, 2, sent("g:1", 103, "bye world")),
    ]
    indexer = SearchIndexer(tmp_path, TOPIC)
    await indexer.apply_at(events)
    indexer.close()
    assert read_applied(shard_path(tmp_path, TOPIC, 0)) == 2
    assert read_applied(shard_path(tmp_path, TOPIC, 1)) == 0
    assert found(tmp_path, "hello", ["g:1", "g:2"]) == [102, 100]
    assert found(tmp_path, "hello", ["g:1"]) == [100]
    assert found(tmp_path, "picture", ["g:1"]) == []

    # A new process (the same disk): the shards open with their offsets, a redelivery of what
    # they hold changes nothing, and what follows is added.
    again = SearchIndexer(tmp_path, TOPIC)
    assert again.shard(0).applied == 2
    await again.apply_at([*events, (0, 3, sent("g:1", 104, "hello later"))])
    again.close()
    assert found(tmp_path, "hello", ["g:1", "g:2"]) == [104, 102, 100]
    assert found(tmp_path, "world", ["g:1"]) == [103, 100]


async def test_an_upsert_of_the_same_message_id_keeps_one(tmp_path: Path) -> None:
    indexer = SearchIndexer(tmp_path, TOPIC)
    await indexer.apply_at([(0, 0, sent("g:1", 100, "first words"))])
    # The same message id again at a later offset (a re-send replayed from the archive), and
    # twice in one batch.
    await indexer.apply_at([(0, 1, sent("g:1", 100, "first words"))])
    await indexer.apply_at([(0, 2, sent("g:1", 100, "first words")), (0, 3, sent("g:1", 100, "first again"))])
    indexer.close()
    assert found(tmp_path, "first", ["g:1"]) == [100]
    assert found(tmp_path, "again", ["g:1"]) == [100]


async def test_a_message_committed_before_its_offset_is_not_added_twice(tmp_path: Path) -> None:
    # A crash after the index commit and before the offset is written: the next process is
    # handed the same messages again, with ids at or below the newest in the shard.
    indexer = SearchIndexer(tmp_path, TOPIC)
    await indexer.apply_at([(0, 0, sent("g:1", 900, "twice over")), (0, 1, sent("g:1", 905, "twice more"))])
    indexer.close()
    path = shard_path(tmp_path, TOPIC, 0)
    (path / APPLIED).write_text(json.dumps({"offset": -1, "schema": SCHEMA_VERSION}))
    again = SearchIndexer(tmp_path, TOPIC)
    assert again.shard(0).newest_id == 905
    # Redelivered, plus an id older than the newest (another gateway's clock) and a new one.
    await again.apply_at(
        [
            (0, 0, sent("g:1", 900, "twice over")),
            (0, 1, sent("g:1", 905, "twice more")),
            (0, 2, sent("g:1", 903, "twice late")),
            (0, 3, sent("g:1", 910, "twice new")),
        ]
    )
    await again.apply_at([(0, 4, sent("g:1", 910, "twice newer"))])  # a duplicate on the log
    again.close()
    assert found(tmp_path, "twice", ["g:1"]) == [910, 905, 903, 900]
    assert found(tmp_path, "newer", ["g:1"]) == [910]
    assert found(tmp_path, "new", ["g:1"]) == []


async def test_a_shard_behind_the_log_is_filled_from_kafka(services: Settings, tmp_path: Path) -> None:
    topic = Topics(services.topic_prefix).conversation_events
    cid = f"g:search{uuid.uuid4().hex[:10]}"
    word = f"w{uuid.uuid4().hex[:10]}"
    partitions = list(range(services.topic_partitions))
    partition = DefaultPartitioner()(cid.encode(), partitions, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await producer.start()
    offsets: list[int] = []
    events = [sent(cid, 10_000 + i, f"{word} number {i}") for i in range(5)]
    try:
        for event in events:
            meta = await producer.send_and_wait(
                topic, encode_event(event), key=cid.encode(), partition=partition
            )
            offsets.append(meta.offset)
    finally:
        await producer.stop()

    # The shard has everything before our first event (as if restored from an older copy) and
    # the consumer group delivers only the last one.
    path = shard_path(tmp_path, topic, partition)
    path.mkdir(parents=True)
    (path / APPLIED).write_text(json.dumps({"offset": offsets[0] - 1}))
    indexer = SearchIndexer(tmp_path, topic, KafkaBackfill(services.kafka_bootstrap, topic))
    await indexer.apply_at([(partition, offsets[-1], events[-1])])
    indexer.close()
    assert found(tmp_path, word, [cid], topic) == [e.message_id for e in reversed(events)]
    assert read_applied(path) == offsets[-1]


class LogOf:
    """The log as the backfill reads it: ``(offset, event)`` of one partition."""

    def __init__(self, events: list[tuple[int, ChatEvent]]) -> None:
        self.events = events
        self.reads: list[tuple[int, int]] = []

    async def read(
        self, partition: int, start: int, end: int
    ) -> AsyncGenerator[list[tuple[int, ChatEvent]], None]:
        self.reads.append((start, end))
        wanted = [(o, e) for o, e in self.events if start <= o < end]
        for i in range(0, len(wanted), 2):  # in chunks, as the log gives them
            yield wanted[i : i + 2]


async def test_what_a_crash_loses_before_the_commit_comes_back_from_the_log(tmp_path: Path) -> None:
    log = LogOf([(i, sent("g:1", 200 + i, f"crash number {i}")) for i in range(6)])
    first = SearchIndexer(tmp_path, TOPIC, log, commit_interval_s=3600)
    await first.apply_at([(0, 0, log.events[0][1])])  # the first batch commits
    await first.apply_at([(0, o, e) for o, e in log.events[1:4]])  # these wait for the interval
    assert read_applied(shard_path(tmp_path, TOPIC, 0)) == 0
    assert found(tmp_path, "crash", ["g:1"]) == [200]
    # The process dies here (no close, no commit); the consumer group had committed past
    # offset 3, so the next process is handed offset 4 first.
    first.abandon()
    second = SearchIndexer(tmp_path, TOPIC, log, commit_interval_s=3600)
    await second.apply_at([(0, o, e) for o, e in log.events[4:]])
    second.close()
    assert log.reads == [(1, 4)]
    assert found(tmp_path, "crash", ["g:1"]) == [205, 204, 203, 202, 201, 200]


async def test_a_shard_held_by_another_worker_is_unavailable_until_released(tmp_path: Path) -> None:
    first = SearchIndexer(tmp_path, TOPIC)
    await first.apply_at([(0, 0, sent("g:1", 300, "handover one"))])
    second = SearchIndexer(tmp_path, TOPIC)
    # The writer lock is held: the projector retries an Unavailable, never dead-letters it.
    with pytest.raises(Unavailable):
        await second.apply_at([(0, 1, sent("g:1", 301, "handover two"))])
    first.release([0])  # the rebalance revoked it from the first worker
    await second.apply_at([(0, 1, sent("g:1", 301, "handover two"))])
    second.close()
    assert found(tmp_path, "handover", ["g:1"]) == [301, 300]


async def test_a_gateway_keeps_each_searcher_until_its_shard_commits(tmp_path: Path) -> None:
    indexer = SearchIndexer(tmp_path, TOPIC)
    await indexer.apply_at([(0, 0, sent("g:1", 400, "cached words")), (1, 0, sent("g:2", 401, "cached too"))])
    readers = ShardReaders(tmp_path, TOPIC)

    def ids() -> list[int]:
        return [
            h.message_id
            for h in readers.search(parse("cached", analyze), ["g:1", "g:2"], before=None, limit=50)
        ]

    assert ids() == [401, 400]
    assert readers.reloads == 2  # one searcher per shard
    assert ids() == [401, 400]
    assert readers.reloads == 2  # no commit since: the same searchers
    # Added but not committed: not searchable yet, and nothing to reload.
    indexer.shard(0).add([(1, sent("g:1", 402, "cached later"))])
    assert ids() == [401, 400]
    assert readers.reloads == 2
    # Shard 0 commits: its searcher alone is made again, and sees the new message.
    indexer.shard(0).commit()
    assert ids() == [402, 401, 400]
    assert readers.reloads == 3
    # A commit that replaces what was there (an upsert of 402) is seen as well.
    await indexer.apply_at([(0, 2, sent("g:1", 402, "other words"))])
    assert ids() == [401, 400]
    assert readers.reloads == 4
    # A shard that appears later is opened.
    await indexer.apply_at([(2, 0, sent("g:3", 403, "cached elsewhere"))])
    indexer.close()
    assert [
        h.message_id for h in readers.search(parse("cached", analyze), ["g:3"], before=None, limit=50)
    ] == [403]
    assert readers.reloads == 5


async def test_prefixes_of_each_length_find_word_starts_only(tmp_path: Path) -> None:
    bodies = {
        500: "Quickly now",
        501: "the quiet one",
        502: "internationalization matters",
        503: "interstellar trip",
        504: "die Straße entlang",
        505: "a trick question",  # "ick" inside a word: never a prefix match
    }
    indexer = SearchIndexer(tmp_path, TOPIC)
    await indexer.apply_at([(0, i, sent("g:1", mid, body)) for i, (mid, body) in enumerate(bodies.items())])
    indexer.close()
    assert read_state(shard_path(tmp_path, TOPIC, 0)) == (5, SCHEMA_VERSION)
    for q, expected in [
        ("qu*", [505, 501, 500]),  # 2..8 letters: one n-gram term
        ("qui*", [501, 500]),
        ("quick*", [500]),
        ("QUICKLY*", [500]),  # the whole word is its own longest n-gram
        ("inter*", [503, 502]),
        ("internat*", [502]),  # 8
        ("internati*", [502]),  # 9 and more: expanded
        ("internationalization*", [502]),
        ("straß*", [504]),  # folded like the body: strass
        ("ick*", []),
        ("interstellar trip*", [503]),
    ]:
        assert found(tmp_path, q, ["g:1"]) == expected, q
    # Highlights mark the words a prefix matched.
    (hit,) = ShardReaders(tmp_path, TOPIC).search(
        parse("inter* trip", analyze), ["g:1"], before=None, limit=5
    )
    assert hit.highlights == ["<em>interstellar</em> <em>trip</em>"]


def old_schema() -> tantivy.Schema:
    """Schema version 1, as the shards written before the n-gram field have it."""
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("body", stored=True, tokenizer_name=TOKENIZER, index_option="position")
    builder.add_text_field("conversation_id", stored=False, tokenizer_name="raw", index_option="basic")
    builder.add_unsigned_field("message_id", stored=True, indexed=True, fast=True)
    builder.add_bytes_field("message", stored=True, indexed=False)
    return builder.build()


def write_old_shard(path: Path, events: list[tuple[int, MessageSent]]) -> None:
    path.mkdir(parents=True)
    index = tantivy.Index(old_schema(), path=str(path))
    index.register_tokenizer(TOKENIZER, analyzer())
    writer = index.writer(heap_size=15_000_000, num_threads=1)
    for _, event in events:
        doc = tantivy.Document()
        doc.add_text("body", event.body)
        doc.add_text("conversation_id", event.conversation_id)
        doc.add_unsigned("message_id", event.message_id)
        doc.add_bytes("message", b'{"message_id": %d}' % event.message_id)
        writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()
    del writer
    (path / APPLIED).write_text(json.dumps({"offset": events[-1][0]}))  # no "schema": version 1


async def test_an_old_schema_shard_is_read_with_its_own_fields_then_rebuilt_from_the_log(
    services: Settings, tmp_path: Path
) -> None:
    topic = Topics(services.topic_prefix).conversation_events
    cid = f"g:schema{uuid.uuid4().hex[:10]}"
    word = f"w{uuid.uuid4().hex[:10]}"
    partitions = list(range(services.topic_partitions))
    partition = DefaultPartitioner()(cid.encode(), partitions, partitions)
    events = [sent(cid, 20_000 + i, f"{word} schematic number {i}") for i in range(4)]
    producer = AIOKafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    await producer.start()
    offsets: list[int] = []
    try:
        for event in events:
            meta = await producer.send_and_wait(
                topic, encode_event(event), key=cid.encode(), partition=partition
            )
            offsets.append(meta.offset)
    finally:
        await producer.stop()

    # A shard written by the old code holds the first three messages (and, in the real world,
    # every earlier one of its partition).
    path = shard_path(tmp_path, topic, partition)
    write_old_shard(path, list(zip(offsets[:3], events[:3], strict=True)))
    assert read_state(path) == (offsets[2], 1)
    # A gateway asks it only with the fields it has: the prefix is expanded over its terms.
    readers = ShardReaders(tmp_path, topic)

    def ids(q: str) -> list[int]:
        return [h.message_id for h in readers.search(parse(q, analyze), [cid], before=None, limit=50)]

    mids = [e.message_id for e in reversed(events)]
    assert ids(f"{word} schem*") == mids[1:]

    # The search worker starts and is handed the fourth: the old shard is set aside and a new
    # one filled from the start of the log, in this version's schema.
    indexer = SearchIndexer(tmp_path, topic, KafkaBackfill(services.kafka_bootstrap, topic, chunk=100))
    await indexer.apply_at([(partition, offsets[3], events[3])])
    indexer.close()
    assert read_state(path) == (offsets[3], SCHEMA_VERSION)
    assert PREFIX_FIELD in fields(path)
    (aside,) = (tmp_path / f"{topic}.schema-v1").iterdir()
    assert read_state(aside) == (offsets[2], 1)
    # The same reader opens the new shard with its new fields: the prefix is one n-gram term.
    assert ids(f"{word} schem*") == mids
    assert ids(f"{word} schematic") == mids


def sent_at(cid: str, mid: int, body: str, age_s: float) -> MessageSent:
    """A text message sent ``age_s`` seconds ago (its time as on the log)."""
    return sent(cid, mid, body).model_copy(update={"ts": round((time.time() - age_s) * 1000)})


async def feed(indexer: SearchIndexer, age_s: float, batches: int, first_mid: int) -> None:
    """``batches`` one-message batches to partition 0, 0.1 s apart, each sent ``age_s`` ago."""
    for i in range(batches):
        await indexer.apply_at([(0, i, sent_at("g:1", first_mid + i, f"cadence number {i}", age_s))])
        await asyncio.sleep(0.1)


async def test_a_shard_commits_every_interval_while_caught_up_and_seldom_while_behind(tmp_path: Path) -> None:
    interval = 0.5
    live = SearchIndexer(tmp_path / "live", TOPIC, commit_interval_s=interval, commit_most_s=5.0)
    behind = SearchIndexer(tmp_path / "behind", TOPIC, commit_interval_s=interval, commit_most_s=5.0)
    try:
        # The same 20 batches over 2 s (longer on a loaded machine): fresh ones (just sent),
        # and ones a minute late (a catch-up after an outage).
        started = time.monotonic()
        await asyncio.gather(feed(live, 0.0, 20, 600), feed(behind, 60.0, 20, 600))
        commits, elapsed = live.commits, time.monotonic() - started
        # Caught up: a commit about every interval (the first at once), none skipped, and never
        # two within one interval: at most one more than the intervals the feed lasted (its
        # own length, measured: 2 s on a quiet machine, more when the loop waits for a core).
        assert 3 <= commits <= 1 + int(elapsed / interval), (commits, elapsed)
        # Behind: the first batch at once, then one commit per 5 s at most.
        assert behind.commits == 1, behind.commits
        assert read_applied(shard_path(tmp_path / "behind", TOPIC, 0)) == 0
        # A caught-up shard's last batch is committed by the flusher within the interval.
        last = read_applied(shard_path(tmp_path / "live", TOPIC, 0))
        started = time.monotonic()
        for _ in range(250):
            if read_applied(shard_path(tmp_path / "live", TOPIC, 0)) == 19:
                break
            await asyncio.sleep(0.02)
        assert read_applied(shard_path(tmp_path / "live", TOPIC, 0)) == 19, last
        # 0.5 s at most (the flusher sleeps until the shard is due), plus this shared machine's slack.
        assert time.monotonic() - started <= 1.5
    finally:
        live.close()
        behind.close()
    # Closing commits what waited: nothing is lost either way.
    for root in ("live", "behind"):
        assert found(tmp_path / root, "cadence", ["g:1"]) == list(range(619, 599, -1))
        assert read_applied(shard_path(tmp_path / root, TOPIC, 0)) == 19


async def test_a_busy_shard_commits_when_its_oldest_message_nears_the_age(tmp_path: Path) -> None:
    age = 0.9
    plain = SearchIndexer(tmp_path / "plain", TOPIC, commit_interval_s=0.3, commit_most_s=5.0)
    aged = SearchIndexer(tmp_path / "aged", TOPIC, commit_interval_s=0.3, commit_most_s=5.0, commit_age_s=age)
    acked: dict[int, float] = {}
    searchable: dict[int, float] = {}

    async def watch() -> None:
        # When each offset became committed (searchable) in the aged root.
        while True:
            applied = read_applied(shard_path(tmp_path / "aged", TOPIC, 0))
            now = time.monotonic()
            for offset in acked:
                if offset <= applied and offset not in searchable:
                    searchable[offset] = now
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        # The same 30 fresh batches, 0.1 s apart (3 s, more on a loaded machine), to both.
        started = time.monotonic()
        for i in range(30):
            acked[i] = time.monotonic()
            batch = [(0, i, sent_at("g:1", 700 + i, f"steady number {i}", 0))]
            await asyncio.gather(plain.apply_at(batch), aged.apply_at(batch))
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
        for _ in range(250):
            if len(searchable) == 30:
                break
            await asyncio.sleep(0.02)
        # Every message searchable within the age of its ack, plus the commit and this shared
        # machine's slack (0.5 s): the contract's bound is kept by the age, not the interval.
        late = {i: round(searchable[i] - acked[i], 3) for i in acked if searchable[i] - acked[i] > age + 0.5}
        assert len(searchable) == 30 and not late, (searchable, late)
        # The first batch at once (the shard was quiet), then a commit per ~age (the batches'
        # own latency taken off) rather than per interval: fewer than the plain indexer's, and
        # at most one more than the ages the feed lasted.
        assert 2 <= aged.commits <= 1 + int(elapsed / (age - 0.15)), (aged.commits, elapsed)
        assert aged.commits < plain.commits, (aged.commits, plain.commits)
    finally:
        watcher.cancel()
        plain.close()
        aged.close()
    for root in ("plain", "aged"):
        assert found(tmp_path / root, "steady", ["g:1"]) == list(range(729, 699, -1))


async def test_offsets_alone_commit_at_the_longest_interval(tmp_path: Path) -> None:
    indexer = SearchIndexer(tmp_path, TOPIC, commit_interval_s=0.2, commit_most_s=1.5, commit_age_s=0.5)
    path = shard_path(tmp_path, TOPIC, 0)
    try:
        await indexer.apply_at([(0, 0, sent_at("g:1", 960, "offsets first", 0))])  # at once
        assert read_applied(path) == 0
        await asyncio.sleep(0.3)
        # Events that index nothing (a photo): no one searches for them, the offset waits.
        photo = sent("g:1", 961, "", kind="image").model_copy(update={"ts": round(time.time() * 1000)})
        await indexer.apply_at([(0, 1, photo)])
        await asyncio.sleep(0.5)
        assert (read_applied(path), indexer.commits) == (0, 1)
        # The flusher commits it at the longest interval after the last commit.
        for _ in range(250):
            if read_applied(path) == 1:
                break
            await asyncio.sleep(0.02)
        assert (read_applied(path), indexer.commits) == (1, 2)
        # A message after a quiet spell is committed at once, with any offsets waiting.
        await asyncio.sleep(0.3)
        await indexer.apply_at([(0, 2, photo.model_copy(update={"message_id": 962}))])
        await indexer.apply_at([(0, 3, sent_at("g:1", 963, "offsets again", 0))])
        assert (read_applied(path), indexer.commits) == (3, 3)
    finally:
        indexer.close()
    assert found(tmp_path, "offsets", ["g:1"]) == [963, 960]


async def test_a_message_behind_pending_offsets_is_committed_by_its_age_not_theirs(tmp_path: Path) -> None:
    """A message that lands in a shard whose only pending events index nothing (a photo, due at
    the longest interval) moves the shard's due time up: the flusher, asleep until the offsets'
    due time, is woken for it (the e2e freshness test once read 4.9 s for this, at a 5 s
    longest interval)."""
    indexer = SearchIndexer(tmp_path, TOPIC, commit_interval_s=0.2, commit_most_s=5.0, commit_age_s=0.5)
    path = shard_path(tmp_path, TOPIC, 0)
    try:
        await indexer.apply_at([(0, 0, sent_at("g:1", 970, "quiet first", 0))])  # at once
        photo = sent("g:1", 971, "", kind="image").model_copy(update={"ts": round(time.time() * 1000)})
        await indexer.apply_at([(0, 1, photo)])  # only an offset pending: due in 5 s
        await asyncio.sleep(0.05)
        await indexer.apply_at([(0, 2, sent_at("g:1", 972, "behind the photo", 0))])
        added = time.monotonic()
        for _ in range(150):
            if read_applied(path) == 2:
                break
            await asyncio.sleep(0.02)
        took = time.monotonic() - added
        assert read_applied(path) == 2 and took < 1.5, f"committed {took:.2f} s after it was added"
    finally:
        indexer.close()
    assert found(tmp_path, "behind", ["g:1"]) == [972]


async def test_the_flusher_wakes_only_when_a_shard_is_due(tmp_path: Path) -> None:
    indexer = SearchIndexer(tmp_path, TOPIC, commit_interval_s=0.3, commit_most_s=5.0)
    try:
        await indexer.apply_at([(0, 0, sent_at("g:1", 800, "flusher one", 0))])  # at once
        await indexer.apply_at([(0, 1, sent_at("g:1", 801, "flusher two", 0))])  # waits
        assert (indexer.commits, indexer.flusher_looks) == (1, 0)
        for _ in range(250):
            if read_applied(shard_path(tmp_path, TOPIC, 0)) == 1:
                break
            await asyncio.sleep(0.02)
        assert read_applied(shard_path(tmp_path, TOPIC, 0)) == 1
        # One look, when the shard was due: the flusher does not poll.
        assert (indexer.commits, indexer.flusher_looks) == (2, 1)
        # Nothing pending: no commit, and no look, however long it stays so.
        await asyncio.sleep(1.0)
        assert (indexer.commits, indexer.flusher_looks) == (2, 1)
    finally:
        indexer.close()


async def test_a_shard_with_news_is_committed_when_due_while_another_waits_long(tmp_path: Path) -> None:
    indexer = SearchIndexer(tmp_path, TOPIC, commit_interval_s=0.3, commit_most_s=30.0)
    try:
        # Both shards commit their first batch at once.
        await indexer.apply_at(
            [(0, 0, sent_at("g:1", 900, "due zero", 0)), (1, 0, sent_at("g:2", 901, "due one", 0))]
        )
        assert indexer.commits == 2
        # Shard 0 gets a minute-old batch (a catch-up: its next commit in 30 s), so the flusher
        # sleeps for 30 s; then shard 1 gets a fresh one, due in 0.3 s: the flusher is woken
        # for it, and it is searchable long before shard 0's turn.
        await indexer.apply_at([(0, 1, sent_at("g:1", 902, "due late", 60))])
        await asyncio.sleep(0.05)
        await indexer.apply_at([(1, 1, sent_at("g:2", 903, "due fresh", 0))])
        for _ in range(250):
            if read_applied(shard_path(tmp_path, TOPIC, 1)) == 1:
                break
            await asyncio.sleep(0.02)
        assert read_applied(shard_path(tmp_path, TOPIC, 1)) == 1
        assert read_applied(shard_path(tmp_path, TOPIC, 0)) == 0
        assert found(tmp_path, "due", ["g:1", "g:2"]) == [903, 901, 900]
    finally:
        indexer.close()
    assert found(tmp_path, "due", ["g:1", "g:2"]) == [903, 902, 901, 900]


# A search worker's shards, indexing a backlog (messages sent a minute ago: long commit
# intervals) until it is killed: prints each offset once added, flushes stdout.
_INDEX_UNTIL_KILLED = """
import asyncio, sys, time
from pathlib import Path
from projections.adapters.search import SearchIndexer
from tests.integration.test_search_shards import backlog

async def main() -> None:
    indexer = SearchIndexer(Path(sys.argv[1]), "conv", commit_interval_s=0.2, commit_most_s=0.6)
    for offset, events in backlog():
        await indexer.apply_at(events)
        print(offset, flush=True)
        await asyncio.sleep(0.01)

asyncio.run(main())
"""


def backlog() -> Iterator[tuple[int, list[tuple[int, int, ChatEvent]]]]:
    """Batches of 20 messages over partitions 0 and 1, a minute old: ``(last offset, batch)``."""
    sent_ms = round((time.time() - 60) * 1000)
    for start in range(0, 4000, 20):
        yield (
            start + 19,
            [
                (o % 2, o // 2, sent("g:1", 700_000 + o, f"killed {o}").model_copy(update={"ts": sent_ms}))
                for o in range(start, start + 20)
            ],
        )


def index_until_killed(tmp_path: Path) -> int:
    """Run ``_INDEX_UNTIL_KILLED`` over ``tmp_path``, SIGKILL it mid-stream once each shard has
    committed several times; the last message it had added (its index in ``backlog``)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _INDEX_UNTIL_KILLED, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    added = -1
    try:
        started = time.monotonic()
        # Killed mid-stream, after several commits of each shard (one per 0.6 s at most).
        while time.monotonic() - started < 60:
            line = child.stdout.readline()
            if not line:
                break
            added = int(line)
            if added >= 1500 and all(read_applied(shard_path(tmp_path, TOPIC, p)) > 100 for p in (0, 1)):
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    return added


def test_a_kill_9_while_behind_loses_nothing_the_offsets_promise(tmp_path: Path) -> None:
    added = index_until_killed(tmp_path)
    assert added >= 1500, "the child did not index"
    readers = ShardReaders(tmp_path, TOPIC)
    everything = {o: 700_000 + o for o in range(4000)}
    applied = {p: read_applied(shard_path(tmp_path, TOPIC, p)) for p in (0, 1)}
    assert all(applied[p] >= 0 for p in (0, 1)), applied
    # Every message at or below each shard's offset is in it: the offset beside a shard never
    # claims more than its index holds (some above it may be there too: re-applied, harmless).
    ids = readers.all_ids(parse("killed", analyze))
    promised = {mid for o, mid in everything.items() if o // 2 <= applied[o % 2]}
    assert promised <= ids
    # A new worker, handed the log from where the group had got (past the shards' offsets),
    # fills the gap from the log and goes on: every message once.
    log_events = {p: [(off, e) for _, batch in backlog() for pp, off, e in batch if pp == p] for p in (0, 1)}

    class TwoPartitions(LogOf):
        async def read(
            self, partition: int, start: int, end: int
        ) -> AsyncGenerator[list[tuple[int, ChatEvent]], None]:
            self.reads.append((start, end))
            yield [(o, e) for o, e in log_events[partition] if start <= o < end]

    again = SearchIndexer(tmp_path, TOPIC, TwoPartitions([]), commit_interval_s=0.2, commit_most_s=0.6)
    group_at = (added + 1) // 2  # per partition: what the killed child had been handed
    asyncio.run(again.apply_at([(p, o, e) for p in (0, 1) for o, e in log_events[p] if o >= group_at]))
    again.close()
    ids = ShardReaders(tmp_path, TOPIC).all_ids(parse("killed", analyze))
    assert ids == set(everything.values())
    assert {p: read_applied(shard_path(tmp_path, TOPIC, p)) for p in (0, 1)} == {0: 1999, 1: 1999}


async def test_what_was_added_before_a_failed_commit_is_committed_by_the_flusher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    indexer = SearchIndexer(tmp_path, TOPIC, commit_interval_s=0.3, commit_most_s=5.0)
    try:
        await indexer.apply_at([(0, 0, sent_at("g:1", 950, "failed once", 0))])  # at once
        await asyncio.sleep(0.35)  # due again; the flusher waits, nothing pending
        real = Shard.commit
        failures: list[Shard] = []

        def commit_failing_once(shard: Shard) -> None:
            if not failures:
                failures.append(shard)
                raise OSError("No space left on device")
            real(shard)

        monkeypatch.setattr(Shard, "commit", commit_failing_once)
        with pytest.raises(Unavailable):
            await indexer.apply_at([(0, 1, sent_at("g:1", 951, "failed twice", 0))])
        # No batch comes again (the projector's retry may be a while): the flusher commits it.
        for _ in range(250):
            if read_applied(shard_path(tmp_path, TOPIC, 0)) == 1:
                break
            await asyncio.sleep(0.02)
        assert read_applied(shard_path(tmp_path, TOPIC, 0)) == 1
        assert len(failures) == 1
    finally:
        indexer.close()
    assert found(tmp_path, "failed", ["g:1"]) == [951, 950]
