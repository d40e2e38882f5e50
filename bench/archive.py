"""Archive benchmarks: prints figures, asserts nothing.

1. ``throughput``: a synthetic log of ``--events`` events (2 days, 100+ days old) in a Kafka
   topic of its own (12 partitions); the archive job reads it, writes, renames, reads back and
   verifies the Parquet files and records the manifest. Events/s from the source to verified
   Parquet (compaction reported apart). The topic is deleted after.
2. ``query``: ``--messages`` messages over ``--days`` days, written in the archive's layout
   (one compacted file per day, sorted, row groups of 16k) with a manifest, once, into
   ``--data``; then DuckDB latency, through ``ArchiveReader`` as history and
   ``tidings archive sql`` use it, for the newest 50 messages of one conversation and for
   aggregates over one full day.

    .venv/bin/python -m bench.archive throughput --events 500000
    .venv/bin/python -m bench.archive query --messages 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow.compute as pc

from archive.adapters.kafka_source import KafkaLogSource
from archive.compact import compact
from archive.files import write_file
from archive.index import update_index
from archive.job import ArchiveJob
from archive.manifest import FileEntry, Manifest, save
from archive.reader import ArchiveReader
from archive.tables import MESSAGES, SCHEMAS, SORT_KEYS, file_path
from bench.archive_workload import produce, synthetic_events
from events.ids import EPOCH_MS

DAY_MS = 86_400_000


def _cpu() -> str:
    return f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"


async def _throughput(bootstrap: str, events: int, chunk: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from tidings.migrate import create_log_topics, new_topic
    from tidings.settings import Settings

    topic = f"archbench.{uuid.uuid4().hex[:8]}.conversation-events"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await create_log_topics(admin, [new_topic(Settings(), topic, 12)])
    try:
        now = int(time.time() * 1000)
        t = time.monotonic()
        produced = await produce(
            bootstrap,
            topic,
            synthetic_events(events, start_ms=now - 102 * DAY_MS, span_ms=2 * DAY_MS, conversations=5000),
        )
        print(f"produced {produced:,} events in {time.monotonic() - t:.1f}s ({_cpu()})")
        with tempfile.TemporaryDirectory(prefix="archbench-") as folder:
            root = Path(folder)
            cpu = time.process_time()
            async with KafkaLogSource(bootstrap, topic, 12) as source:
                job = ArchiveJob(root, source, topic=topic, partitions=12, chunk_events=chunk)
                summary = await job.run(now - 90 * DAY_MS)
            cpu = time.process_time() - cpu
            print(
                f"archive: {summary.events:,} events, {summary.chunks} chunks, {summary.files} files, "
                f"{summary.bytes / 1e6:.1f} MB in {summary.seconds:.2f}s = "
                f"{summary.events_per_s:,.0f} events/s (source to verified Parquet and manifest); "
                f"the job's own CPU {cpu:.2f}s = {summary.events / cpu:,.0f} events per CPU-second"
            )
            t = time.monotonic()
            merged = compact(root)
            print(
                f"compaction: {merged.files_before} files into {merged.files_after} in "
                f"{time.monotonic() - t:.2f}s ({_cpu()})"
            )
    finally:
        await admin.delete_topics([topic])
        await admin.close()


def _generate(root: Path, messages: int, days: int, conversations: int, seed: int) -> None:
    """``messages`` rows in the archive's layout and a manifest listing them (DuckDB makes
    the rows; the archive's own writer writes the files)."""
    start = int(time.time() * 1000) - 400 * DAY_MS
    per_day = messages // days
    manifest = Manifest(topic="synthetic", partitions=12)
    con = duckdb.connect()
    con.execute(f"SELECT setseed({seed / 1000})").fetchall()
    for d in range(days):
        n = per_day if d < days - 1 else messages - per_day * (days - 1)
        # Zipf-like: a few conversations are busy, most are quiet (Pareto, shape 1.2).
        query = f"""
            WITH r AS (
                SELECT i,
                       least(CAST(floor(50 * (pow(1 - random(), -1 / 1.2) - 1)) AS BIGINT),
                             {conversations - 1}) AS c,
                       {start + d * DAY_MS} + CAST(floor(random() * {DAY_MS}) AS BIGINT) AS ts,
                       CAST(random() * 1000 AS INTEGER) AS h
                FROM range({n}) t(i)
            ), s AS (
                SELECT *, ((ts - {EPOCH_MS}) << 22) | (7 << 12) | (i & 4095) AS id FROM r
            )
            SELECT CASE WHEN c % 5 = 0 THEN 'g:' || (1000000000000 + c)
                        ELSE 'dm:u' || lpad(CAST(c AS VARCHAR), 7, '0')
                             || ':v' || lpad(CAST(c AS VARCHAR), 7, '0')
                   END AS conversation_id,
                   id AS message_id,
                   'u' || CAST(c * 2 + (i & 1) AS VARCHAR) AS sender_id,
                   'd1' AS sender_device,
                   'c' || CAST(id AS VARCHAR) AS client_msg_id,
                   'text' AS kind,
                   substr(repeat('hello ', 1 + h % 20), 1, 10 + h % 190) AS body,
                   CAST(NULL AS VARCHAR) AS media,
                   make_timestamptz(ts * 1000) AS ts,
                   CAST(1 AS SMALLINT) AS v,
                   CAST(c % 12 AS INTEGER) AS kafka_partition,
                   CAST({d * per_day} + i AS BIGINT) AS kafka_offset
            FROM s
        """
        table = con.sql(query).to_arrow_table().cast(SCHEMAS[MESSAGES]).sort_by(SORT_KEYS[MESSAGES])
        day = time.strftime("%Y-%m-%d", time.gmtime((start + d * DAY_MS) / 1000))
        rel = file_path(MESSAGES, day, f"k{d:06d}")
        write_file(table, root / rel)
        ids = table["message_id"]
        manifest.files[rel] = FileEntry(
            MESSAGES,
            day,
            n,
            (root / rel).stat().st_size,
            pc.min(ids).as_py(),
            pc.max(ids).as_py(),
            [f"c{d:06d}"],
        )
        print(f"  generated {day}: {n:,} messages", flush=True)
    save(root, manifest)
    t = time.monotonic()
    update_index(root, manifest)
    print(f"  conversation index built in {time.monotonic() - t:.1f}s")


