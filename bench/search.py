"""Search: index throughput, query latency, index size and rebuild time, in one process on the
real engine (tantivy on local disk), with the search worker's own code (``SearchIndexer``) and
the gateway's (``ShardReaders`` and the query parser).

    .venv/bin/python bench/search.py --messages 1000000
    .venv/bin/python bench/search.py --messages 10000000 --dir /tmp/s   # keeps the shards
    .venv/bin/python bench/search.py --messages 10000000 --dir /tmp/s --query-only

Messages are spread over ``--conversations`` conversations and ``--partitions`` shards as the
log spreads them; bodies are 6..16 words drawn (Zipf-like) from a 30,000-word vocabulary with
accents. Queries are made for a user in 100 conversations, in equal shares: a rare word, two
words, a phrase, and prefixes of 2, 3 and 5 letters (each one term of the n-gram field, which
holds every word's prefixes of 2..8 letters); newest 20 first with highlights, as
``GET /v1/search`` asks.
The indexing figure is the search worker's part (events into the shards), with the worker's
own commit policy (``Settings.search_commit_interval_s`` and ``search_commit_age_s`` while it
keeps up, up to ``search_commit_most_s`` while behind; ``--commit-interval``, ``--commit-age``
and ``--commit-most`` change them).
Each message carries its send time, as on the log: by default all of them were sent when the
run starts (a backlog, as after an outage, the way to measure throughput); with ``--rate`` they
are sent, and handed to the indexer, at that many per second (live traffic: the CPU share of a
core the worker needs at that rate). CPU µs per event (every thread of the process) is the
figure to compare across runs on a shared machine; a rebuild from the archive adds the
archive's reading.
Query figures are per kind, in wall time and in CPU time of the querying thread (tantivy
searches in the caller's thread): on a busy machine the first is mostly the wait for a core.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from events import ChatEvent, MessageSent
from projections.adapters.search import SearchIndexer, Shard, ShardReaders, analyze, shard_path
from projections.adapters.search_schema import edge_ngrams, ngram_text
from projections.search_query import parse
from tidings.settings import Settings

TOPIC = "bench.conversation-events"
SYLLABLES = ["ka", "ré", "mo", "li", "sa", "tü", "ne", "po", "ri", "da", "fé", "zo", "mi", "ta", "lo", "be"]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def messages(
    n: int,
    conversations: int,
    words: list[str],
    rng: random.Random,
    sent_ms: Callable[[int], int] = lambda i: i,
) -> Iterator[MessageSent]:
    """``n`` messages; message ``i`` was sent at ``sent_ms(i)`` (Unix ms)."""
    # Zipf-like: word i drawn with weight 1/(i+1).
    weights = [1 / (i + 1) for i in range(len(words))]
    cum: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        cum.append(total)
    base = 1 << 40
    for i in range(n):
        length = rng.randint(6, 16)
        body = " ".join(rng.choices(words, cum_weights=cum, k=length))
        yield MessageSent(
            conversation_id=f"g:{rng.randrange(conversations)}",
            message_id=base + i,
            sender_id="u1",
            sender_device="d",
            client_msg_id=str(i),
            kind="text",
            body=body,
            ts=sent_ms(i),
        )


def partition_of(cid: str, partitions: int) -> int:
    return zlib.crc32(cid.encode()) % partitions


async def index_all(
    root: Path, args: argparse.Namespace, words: list[str], gen_cpu: float = 0.0
) -> tuple[float, int]:
    """Index the messages; ``gen_cpu``: the generator's own CPU per message, taken out of the
    indexer's figure."""
    indexer = SearchIndexer(
        root,
        TOPIC,
        commit_interval_s=args.commit_interval,
        commit_most_s=args.commit_most,
        commit_age_s=args.commit_age or None,
    )
    offsets = [0] * args.partitions
    batch: list[tuple[int, int, ChatEvent]] = []
    busy = 0.0
    count = 0
    cpu = time.process_time()
    start, start_ms = time.perf_counter(), time.time_ns() // 1_000_000
    # A backlog: every message sent at the start. Live: message i at start + i / rate.
    rate = args.rate
    sent = (lambda i: start_ms + round(i * 1000 / rate)) if rate else (lambda i: start_ms)
    batch_due = start
    for i, event in enumerate(messages(args.messages, args.conversations, words, random.Random(7), sent)):
        if rate:
            # Handed over in batches as the worker's fetches gather them: the batch window or
            # the batch size, whichever comes first.
            due = start + i / rate
            if batch and (len(batch) == args.batch or due - batch_due >= WINDOW_S):
                started = time.perf_counter()
                await indexer.apply_at(batch)
                busy += time.perf_counter() - started
                count += len(batch)
                batch = []
            if not batch:
                batch_due = due
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        p = partition_of(event.conversation_id, args.partitions)
        batch.append((p, offsets[p], event))
        offsets[p] += 1
        if len(batch) == args.batch and not args.rate:
            started = time.perf_counter()
            await indexer.apply_at(batch)
            busy += time.perf_counter() - started
            count += len(batch)
            batch = []
    started = time.perf_counter()
    if batch:
        await indexer.apply_at(batch)
        count += len(batch)
    if args.rate:
        # The share of a core the indexer needed at that rate, before the final commits.
        took = time.perf_counter() - start
        used = time.process_time() - cpu - gen_cpu * count
        share = used / took * 100
        print(
            f"at {args.rate:,.0f} events/s for {took:.1f} s: the indexer used {share:.1f} % of a core, "
            f"{indexer.commits / took:.1f} shard commits/s, {used / max(indexer.commits, 1) * 1e3:.1f} ms "
            f"of CPU per commit (all of the indexer's CPU over its commits)"
        )
    commits = indexer.commits
    indexer.close()  # waits for the merges
    busy += time.perf_counter() - started
    # Every thread of the process: the generator, the Python side of indexing, tantivy's
    # indexing and merge threads. Load-proof where the wall figures are not.
    cpu = time.process_time() - cpu
    per_event = cpu / max(count, 1)
    print(
        f"CPU of the process while indexing: {cpu:.1f} s, {per_event * 1e6:.1f} µs per event; "
        f"the indexer's (less the generator's): {(per_event - gen_cpu) * 1e6:.1f} µs per event; "
        f"{commits:,} shard commits before the last"
    )
    return busy, count


