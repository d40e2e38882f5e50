"""Composition roots of the operator's archive steps that rebuild: read models into a fresh
keyspace (replay), compared with the live one (verify), and switched to (switch). Pruning and
trimming are ``tidings.archive_prune``.

Replay builds its stages with ``tidings.worker.persist_stages``, the list the persist worker
runs, so a read model added there is rebuilt too. It reads the archive (every archived event,
partition by partition in offset order), then the Kafka log from the archive's watermark up to
the end offsets captured at start, with no consumer group and no pub/sub: nothing is pushed to
clients. Events whose warm ``messages`` and sync log rows were pruned are applied to every read
model but those, so the rebuilt warm tier equals the live one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cassandra.cluster import Session

from archive.adapters.kafka_source import KafkaLogSource
from archive.manifest import load, write_atomic
from archive.reader import ArchiveReader
from archive.replay_source import count
from events import Topics
from projections.adapters.cql import Cql, connect_to
from projections.adapters.migrate import migrate_cassandra
from projections.adapters.presence import CassandraPresence
from projections.keys import CassandraKeys
from projections.media import NAME as MEDIA
from projections.membership import CassandraMembership
from projections.push import CassandraPushSettings
from projections.roster import Roster
from streams.projector import PositionedStage, Projector, Stage
from tidings.keyspaces import write_pointer
from tidings.replay_partitions import (
    CountedDeadLetters,
    PartitionJob,
    PartitionResult,
    init_child,
    replay_log,
    replay_partitions,
    run_child,
)
from tidings.settings import Settings
from tidings.worker import persist_stages

log = logging.getLogger(__name__)


# -- replay ------------------------------------------------------------------------------


@dataclass
class ReplayState:
    """What a replay built, kept beside the keyspace pointer for verify and switch."""

    keyspace: str
    base: str
    projections: list[str]
    ends: dict[int, int]  # the log position it is complete up to (next offsets)
    complete: bool = True  # every read model of the persist worker, not a chosen one
    archived: int = 0
    from_log: int = 0
    seconds: float = 0.0
    finished_at: str = ""
    statements: int = 0  # the writes it made, and the requests (batches) that carried them
    requests: int = 0
    shadowed: int = 0  # writes left out: another write of their batch shadowed them


def _state_path(settings: Settings, keyspace: str) -> Path:
    return settings.state_dir / "keyspaces" / f"{keyspace}.replay.json"


def load_state(settings: Settings, keyspace: str) -> ReplayState:
    data = orjson.loads(_state_path(settings, keyspace).read_bytes())
    data["ends"] = {int(p): o for p, o in data["ends"].items()}
    return ReplayState(**data)


def latest_rebuilt(settings: Settings) -> str | None:
    folder = settings.state_dir / "keyspaces"
    pattern = re.compile(rf"^{re.escape(settings.cassandra_keyspace)}_r(\d+)\.replay\.json$")
    found = [
        (int(m.group(1)), m.group(0)) for p in folder.glob("*.replay.json") if (m := pattern.match(p.name))
    ]
    return f"{settings.cassandra_keyspace}_r{max(found)[0]}" if found else None


def _next_keyspace(session: Session, base: str) -> str:
    rows = session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
    pattern = re.compile(rf"^{re.escape(base)}_r(\d+)$")
    taken = [int(m.group(1)) for r in rows if (m := pattern.match(r.keyspace_name))]
    return f"{base}_r{max(taken, default=0) + 1}"


@dataclass
class Progress:
    total: int = 0
    done: int = 0
    callback: Callable[[int, int], None] | None = None

    def add(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


async def replay(
    settings: Settings,
    *,
    projections: Sequence[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    batch: int = 20_000,
    concurrency: int = 4,
    processes: int = 1,
) -> ReplayState:
    """Rebuild the persist worker's read models (or only ``projections``) into a fresh
    keyspace ``<base>_r<N>``; returns what was built. The partitions are shared out among
    ``processes`` processes (one is this one), ``concurrency`` partitions at a time in each,
    ``batch`` archived events per write round."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    cluster, session = await loop.run_in_executor(None, connect_to, settings)
    try:
        target = _next_keyspace(session, settings.cassandra_keyspace)
        await loop.run_in_executor(
            None,
            lambda: migrate_cassandra(
                session, target, replication=settings.cassandra_replication_map(), echo=log.info
            ),
        )
        cql = Cql(session, target)
        stages, own = await _chosen_stages(settings, cql, projections)
        state = ReplayState(
            keyspace=target,
            base=settings.cassandra_keyspace,
            projections=[s.name for s in stages],
            ends={},
            complete=not projections,
        )
        progress = Progress(callback=on_progress)
        ends = await _replay_conversations(settings, state, progress, batch, concurrency, processes)
        state.from_log += await _replay_own_topics(settings, own, stages, progress, projections)
        state.statements += cql.statements_sent
        state.requests += cql.requests_sent
        state.shadowed += cql.statements_shadowed
        state.ends = ends
        state.seconds = time.monotonic() - started
        state.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        _save_state(settings, state)
        return state
    finally:
        cluster.shutdown()


