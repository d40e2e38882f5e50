"""Replay benchmark: prints figures, asserts nothing.

A synthetic log of ``--events`` events in a Kafka topic of its own (12 partitions); the older
``--archived`` share of it is archived to Parquet (and pruned from nothing: no live keyspace);
then ``tidings replay`` rebuilds every read model of the persist worker into a fresh keyspace,
from the archive and then from the log. Events/s into Cassandra, archive part and log part
together. The topic, the keyspaces and the archive folder are deleted after.

    .venv/bin/python -m bench.replay --events 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from archive.adapters.kafka_source import KafkaLogSource
from archive.job import ArchiveJob
from bench.archive_workload import produce, synthetic_events
from events import Topics
from projections.adapters.cql import connect_to
from tidings.archive_replay import replay
from tidings.migrate import create_log_topics, new_topic
from tidings.settings import Settings

DAY_MS = 86_400_000


def _cpu_seconds(pid: int | None = None) -> float:
    """CPU-seconds (user + system) of a process and its waited-for children: this one (with
    the replay's spawned processes) by default."""
    if pid is None:
        own, children = os.times(), os.times()
        return own.user + own.system + children.children_user + children.children_system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(
    events: int, archived_share: float, processes: int = 1, server_pids: list[int] | None = None
) -> None:
    tag = uuid.uuid4().hex[:6]
    folder = Path(tempfile.mkdtemp(prefix="replaybench-"))
    settings = Settings().model_copy(
        update={
            "cassandra_keyspace": f"tidings_replaybench_{tag}",
            "topic_prefix": f"replaybench.{tag}.",
            "topic_partitions": 12,
            "archive_dir": folder / "archive",
            "state_dir": folder / "state",
        }
    )
    topic = Topics(settings.topic_prefix).conversation_events
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    # replay also rebuilds presence from its own topic (empty here)
    topics = [topic, Topics(settings.topic_prefix).presence_events]
    await create_log_topics(admin, [new_topic(settings, t, 12) for t in topics])
    cluster, session = connect_to(settings)
    try:
        now = int(time.time() * 1000)
        log = list(
            synthetic_events(events, start_ms=now - 100 * DAY_MS, span_ms=20 * DAY_MS, conversations=5000)
        )
        await produce(settings.kafka_bootstrap, topic, log)
        cutoff = getattr(log[int(len(log) * archived_share)], "ts", now) if archived_share < 1 else now
        async with KafkaLogSource(settings.kafka_bootstrap, topic, 12) as source:
            job = ArchiveJob(settings.archive_root, source, topic=topic, partitions=12, chunk_events=500_000)
            summary = await job.run(cutoff)
        print(
            f"log: {len(log):,} events, {summary.events:,} of them archived ({os.getloadavg()[0]:.2f} load)"
        )
        cpu = _cpu_seconds()
        servers = {pid: _cpu_seconds(pid) for pid in server_pids or ()}
        state = await replay(settings, processes=processes)
        cpu = _cpu_seconds() - cpu
        servers = {pid: _cpu_seconds(pid) - before for pid, before in servers.items()}
        total = state.archived + state.from_log
        print(
            f"replay into {state.keyspace}: {state.archived:,} archived + {state.from_log:,} logged events "
            f"in {state.seconds:.1f}s = {total / state.seconds:,.0f} events/s "
            f"(load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores); replay's own CPU {cpu:.1f}s = "
            f"{total / cpu:,.0f} events per CPU-second; {state.statements / max(total, 1):.2f} statements "
            f"({state.shadowed / max(total, 1):.2f} more left out, shadowed) "
            f"and {state.requests / max(total, 1):.2f} requests per event; {processes} process(es)"
        )
        for pid, seconds in servers.items():
            print(
                f"  server pid {pid}: {seconds:.1f} CPU-s during the replay"
                f" = {seconds / total * 1e6:.0f} µs per event"
            )
    finally:
        await admin.delete_topics(topics)
        await admin.close()
        for row in list(session.execute("SELECT keyspace_name FROM system_schema.keyspaces")):
            if row.keyspace_name.startswith(settings.cassandra_keyspace):
                session.execute_async(f"DROP KEYSPACE IF EXISTS {row.keyspace_name}", timeout=120)
        await asyncio.sleep(0.5)
        cluster.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--archived", type=float, default=0.5, help="share of the log archived first")
    parser.add_argument("--processes", type=int, default=1, help="replay processes (partitions shared out)")
    parser.add_argument(
        "--server-pid", type=int, action="append", help="also report this process's CPU (e.g. Cassandra)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.events, args.archived, args.processes, args.server_pid))