def _timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t) * 1000)
    return out


def _report(name: str, ms: list[float]) -> None:
    ms_sorted = sorted(ms)
    p90 = ms_sorted[min(len(ms) - 1, int(len(ms) * 0.9))]
    p99 = ms_sorted[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{name}: first {ms[0]:.1f} ms, median {statistics.median(ms[1:] or ms):.1f} ms, "
        f"p90 {p90:.1f} ms, p99 {p99:.1f} ms, max {max(ms):.1f} ms over {len(ms)} runs"
    )


def _query(data: Path, messages: int, days: int, conversations: int, repeat: int) -> None:
    if not (data / "manifest.json").exists():
        print(f"generating {messages:,} messages over {days} days into {data} (once)")
        data.mkdir(parents=True, exist_ok=True)
        _generate(data, messages, days, conversations, seed=1)
    reader = ArchiveReader(data)
    manifest = reader.manifest()
    assert manifest is not None
    files = manifest.files_of(MESSAGES)
    total = sum(f.rows for _, f in files)
    size = sum(f.bytes for _, f in files)
    print(f"archive: {total:,} messages in {len(files)} files, {size / 1e6:,.0f} MB ({_cpu()})")
    busy = reader.sql(
        "SELECT conversation_id FROM messages WHERE day = (SELECT max(day) FROM messages) LIMIT 1"
    )
    rng = random.Random(2)
    cids = [busy["conversation_id"][0].as_py()] + [
        f"dm:u{i:07d}:v{i:07d}" for i in rng.sample([i for i in range(conversations) if i % 5], repeat)
    ]
    picks = iter(cids * 2)

    def newest() -> None:
        page = reader.page_sync(next(picks), before=None, after=None, limit=50)
        assert len(page) <= 50

    _report("newest 50 of one conversation (history query)", _timed(newest, repeat))
    day = files[len(files) // 2][1].day
    _report(
        f"full-day aggregate ({day}: messages, senders, conversations)",
        _timed(
            lambda: reader.sql(
                "SELECT count(*), count(DISTINCT sender_id), count(DISTINCT conversation_id) "
                f"FROM messages WHERE day = DATE '{day}'"
            ),
            max(3, repeat // 10),
        ),
    )
    _report(
        f"full-day messages per hour ({day})",
        _timed(
            lambda: reader.sql(
                f"SELECT hour(ts) AS h, count(*) FROM messages WHERE day = DATE '{day}' GROUP BY h ORDER BY h"
            ),
            max(3, repeat // 10),
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--events", type=int, default=500_000)
    t.add_argument("--chunk", type=int, default=500_000)
    t.add_argument("--bootstrap", default=os.environ.get("TIDINGS_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    q = sub.add_parser("query")
    q.add_argument("--messages", type=int, default=10_000_000)
    q.add_argument("--days", type=int, default=30)
    q.add_argument("--conversations", type=int, default=100_000)
    q.add_argument("--repeat", type=int, default=50)
    q.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "tidings-bench-archive-10m")
    args = parser.parse_args()
    if args.what == "throughput":
        asyncio.run(_throughput(args.bootstrap, args.events, args.chunk))
    else:
        _query(args.data, args.messages, args.days, args.conversations, args.repeat)


if __name__ == "__main__":
    main()