@dataclass(frozen=True)
class _OwnTopics:
    """The read models fed by topics of their own, never archived (replayed whole, from the
    start): presence, push registrations and mutes, the E2EE key directory."""

    presence: CassandraPresence
    push: CassandraPushSettings
    keys: CassandraKeys

    @classmethod
    def prepared(cls, cql: Cql) -> _OwnTopics:
        """Blocking: each prepares its statements."""
        own = cls(CassandraPresence(cql), CassandraPushSettings(cql), CassandraKeys(cql))
        own.presence.prepare()
        own.push.prepare()
        own.keys.prepare()
        return own

    @property
    def names(self) -> list[str]:
        return [self.presence.name, self.push.name, self.keys.name]


async def _chosen_stages(
    settings: Settings, cql: Cql, projections: Sequence[str] | None
) -> tuple[list[Stage | PositionedStage], _OwnTopics]:
    """The persist worker's stages over ``cql`` (only those in ``projections``, when given),
    and the read models of the other topics."""
    loop = asyncio.get_running_loop()
    roster = Roster(CassandraMembership(cql).load_roster, threshold=settings.fanout_threshold)
    stages = await loop.run_in_executor(None, persist_stages, cql, settings, roster)
    own = await loop.run_in_executor(None, _OwnTopics.prepared, cql)
    names = [s.name for s in stages] + own.names
    if projections:
        unknown = set(projections) - set(names)
        if unknown:
            raise SystemExit(f"unknown projection(s) {sorted(unknown)}; known: {names}")
        stages = [s for s in stages if s.name in projections]
    return stages, own


async def _replay_conversations(
    settings: Settings, state: ReplayState, progress: Progress, batch: int, concurrency: int, processes: int
) -> dict[int, int]:
    """The conversation events into ``state``'s stages: the archive, then the log from the
    archive's watermark up to the end offsets now (returned), partitions dealt out among
    ``processes``. Counts what it applied and wrote into ``state``."""
    root = settings.archive_root
    manifest = load(root)
    reader = ArchiveReader(root)
    topic = Topics(settings.topic_prefix).conversation_events
    async with KafkaLogSource(settings.kafka_bootstrap, topic, settings.topic_partitions) as source:
        ends = await source.end_offsets()
    starts = {p: manifest.watermark(p) if manifest else 0 for p in ends}
    progress.total = (count(reader, manifest) if manifest else 0) + sum(
        max(0, ends[p] - starts[p]) for p in ends
    )
    todo = sorted(ends)
    processes = max(1, min(processes, len(todo)))
    jobs = [  # partitions dealt round-robin
        PartitionJob(
            settings, state.keyspace, state.projections, todo[i::processes], starts, ends, batch, concurrency
        )
        for i in range(processes)
    ]
    if processes == 1:
        results = [await replay_partitions(jobs[0], progress.add)]
    else:
        results = await _in_processes(jobs, progress)
    for r in results:
        state.archived += r.archived
        state.from_log += r.from_log
        state.statements += r.statements
        state.requests += r.requests
        state.shadowed += r.shadowed
    return ends


async def _replay_own_topics(
    settings: Settings,
    own: _OwnTopics,
    stages: Sequence[Stage | PositionedStage],
    progress: Progress,
    projections: Sequence[str] | None = None,
) -> int:
    """Every event of the topics that are never archived, into their read models (those in
    ``projections``, when given; media when its stage is among ``stages``)."""
    wanted = set(projections or own.names)
    applied = 0
    if own.presence.name in wanted:
        applied += await _replay_presence(settings, own.presence, progress)
    applied += await _replay_media(settings, stages, progress)
    if own.push.name in wanted:
        applied += await _replay_user_events(settings, own.push, progress)
    if own.keys.name in wanted:
        applied += await _replay_keys(settings, own.keys, progress)
    return applied


def _save_state(settings: Settings, state: ReplayState) -> None:
    path = _state_path(settings, state.keyspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, orjson.dumps(state.__dict__, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2))