def commit_cost(root: Path, commits: int, per_commit: int, words: list[str]) -> None:
    """What one shard commit costs: ``commits`` commits of ``per_commit`` messages each into one
    shard, 10 ms apart (the merges run meanwhile, as live), CPU of every thread of the process
    (tantivy's indexing, merge and segment-updater threads included) less the adding."""
    shard = Shard(shard_path(root, TOPIC, 0))
    rng = random.Random(11)
    gen = messages(commits * per_commit, 100, words, rng, lambda i: time.time_ns() // 1_000_000)
    offset = 0
    added = 0.0
    cpu = time.process_time()
    for _ in range(commits):
        batch = []
        for _ in range(per_commit):
            batch.append((offset, next(gen)))
            offset += 1
        started = time.process_time()
        shard.add(batch)
        added += time.process_time() - started
        shard.commit()
        time.sleep(0.01)
    shard.close()  # waits for the merges
    cpu = time.process_time() - cpu
    print(
        f"{commits} commits of {per_commit} messages: {(cpu - added) / commits * 1e3:.2f} ms of CPU per "
        f"commit (adding: {added / commits * 1e3:.2f} ms per batch, the generator included)"
    )


def size_of(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def query_latency(root: Path, args: argparse.Namespace, words: list[str]) -> dict[str, dict[str, float]]:
    rng = random.Random(11)
    readers = ShardReaders(root, TOPIC)
    mine = {f"g:{c}" for c in rng.sample(range(args.conversations), min(100, args.conversations))}
    common, rare = words[:300], words[300:5000]
    longer = [w for w in common if len(w) >= 6]
    queries = []
    for i in range(args.queries):
        kind = KINDS[i % len(KINDS)]
        if kind == "rare word":
            queries.append(rng.choice(rare))
        elif kind == "two words":
            queries.append(f"{rng.choice(common)} {rng.choice(rare)}")
        elif kind == "phrase":
            queries.append(f'"{rng.choice(common)} {rng.choice(common)}"')
        elif kind == "3-letter prefix":
            queries.append(rng.choice(common)[:3] + "*")
        elif kind == "5-letter prefix":
            queries.append(rng.choice(longer)[:5] + "*")
        else:
            queries.append(rng.choice(common)[:2] + "*")
    for q in queries[:20]:  # warm the page cache and the readers
        readers.search(parse(q, analyze), mine, before=None, limit=21)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
    hits = 0
    for i, q in enumerate(queries):
        started, started_cpu = time.perf_counter(), time.thread_time()
        found = readers.search(parse(q, analyze), mine, before=None, limit=21)
        # The engine searches in the calling thread: its CPU time is the query's cost without
        # the waits for a core that a saturated machine adds to the wall time.
        cpu[KINDS[i % len(KINDS)]].append((time.thread_time() - started_cpu) * 1000)
        times[KINDS[i % len(KINDS)]].append((time.perf_counter() - started) * 1000)
        hits += len(found)
    stats = {kind: percentiles(ms) for kind, ms in times.items()}
    stats.update({f"{kind} cpu": percentiles(ms) for kind, ms in cpu.items()})
    stats["all"] = percentiles([t for ms in times.values() for t in ms])
    stats["all cpu"] = percentiles([t for ms in cpu.values() for t in ms])
    stats["all"]["mean_hits"] = hits / len(queries)
    return stats


# The search role's batch window.
WINDOW_S = Settings().worker_search_batch_window_s

KINDS = ("rare word", "two words", "phrase", "3-letter prefix", "5-letter prefix", "2-letter prefix")


def percentiles(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": times[max(0, int(len(times) * 0.99) - 1)],
        "max_ms": times[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--batch", type=int, default=500)
    live = Settings()
    parser.add_argument(
        "--commit-interval",
        type=float,
        default=live.search_commit_interval_s,
        help="seconds between a shard's commits while it keeps up (0: every batch); default: the worker's",
    )
    parser.add_argument(
        "--commit-most",
        type=float,
        default=live.search_commit_most_s,
        help="the longest wait between a shard's commits while behind; default: the worker's",
    )
    parser.add_argument(
        "--commit-age",
        type=float,
        default=live.search_commit_age_s,
        help="a busy shard commits once its oldest pending message is this old (0: at the interval); "
        "default: the worker's",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="messages per second, sent and indexed live (default 0: a backlog, all sent at the start)",
    )
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument(
        "--commit-cost",
        type=int,
        default=0,
        metavar="N",
        help="only measure what a shard commit costs: N commits of --batch messages into one shard",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the shards go, kept afterwards (default: a temp dir, deleted)",
    )
    parser.add_argument(
        "--query-only",
        action="store_true",
        help="measure the queries over the shards already in --dir (made by a run with the same "
        "--messages, --conversations and --partitions)",
    )
    parser.add_argument(
        "--no-generator-pass",
        action="store_true",
        help="skip timing the message generator alone (minutes at 10 M on a busy machine): the "
        "wall figure then includes it; the awaited-calls and CPU figures are unaffected",
    )
    args = parser.parse_args()
    if args.query_only and args.dir is None:
        parser.error("--query-only needs --dir")
    root = args.dir or Path(tempfile.mkdtemp(prefix="tidings-search-bench-"))
    words = vocabulary(30_000, random.Random(3))
    try:
        if args.commit_cost:
            commit_cost(root, args.commit_cost, args.batch, words)
            return
        if args.query_only:
            print(f"size: {size_of(root) / 2**20:,.1f} MiB over {args.messages:,} messages")
            report_queries(root, args, words)
            return
        # The generator's own time, measured alone, is taken out of the indexing wall time (the
        # periodic commits run in threads, also while the next messages are generated).
        gen, gen_cpu = time.perf_counter(), time.process_time()
        if not args.no_generator_pass:
            for _ in messages(args.messages, args.conversations, words, random.Random(7)):
                pass
        gen, gen_cpu = time.perf_counter() - gen, time.process_time() - gen_cpu
        if not args.no_generator_pass:
            print(f"the message generator alone: {gen_cpu / args.messages * 1e6:.1f} µs of CPU per message")
        report_ngrams(args, words)
        wall = time.perf_counter()
        busy, count = asyncio.run(index_all(root, args, words, gen_cpu / args.messages))
        wall = time.perf_counter() - wall
        size = size_of(root)
        print(f"messages {count:,} in {args.partitions} shards, {args.conversations:,} conversations")
        print(
            f"index: {count / (wall - gen):,.0f} events/s ({wall - gen:.1f}s: {wall:.1f}s wall less "
            f"{gen:.1f}s generating; {count / busy:,.0f}/s counting only the awaited apply calls)"
        )
        per_million = size / count * 1_000_000 / 2**20
        print(f"size: {size / 2**20:,.1f} MiB, {per_million:,.0f} MiB per million messages")
        if args.queries:  # --queries 0: indexing only
            report_queries(root, args, words)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


def report_ngrams(args: argparse.Namespace, words: list[str]) -> None:
    """What the n-gram field's terms cost in Python (the analyzer run once more per message,
    then each word's prefixes), on the first 100,000 messages: part of the indexing time."""
    bodies = [
        e.body for e in messages(min(args.messages, 100_000), args.conversations, words, random.Random(7))
    ]
    grams = sum(len(edge_ngrams(analyze(body))) for body in bodies)
    started = time.thread_time()
    for body in bodies:  # what the indexer does
        ngram_text(analyze(body))
    took = time.thread_time() - started
    print(
        f"n-grams: {took / len(bodies) * 1e6:.1f} µs of CPU per message in Python, "
        f"{grams / len(bodies):.1f} n-grams per message"
    )


def report_queries(root: Path, args: argparse.Namespace, words: list[str]) -> None:
    lat = query_latency(root, args, words)
    print(
        f"query (a user in 100 conversations, {args.queries} queries): p50 {lat['all']['p50_ms']:.1f} ms, "
        f"p99 {lat['all']['p99_ms']:.1f} ms, max {lat['all']['max_ms']:.1f} ms, "
        f"{lat['all']['mean_hits']:.1f} hits per page"
    )
    for kind in KINDS:
        k = lat[kind]
        print(f"  {kind:>15}: p50 {k['p50_ms']:.1f} ms, p99 {k['p99_ms']:.1f} ms, max {k['max_ms']:.1f} ms")
    print("CPU time of the querying thread (the wall time less waiting for a core):")
    for kind in (*KINDS, "all"):
        k = lat[f"{kind} cpu"]
        print(f"  {kind:>15}: p50 {k['p50_ms']:.1f} ms, p99 {k['p99_ms']:.1f} ms, max {k['max_ms']:.1f} ms")


if __name__ == "__main__":
    main()
