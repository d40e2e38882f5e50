"""The persist worker's Cassandra writes alone: 1:1 ``MessageSent`` events in batches through the
persist stages, applied one read model after another (``--mode stages``, as before issue #19's
session 8) or all in one round of writes (``--mode combined``, ``streams.combined``, as the
worker now does), against the real Cassandra of the settings.

    .venv/bin/python -m tidings migrate
    .venv/bin/python -m bench.persist_path --events 4000 --batch 50 --pairs 100 --rounds 3

Alternates the two modes ``--rounds`` times and prints, per run: this process's CPU per event
(its loop and the driver's threads), the Cassandra server's CPU per event (the shared server:
other users' load counts too), the requests sent per event, and the wall time per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from bench.common import machine_line, run_loop
from bench.send_path import _cassandra_ticks
from events import ChatEvent, MessageSent, Snowflake, snowflake_ts
from projections.adapters.cql import Cql, connect_to
from projections.roster import Roster
from streams.combined import CombinedWrites
from streams.projector import Projector, Record
from tidings.settings import Settings
from tidings.worker import persist_stages


class _NoDeadLetters:
    async def send(self, record: Record, error: str) -> None:
        raise AssertionError(f"dead letter: {error}")


def direct_messages(n: int, pairs: int, body: str = "x" * 200) -> list[MessageSent]:
    """``n`` text messages over ``pairs`` direct chats of users new to this run, each chat's
    two members taking turns; the persist tests write the same kind of round."""
    run, ids = uuid.uuid4().hex[:8], Snowflake(1000 % 1024)
    out = []
    for i in range(n):
        a, b = f"pa{run}{i % pairs:03d}", f"pb{run}{i % pairs:03d}"
        mid = ids.next_id()
        out.append(
            MessageSent(
                conversation_id=f"dm:{a}:{b}",
                message_id=mid,
                sender_id=a if (i // pairs) % 2 else b,
                sender_device="d",
                client_msg_id=uuid.uuid4().hex,
                kind="text",
                body=body,
                ts=snowflake_ts(mid),
            )
        )
    return out


async def one_run(
    cql: Cql, settings: Settings, mode: str, events: int, batch: int, pairs: int
) -> dict[str, float]:
    from projections.membership import CassandraMembership

    roster = Roster(CassandraMembership(cql).load_roster, threshold=settings.fanout_threshold)
    stages = persist_stages(cql, settings, roster)
    projector = Projector(
        [CombinedWrites(cql, stages, name="persist")] if mode == "combined" else stages, _NoDeadLetters()
    )
    evs = direct_messages(events, pairs)
    records: list[tuple[Record, ChatEvent]] = [
        (Record("bench", i % settings.topic_partitions, 10_000_000 + i, None, b""), e)
        for i, e in enumerate(evs)
    ]
    requests, ticks = cql.requests_sent, _cassandra_ticks()
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(records), batch):
        await projector.handle_decoded(records[start : start + batch])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ticks = _cassandra_ticks() - ticks
    return {
        "cpu_us_per_event": cpu / events * 1e6,
        "cassandra_cpu_us_per_event": ticks / os.sysconf("SC_CLK_TCK") / events * 1e6,
        "requests_per_event": (cql.requests_sent - requests) / events,
        "ms_per_batch": wall / (events / batch) * 1000,
    }


async def main(events: int, batch: int, pairs: int, rounds: int) -> None:
    settings = Settings()
    loop = asyncio.get_running_loop()
    cluster, session = await loop.run_in_executor(None, lambda: connect_to(settings))
    cql = Cql(session, settings.cassandra_keyspace)
    try:
        await one_run(cql, settings, "combined", 200, batch, pairs)  # warm-up: prepare, connect
        for _ in range(rounds):
            for mode in ("stages", "combined"):
                f = await one_run(cql, settings, mode, events, batch, pairs)
                print(
                    f"{mode:9s} {f['cpu_us_per_event']:6.0f} µs CPU/event here, Cassandra "
                    f"{f['cassandra_cpu_us_per_event']:6.0f} µs/event, {f['requests_per_event']:.2f} "
                    f"requests/event, {f['ms_per_batch']:6.1f} ms/batch; load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    finally:
        cluster.shutdown()


def _cli() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(
        f"persist path, {args.events:,} events in batches of {args.batch} over {args.pairs} chats; "
        f"{machine_line()}"
    )
    run_loop(main(args.events, args.batch, args.pairs, args.rounds))


if __name__ == "__main__":
    _cli()
