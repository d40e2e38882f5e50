"""Composition root of ``tidings worker``: the Faust projector with its stores."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import uvloop
from prometheus_client import start_http_server

from commands.adapters.videos import VideoThumbnails
from commands.media import ObjectStore
from events import Topics
from projections.adapters.cql import Cql, connect_to
from projections.adapters.device_lists import DeviceListNotices, contacts_from
from projections.adapters.presence import CassandraPresence, PresencePushes
from projections.adapters.recent import RedisCacheAndPush
from projections.adapters.redis_client import redis_from
from projections.adapters.search import SearchIndexer
from projections.keys import CassandraKeys
from projections.media import CassandraMedia
from projections.membership import CassandraMembership
from projections.messages import CassandraMessages
from projections.push import CassandraPushSettings
from projections.receipts import CassandraReceipts
from projections.roster import Roster
from projections.sync_log import CassandraSyncLog
from streams.adapters.metrics import observe_applied, observe_unavailable
from streams.adapters.search_backfill import KafkaBackfill
from streams.app import Append, create_app
from streams.combined import CombinedWrites
from streams.media import Thumbnailer
from streams.projector import PositionedStage, Stage
from tidings import telemetry
from tidings.gc_tuning import tune_for_server
from tidings.media_store import open_store
from tidings.settings import Settings


def persist_stages(cql: Cql, settings: Settings, roster: Roster) -> list[Stage | PositionedStage]:
    """The Cassandra read models of conversation events, in the order the persist role applies
    them. ``tidings replay`` rebuilds from exactly this list, so a read model added here is
    rebuilt too. The sync log comes last: its watermark promises every other has the batch."""
    membership = CassandraMembership(cql, roster)
    receipts = CassandraReceipts(cql)
    messages = CassandraMessages(cql, settings.message_bucket_ms)
    sync_log = CassandraSyncLog(cql)
    # Media access rows come from MessageSent (the media table itself from the media topic).
    media = CassandraMedia(cql)
    for stage in (membership, receipts, messages, media, sync_log):
        stage.prepare()
    return [membership, receipts, messages, media, sync_log]


def build_worker_app(settings: Settings) -> faust.App:
    if settings.worker_role == "search":
        return build_search_app(settings)
    if settings.worker_role == "notify":
        from tidings.notify_worker import build_notify_app

        return build_notify_app(settings)
    _, session = connect_to(settings)
    cql = Cql(session, settings.cassandra_keyspace)
    roster = Roster(CassandraMembership(cql).load_roster, threshold=settings.fanout_threshold)
    redis = redis_from(settings.redis_cluster, settings.redis_host, settings.redis_port, settings.redis_db)
    role = settings.worker_role
    tracing = telemetry.configure(settings, f"tidings-worker-{role}")
    trace_of = telemetry.traceparent_of if tracing else None
    # The hot cache and the pushes first: delivery need not wait for Cassandra, since the event
    # is already durable in Kafka. The pushes also move the roster along the log.
    deliver: list[Stage] = [
        RedisCacheAndPush(redis, settings.hot_history_size, roster=roster, trace_of=trace_of)
    ]
    # One round of Cassandra writes per batch for all of them (streams.combined), as replay.
    persist: list[Stage | PositionedStage] = [
        CombinedWrites(
            cql,
            persist_stages(cql, settings, roster),
            name="persist",
            partitions_per_batch=settings.cassandra_batch_partitions,
        )
    ]
    presence = CassandraPresence(cql)
    presence.prepare()
    push_settings = CassandraPushSettings(cql)
    push_settings.prepare()
    by_role: dict[str, tuple[list[Stage | PositionedStage], list[Stage]]] = {  # notify: above
        "all": ([*deliver, *persist], [PresencePushes(redis), presence]),
        "deliver": (list(deliver), [PresencePushes(redis)]),
        "persist": (persist, [presence]),
    }
    stages, presence_stages = by_role[role]
    media_stages, media_workers = media_roles(cql, settings) if role in ("all", "persist") else ([], [])
    # Push registrations and mutes are read models like the others.
    user_stages: list[Stage] = [push_settings] if role in ("all", "persist") else []
    key_stages: list[Stage] = []
    if role in ("all", "persist"):
        keys = CassandraKeys(cql)
        keys.prepare()
        key_stages.append(keys)
    if role in ("all", "deliver"):
        # device_list frames and the notices /v1/sync reads (E2EE), to everyone sharing a
        # conversation with the user whose devices changed
        membership = CassandraMembership(cql)
        membership.prepare()
        key_stages.append(DeviceListNotices(redis, contacts_from(membership)))
    return create_app(
        app_id=settings.worker_app_id if role == "all" else f"{settings.worker_app_id}-{role}",
        # A new delivery group starts at the end of the log: pushing old messages to online
        # clients would show them as new. Read models start at the beginning.
        offset_reset="latest" if role == "deliver" else "earliest",
        bootstrap=settings.kafka_bootstrap,
        topics=Topics(settings.topic_prefix),
        partitions=settings.topic_partitions,
        stages=stages,
        presence_stages=presence_stages,
        user_stages=user_stages,
        batch_size=settings.worker_batch_size,
        # persist: the fetch gathers the batch at the broker (up to the persist window), the
        # short window only collects what one fetch brought: a write lands at most ~the
        # persist window after its event, as when the window was a ticking timer.
        batch_window_s=settings.worker_batch_window_s,
        fetch_wait_ms=settings.background_fetch_wait_ms("persist") if role == "persist" else 0,
        session_timeout_s=settings.worker_session_timeout_s,
        datadir=settings.faust_root,
        on_applied=observe_applied,
        on_unavailable=observe_unavailable,
        tracer=telemetry.RecordTracer(role) if tracing else None,
        lag_interval_s=settings.lag_interval_s,
        replication=settings.kafka_replication,
        media_stages=media_stages,
        media_workers=media_workers,
        key_stages=key_stages,
    )


def build_search_app(settings: Settings) -> faust.App:
    """The ``search`` role: the conversation log into the index shards of its partitions, in a
    consumer group of its own (so indexing never holds up delivery or Cassandra)."""
    topics = Topics(settings.topic_prefix)
    indexer = SearchIndexer(
        settings.search_root,
        topics.conversation_events,
        KafkaBackfill(settings.kafka_bootstrap, topics.conversation_events),
        commit_interval_s=settings.search_commit_interval_s,
        commit_most_s=settings.search_commit_most_s,
        commit_age_s=settings.search_commit_age_s,
    )
    tracing = telemetry.configure(settings, "tidings-worker-search")
    app = create_app(
        app_id=f"{settings.worker_app_id}-search",
        bootstrap=settings.kafka_bootstrap,
        topics=topics,
        partitions=settings.topic_partitions,
        stages=[indexer],
        batch_size=settings.worker_batch_size,
        # Nobody waits on the index (it commits every search_commit_interval_s anyway): its
        # fetches gather the batch at the broker over the search window.
        batch_window_s=settings.worker_batch_window_s,
        fetch_wait_ms=settings.background_fetch_wait_ms("search"),
        session_timeout_s=settings.worker_session_timeout_s,
        datadir=settings.faust_root,
        on_applied=observe_applied,
        on_unavailable=observe_unavailable,
        tracer=telemetry.RecordTracer("search") if tracing else None,
        lag_interval_s=settings.lag_interval_s,
        replication=settings.kafka_replication,
    )

    # Called after Faust has waited for the agent's in-flight batch: the revoked shards are
    # committed and their writer locks freed for the next owner (another worker on this host).
    # (A plain function returning the executor's future: mode awaits what a receiver returns.)
    def release_shards(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> Awaitable[None]:
        revoked = args[0] if args else kwargs.get("revoked", set())
        mine = [tp.partition for tp in revoked if tp.topic == topics.conversation_events]
        return asyncio.get_running_loop().run_in_executor(None, indexer.release, mine)

    # mode declares handlers with mypy_extensions' NamedArg, which mypy cannot match without
    # that plugin; the signature is the one mode calls (receiver(sender, *args, signal=...)).
    app.on_partitions_revoked.connect(release_shards)  # type: ignore[arg-type]
    return app


def media_roles(cql: Cql, settings: Settings) -> tuple[list[Stage], list[Callable[[Append], Stage]]]:
    """The media read model's stage, and the thumbnail maker (it appends ``ThumbnailMade``)."""
    index = CassandraMedia(cql)
    index.prepare()
    opened: list[ObjectStore] = []

    async def store() -> ObjectStore:
        # Opened on first use, in Faust's event loop; closed with the process.
        if not opened:
            s3, _stack = await open_store(settings)
            opened.append(s3)
        return opened[0]

    def thumbnailer(append: Append) -> Stage:
        return Thumbnailer(
            store,
            index,
            append,
            longest_side=settings.media_thumbnail_px,
            max_pixels=settings.media_max_pixels,
            max_bytes=settings.media_max_direct_bytes * 2,
            videos=VideoThumbnails(
                longest_side=settings.media_thumbnail_px, max_pixels=settings.media_max_pixels
            ),
        )

    return [index], [thumbnailer]


def run_worker(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Faust builds its loop from the policy; uvloop's is cheaper per wake-up and per I/O.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if settings.worker_role == "push":
        from tidings.notify_worker import run_sender

        _serve_metrics(settings)
        run_sender(settings)
        return
    app = build_worker_app(settings)
    tune_for_server()
    _serve_metrics(settings)
    faust_worker(app).execute_from_commandline()


def faust_worker(app: faust.App) -> faust.Worker:
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    # No terminal spinner: to drive it, Faust sets the root logger to DEBUG for good
    # (faust/worker.py _setup_spinner_handler), so every log.debug of aiokafka, mode and
    # Faust (several per fetch and per request) built a LogRecord only to drop it
    # (docs/benchmarks.md, issue #19). The root logger stays at WARNING.
    worker.spinner = None
    return worker


def _serve_metrics(settings: Settings) -> None:
    try:
        start_http_server(settings.worker_web_port, addr="127.0.0.1")
    except OSError as exc:
        # A second worker on one host: it still projects; only its metrics are not served.
        logging.getLogger(__name__).warning(
            "metrics not served: port %s: %s (set TIDINGS_WORKER_WEB_PORT)", settings.worker_web_port, exc
        )