async def _in_processes(jobs: list[PartitionJob], progress: Progress) -> list[PartitionResult]:
    """Run each job in a spawned process (a fresh interpreter: no forked driver threads or
    event loop), relaying their progress; an error in one is raised here."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[int | None] = context.Queue()
    loop = asyncio.get_running_loop()

    def relay() -> None:
        while (n := queue.get()) is not None:
            loop.call_soon_threadsafe(progress.add, n)

    relaying = loop.run_in_executor(None, relay)
    try:
        with ProcessPoolExecutor(
            len(jobs), mp_context=context, initializer=init_child, initargs=(queue,)
        ) as pool:
            return list(await asyncio.gather(*(loop.run_in_executor(pool, run_child, job) for job in jobs)))
    finally:
        queue.put(None)
        await relaying


async def _replay_presence(settings: Settings, presence: CassandraPresence, progress: Progress) -> int:
    """Presence has a topic of its own, never archived: all of it, from the start (its events
    are transitions only, and the newest wins, so replaying it again changes nothing)."""
    return await _replay_topic(settings, Topics(settings.topic_prefix).presence_events, presence, progress)


async def _replay_media(
    settings: Settings, stages: Sequence[Stage | PositionedStage], progress: Progress
) -> int:
    """Media events have a topic of their own, never archived (one event per upload): all of
    it, from the start, into the media read model (its upserts are idempotent)."""
    media = [s for s in stages if s.name == MEDIA]
    if not media:
        return 0
    return await _replay_topic(settings, Topics(settings.topic_prefix).media_events, media[0], progress)


async def _replay_user_events(settings: Settings, push: CassandraPushSettings, progress: Progress) -> int:
    """Push registrations and mutes, from the user-events topic (never archived), all of it:
    each write carries its event's time, so applying it again changes nothing."""
    return await _replay_topic(settings, Topics(settings.topic_prefix).user_events, push, progress)


async def _replay_keys(settings: Settings, keys: CassandraKeys, progress: Progress) -> int:
    """The E2EE key directory has a topic of its own, never archived: all of it, from the start
    (every write carries its event's time, so applying it again changes nothing)."""
    return await _replay_topic(settings, Topics(settings.topic_prefix).key_events, keys, progress)


async def _replay_topic(
    settings: Settings, topic: str, stage: Stage | PositionedStage, progress: Progress
) -> int:
    projector = Projector([stage], CountedDeadLetters())
    applied = 0
    async with KafkaLogSource(settings.kafka_bootstrap, topic, settings.topic_partitions) as source:
        ends = await source.end_offsets()
        for p in sorted(ends):
            applied += await replay_log(source, p, 0, ends[p], projector, progress.add)
    return applied


# -- verify ------------------------------------------------------------------------------


@dataclass
class TableDiff:
    table: str
    live_rows: int
    rebuilt_rows: int
    only_live: list[tuple[Any, ...]]
    only_rebuilt: list[tuple[Any, ...]]

    @property
    def equal(self) -> bool:
        return not self.only_live and not self.only_rebuilt


def verify(settings: Settings, live: str, rebuilt: str, *, only_filled: bool = False) -> list[TableDiff]:
    """Compare every table of ``rebuilt`` with the same table of ``live``, row by row
    (``only_filled``: only the tables the rebuild wrote rows to, for a partial replay)."""
    cluster, session = connect_to(settings)
    try:
        tables = sorted(
            r.table_name
            for r in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (rebuilt,)
            )
            if r.table_name != "schema_migrations"
        )
        diffs = []
        for table in tables:
            live_rows = _rows(session, live, table)
            rebuilt_rows = _rows(session, rebuilt, table)
            if only_filled and not rebuilt_rows:
                continue
            diffs.append(
                TableDiff(
                    table,
                    len(live_rows),
                    len(rebuilt_rows),
                    sorted(live_rows - rebuilt_rows, key=repr),
                    sorted(rebuilt_rows - live_rows, key=repr),
                )
            )
        return diffs
    finally:
        cluster.shutdown()


def _rows(session: Session, keyspace: str, table: str) -> set[tuple[Any, ...]]:
    columns = sorted(
        r.column_name
        for r in session.execute(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s AND table_name = %s",
            (keyspace, table),
        )
    )
    if not columns:
        return set()
    cols = ", ".join(f'"{c}"' for c in columns)
    return {tuple(r) for r in session.execute(f"SELECT {cols} FROM {keyspace}.{table}", timeout=120)}


# -- switch ------------------------------------------------------------------------------


async def switch(settings: Settings, rebuilt: str) -> tuple[int, Path]:
    """Catch ``rebuilt`` up from where its replay ended to the log end now, then point the
    runnables at it. Returns ``(events applied in the catch-up, pointer file)``. Stop the
    persist workers first (docs/operations.md): what they apply meanwhile goes to the old
    keyspace only."""
    state = load_state(settings, rebuilt)
    cluster, session = connect_to(settings)
    try:
        cql = Cql(session, rebuilt)
        roster = Roster(CassandraMembership(cql).load_roster, threshold=settings.fanout_threshold)
        stages = persist_stages(cql, settings, roster)
        if not state.complete:
            raise SystemExit(f"{rebuilt} rebuilt only {state.projections}: replay every projection to switch")
        projector = Projector(stages, CountedDeadLetters())
        topic = Topics(settings.topic_prefix).conversation_events
        applied = 0
        async with KafkaLogSource(settings.kafka_bootstrap, topic, settings.topic_partitions) as source:
            ends = await source.end_offsets()
            for p in sorted(ends):
                applied += await replay_log(
                    source, p, state.ends.get(p, 0), ends[p], projector, Progress().add
                )
        applied += await _replay_own_topics(settings, _OwnTopics.prepared(cql), stages, Progress())
        state.ends = ends
        _save_state(settings, state)
        return applied, write_pointer(settings, rebuilt)
    finally:
        cluster.shutdown()
