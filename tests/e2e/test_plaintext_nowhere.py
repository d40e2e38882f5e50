"""The plaintext of an encrypted conversation is nowhere on the server.

Unique markers are sent as real Megolm ciphertext (vodozemac) in an encrypted group and an
encrypted direct chat, and, as the control, as text in a plaintext chat. Once the persist worker
has them in Cassandra and the search worker has indexed the control, the archive job runs; then
everything the server keeps is searched for each marker and its base64: every record (key, value,
headers) of every Kafka topic of the test namespace from the beginning, every row of every
Cassandra table of the test keyspace, every key of the test Redis database (read as its type
requires), the search index (its stored documents and terms through tantivy, and its files'
bytes) and the Parquet archive (every row through pyarrow, and its files' bytes). The encrypted
markers are found nowhere; the control markers are found in each of them, so the search works.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import tantivy
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from events import direct_conversation_id
from tests.e2e.conftest import System, run_cli, user
from tests.e2ee_support import Megolm, decrypt
from tests.polling import until as _until

N = 6


def _needles(marker: str) -> list[bytes]:
    raw = marker.encode()
    encoded = [base64.b64encode(raw), base64.urlsafe_b64encode(raw)]
    return [raw, raw.lower(), *encoded, *(e.rstrip(b"=") for e in encoded)]


def _found(haystack: bytes, markers: Iterable[str]) -> set[str]:
    low = haystack.lower()
    return {m for m in markers if any(n in haystack or n.lower() in low for n in _needles(m))}


def _text(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return repr(value).encode()


async def _kafka(system: System) -> bytes:
    prefix = system.settings.topic_prefix
    admin = AIOKafkaAdminClient(bootstrap_servers=system.settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(
            [t for t in await admin.list_topics() if t.startswith(prefix)]
        )
    finally:
        await admin.close()
    parts = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
    assert any(tp.topic.endswith("conversation-events") for tp in parts), described
    consumer = AIOKafkaConsumer(bootstrap_servers=system.settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        chunks: list[bytes] = []
        pending = {tp for tp in parts if ends[tp] > 0}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=2000)
            for records in batches.values():
                for r in records:
                    chunks += [r.key or b"", r.value or b""]
                    chunks += [k.encode() + v for k, v in r.headers or ()]
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return b"\n".join(chunks)
    finally:
        await consumer.stop()


def _cassandra(system: System) -> tuple[bytes, list[str]]:
    from projections.adapters.cql import connect_to

    cluster, session = connect_to(system.settings)
    try:
        ks = system.settings.cassandra_keyspace
        tables = [
            row.table_name
            for row in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (ks,)
            )
        ]
        chunks: list[bytes] = []
        for table in tables:
            statement = session.prepare(f"SELECT * FROM {ks}.{table}")
            statement.fetch_size = 5000
            for row in session.execute(statement, timeout=120):
                chunks += [_text(v) for v in row]
        return b"\n".join(chunks), tables
    finally:
        cluster.shutdown()


async def _redis(system: System) -> bytes:
    from projections.adapters.redis_client import redis_from

    s = system.settings
    redis: Any = redis_from(s.redis_cluster, s.redis_host, s.redis_port, s.redis_db)
    chunks: list[bytes] = []
    try:
        async for key in redis.scan_iter(count=1000):
            kind = await redis.type(key)
            kind = kind.encode() if isinstance(kind, str) else bytes(kind)
            chunks.append(_text(key))
            if kind == b"string":
                chunks.append(_text(await redis.get(key)))
            elif kind == b"list":
                chunks += [_text(v) for v in await redis.lrange(key, 0, -1)]
            elif kind == b"hash":
                chunks += [_text(k) + _text(v) for k, v in (await redis.hgetall(key)).items()]
            elif kind == b"set":
                chunks += [_text(v) for v in await redis.smembers(key)]
            elif kind == b"zset":
                scored: Any = await redis.zrange(key, 0, -1, withscores=True)
                chunks += [_text(v) for v, _ in scored]
            elif kind == b"stream":
                entries: Any = await redis.xrange(key)
                for entry_id, fields in entries:
                    chunks.append(_text(entry_id))
                    chunks += [_text(k) + _text(v) for k, v in (fields or {}).items()]
            elif kind != b"none":  # a key that expired meanwhile
                raise AssertionError(f"a Redis {kind!r} this test cannot read: {key!r}")
    finally:
        await redis.aclose()
    return b"\n".join(chunks)


def _files(root: Path, suffix: str = "") -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(root.rglob(f"*{suffix}")) if p.is_file())


def _search(root: Path, markers: Iterable[str]) -> tuple[bytes, set[str]]:
    """Every stored document of every shard, and which markers are terms of the index."""
    from projections.adapters.search import SCHEMA, open_index

    chunks: list[bytes] = []
    terms: set[str] = set()
    shards = [p for p in root.rglob("meta.json")]
    assert shards, f"no search shard under {root}"
    for meta in shards:
        index = open_index(meta.parent)
        index.reload()
        searcher = index.searcher()
        if searcher.num_docs:
            for _, address in searcher.search(tantivy.Query.all_query(), searcher.num_docs).hits:
                chunks.append(repr(searcher.doc(address).to_dict()).encode())
        for m in markers:
            query = tantivy.Query.term_query(SCHEMA, "body", m.lower())
            if searcher.search(query, 1).hits:
                terms.add(m)
    return b"\n".join(chunks), terms


def _archive(root: Path) -> bytes:
    files = sorted(root.rglob("*.parquet"))
    assert files, f"no Parquet file under {root}"
    return b"\n".join(repr(pq.read_table(p).to_pylist()).encode() for p in files)


async def test_encrypted_plaintext_is_nowhere_and_the_control_is_everywhere(system: System) -> None:
    alice, bob, carol = user(), user(), user()
    tag = uuid.uuid4().hex[:10]
    secret = [f"zqsecret{tag}n{i}" for i in range(N)]
    control = [f"zqcontrol{tag}n{i}" for i in range(N)]
    status, created = system.request(
        "POST",
        "/v1/conversations",
        user=alice,
        body={"kind": "group", "title": "t", "members": [bob], "encrypted": True},
    )
    assert status == 201, created
    group = created["conversation"]["conversation_id"]
    direct = direct_conversation_id(alice, carol)
    body = {"kind": "direct", "members": [carol], "encrypted": True}
    assert system.request("POST", "/v1/conversations", user=alice, body=body)[0] == 200
    plain = direct_conversation_id(bob, carol)
    megolm = Megolm("phone")
    reader = megolm.reader()
    token = system.token(alice, "phone")
    sent: dict[str, list[str]] = {group: [], direct: [], plain: []}
    for i, marker in enumerate(secret):
        cid = group if i % 2 else direct
        status, ok = system.request(
            "POST",
            f"/v1/conversations/{cid}/messages",
            token=token,
            body=megolm.send_body(marker, uuid.uuid4().hex),
        )
        assert status == 202, ok
        sent[cid].append(ok["message_id"])
    for marker in control:
        status, ok = system.request(
            "POST",
            f"/v1/conversations/{plain}/messages",
            user=bob,
            body={"client_msg_id": uuid.uuid4().hex, "body": marker},
        )
        assert status == 202, ok
        sent[plain].append(ok["message_id"])
    # The recipient reads them (so these are real ciphertexts of the markers).
    status, page = system.request("GET", f"/v1/conversations/{group}/messages", user=bob)
    assert [decrypt(reader, m["ciphertext"]) for m in page["messages"]] == secret[1::2]

    from projections.adapters.cql import Cql, connect_to
    from projections.messages import CassandraMessages

    cluster, session = await asyncio.to_thread(connect_to, system.settings)
    try:
        warm = CassandraMessages(
            Cql(session, system.settings.cassandra_keyspace), system.settings.message_bucket_ms
        )
        for cid, ids in sent.items():

            async def persisted(cid: str = cid, ids: list[str] = ids) -> bool:
                page = await warm.page(cid, before=None, after=None, limit=len(ids) + 1)
                return [m["message_id"] for m in page] == ids

            await _until(persisted, 60, f"the persist worker to write {cid}", every=0.3)
    finally:
        await asyncio.to_thread(cluster.shutdown)
    search_root = Path(system.env["TIDINGS_SEARCH_DIR"])

    async def indexed() -> bool:
        status, found = system.request("GET", f"/v1/search?q={control[-1]}", user=bob)
        return status == 200 and len(found["results"]) == 1

    await _until(indexed, 60, "the control to be searchable", every=0.3)
    assert "archived" in await run_cli(system, "archive", "run", "--older-than", "0s")

    everything = set(secret) | set(control)
    kafka_text = await _kafka(system)
    kafka = _found(kafka_text, everything)
    cassandra_text, tables = await asyncio.to_thread(_cassandra, system)
    assert {"messages", "conversation_log", "conversation_encryption"} <= set(tables)
    cassandra = _found(cassandra_text, everything)
    redis = _found(await _redis(system), everything)
    stored, terms = await asyncio.to_thread(_search, search_root, everything)
    search = _found(stored, everything) | terms
    search_bytes = _found(await asyncio.to_thread(_files, search_root), everything)
    archive_root = Path(system.env["TIDINGS_ARCHIVE_DIR"])
    archive = _found(await asyncio.to_thread(_archive, archive_root), everything)
    archive_bytes = _found(await asyncio.to_thread(_files, archive_root), everything)

    print(
        f"searched {len(kafka_text)} bytes of Kafka records, {len(cassandra_text)} of Cassandra rows in"
        f" {len(tables)} tables, the Redis database, {len(stored)} bytes of search documents and the archive"
    )
    places = {
        "kafka": kafka,
        "cassandra": cassandra,
        "redis": redis,
        "search": search,
        "search files": search_bytes,
        "archive": archive,
        "archive files": archive_bytes,
    }
    for place, found in places.items():
        assert not found & set(secret), f"plaintext of an encrypted message in {place}: {found & set(secret)}"
    # The control: plaintext is where a plaintext conversation's text is kept (the search index
    # and the archive compress their files, so their rows and documents are what count).
    for place in ("kafka", "cassandra", "redis", "search", "archive"):
        assert places[place] == set(control), (place, places[place])
    # The ciphertext itself is kept (the archive keeps the ciphertext), unchanged.
    ciphertexts = [m["ciphertext"] for m in page["messages"]]
    archived = await asyncio.to_thread(_archive, archive_root)
    assert all(c.encode() in archived for c in ciphertexts)
