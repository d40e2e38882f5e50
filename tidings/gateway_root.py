"""Composition root of the gateway: each Sanic worker process builds its ``Dependencies`` from
the one ``Settings`` (drivers, adapters, read models, services), and the app factory gets the
gateway's narrow ``GatewayConfig`` and tracer. ``tidings.gateway`` serves the app made here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from redis.asyncio import RedisCluster
from redis.exceptions import RedisError
from sanic import Sanic

from archive.reader import ArchiveReader
from archive.sync_source import ArchivedLog
from commands import Limits
from commands.adapters.images import identify_image
from commands.adapters.kafka_log import KafkaEventLog
from commands.adapters.redis_idempotency import RedisIdempotencyStore
from commands.adapters.redis_locks import RedisLocks
from commands.adapters.redis_media import RedisByteQuota, RedisPendingUploads
from commands.adapters.redis_presence import RedisPresence
from commands.adapters.redis_rate_limits import RedisRateLimiter
from commands.adapters.redis_to_device import RedisToDevice
from commands.adapters.worker_ids import LeasedSnowflake, WorkerIdLease
from commands.media import MediaPolicy, MediaService
from commands.push import AllowedHosts
from commands.to_device import TTL_S as TO_DEVICE_TTL_S
from events import Topics
from events.errors import Unavailable
from projections.adapters.cql import Cql, connect_to
from projections.adapters.device_lists import RedisDeviceLists
from projections.adapters.encryption_broadcasts import EncryptionBroadcasts
from projections.adapters.presence import CassandraPresence
from projections.adapters.recent import RedisCacheAndPush
from projections.adapters.redis_client import RedisClient, redis_from
from projections.adapters.redis_client import publish as queue_publish
from projections.adapters.redis_pipeliner import RedisPipeliner
from projections.adapters.redis_pubsub import GatewayRoutes, ShardedSubscriber
from projections.adapters.search import ShardReaders
from projections.delivery import GROUP_SHARDS, Push
from projections.encryption import EncryptionFlags
from projections.inbox import UnreadCounter, one_conversation
from projections.keys import CassandraKeys
from projections.media import CassandraMedia
from projections.membership import CassandraMembership
from projections.messages import CassandraMessages, count_unread
from projections.push import CassandraPushSettings
from projections.receipts import CassandraReceipts
from projections.sync import SyncContext
from projections.sync_log import CassandraSyncLog
from query_api.app import create_app
from query_api.config import GatewayConfig, NoSpans
from query_api.deps import Dependencies
from query_api.hub import Hub
from query_api.metrics import DELIVERY_FAILURES
from query_api.presence import Contacts, PresenceTracker
from query_api.services import Conversations, Keys, Messaging, PresenceReads, PushSettings, ToDeviceRelay
from tidings import telemetry
from tidings.gc_tuning import tune_for_server
from tidings.media_store import open_store
from tidings.settings import Settings

Closer = Callable[[], Awaitable[Any]]

SERVICE_NAME = "tidings-gateway"


def gateway_config(settings: Settings) -> GatewayConfig:
    return GatewayConfig(
        max_frame_bytes=settings.max_frame_bytes,
        max_group_members=settings.max_group_members,
        allowed_origins=tuple(settings.allowed_origins),
        drain_spread_s=settings.drain_spread_s,
        drain_unready_s=settings.drain_unready_s,
        dev_login=settings.dev_login,
        media_endpoint=settings.s3_public_endpoint or settings.s3_endpoint_url,
        push_hosts=AllowedHosts(
            webhook=settings.hosts(settings.push_webhook_hosts),
            webpush=settings.hosts(settings.push_webpush_hosts),
        ),
        vapid_private_pem=settings.resolved_vapid_private_pem,
    )


class _TelemetrySpans:
    def span(self, name: str, attributes: dict[str, Any] | None = None) -> Any:
        return telemetry.span(name, attributes)

    def child_of(self, traceparent: bytes, name: str, attributes: dict[str, Any] | None = None) -> Any:
        return telemetry.child_of(traceparent, name, attributes)


def gateway_app(settings: Settings, *, name: str = "tidings") -> Sanic:
    """The gateway's Sanic app: per worker process, tracing is configured and the dependencies
    built before serving, and the garbage collector tuned once they are."""

    async def build() -> Dependencies:
        tracing = telemetry.configure(settings, SERVICE_NAME)
        deps = await build_dependencies(settings)
        deps.tracer = _TelemetrySpans() if tracing else NoSpans()
        return deps

    return create_app(gateway_config(settings), build, name=name, started=tune_for_server)


@dataclass
class _Connections:
    """The process's clients of Kafka, Cassandra and Redis, and what closes them."""

    redis: RedisClient
    cql: Cql
    event_log: KafkaEventLog
    topics: Topics
    lease: WorkerIdLease
    closers: list[Closer] = field(default_factory=list)

    async def probe_kafka(self) -> None:
        await self.event_log.current.partitions_for(self.topics.conversation_events)

    async def probe_cassandra(self) -> None:
        await self.cql.execute("SELECT release_version FROM system.local")

    async def probe_redis(self) -> None:
        await self.redis.ping()


@dataclass
class _ReadModels:
    """The Cassandra read models the gateway queries, their statements prepared."""

    warm: CassandraMessages
    membership: CassandraMembership
    receipts: CassandraReceipts
    sync_log: CassandraSyncLog
    presence_records: CassandraPresence
    push_settings: CassandraPushSettings
    media_index: CassandraMedia
    keys: CassandraKeys


async def build_dependencies(settings: Settings) -> Dependencies:
    """Connect to Kafka, Cassandra and Redis and lease a Snowflake worker id."""
    conns = await _connect(settings)
    models = await _prepare(settings, conns.cql)
    membership, redis = models.membership, conns.redis
    conns.closers.append(membership.encryption_flags.aclose)  # before Cassandra's shutdown
    hub = await _start_hub(redis, membership, conns.closers, conns.lease.worker_id)
    if not isinstance(redis, RedisCluster):
        # On a Redis Cluster the broadcast is published sharded (SPUBLISH) and this listener's
        # plain SUBSCRIBE would not hear it: there the flags never watch, so "not encrypted"
        # keeps its short trust (docs/e2ee.md) until the listener reads the shard channel.
        broadcasts = EncryptionBroadcasts(redis, membership.encryption_flags)
        await broadcasts.start()
        conns.closers.append(broadcasts.close)
    unread = _unread_counter(settings, conns.cql)
    presence_store = RedisPresence(redis, ttl_ms=int(settings.presence_ttl_s * 1000))
    conns.closers.append(presence_store.aclose)  # before the client (closers run last first)
    presence = PresenceTracker(
        presence_store,
        conns.event_log,
        idle_close_s=settings.idle_close_s,
        sweep_s=settings.presence_sweep_s,
        away_after_s=settings.presence_away_after_s,
    )
    media = await _media(settings, conns, models)
    # One pipeliner for the send path's Redis commands (rate-limit checks, idempotency claims
    # and marks): the commands of one loop iteration go out as one pipeline, one round trip.
    pipeliner = RedisPipeliner(redis)
    conns.closers.append(pipeliner.aclose)  # its marks out before the client closes
    limiter = RedisRateLimiter(redis, limits_from(settings), pipeliner=pipeliner)
    ids = LeasedSnowflake(conns.lease)  # one generator per worker id: two would repeat ids
    archive = ArchiveReader(settings.archive_root)
    config, publish = gateway_config(settings), _publisher(redis)
    return Dependencies(
        config=config,
        secret=settings.resolved_auth_secret(),
        messaging=_messaging(settings, conns, models, limiter, ids, media.service, pipeliner),
        conversations=Conversations(
            event_log=conns.event_log,
            directory=membership,
            locks=RedisLocks(redis),
            ids=ids,
            max_members=settings.max_group_members,
            publish=publish,
        ),
        presence_reads=PresenceReads(presence_store, models.presence_records),
        hot=RedisCacheAndPush(redis, settings.hot_history_size, roster=None),
        warm=models.warm,
        directory=membership,
        inbox=membership,
        members=membership,
        unread=unread,
        receipts=models.receipts,
        hub=hub,
        presence=presence,
        contacts=Contacts(membership.conversation_ids),
        sync=_sync_context(settings, models, unread, archive),
        publish=publish,
        probes={
            "kafka": conns.probe_kafka,
            "cassandra": conns.probe_cassandra,
            "redis": conns.probe_redis,
            "s3": media.probe,
        },
        closers=conns.closers,
        cold=archive,
        limiter=limiter,
        media=media.service,
        push=PushSettings(conns.event_log, models.push_settings, config.push_hosts, membership),
        search=ShardReaders(settings.search_root, conns.topics.conversation_events),
        keys=Keys(conns.event_log, models.keys),
        to_device=ToDeviceRelay(
            RedisToDevice(redis, ttl_s=TO_DEVICE_TTL_S), models.keys, publish, limiter=limiter
        ),
        device_lists=RedisDeviceLists(redis),
    )


def _messaging(
    settings: Settings,
    conns: _Connections,
    models: _ReadModels,
    limiter: RedisRateLimiter,
    ids: LeasedSnowflake,
    media: MediaService,
    pipeliner: RedisPipeliner,
) -> Messaging:
    return Messaging(
        event_log=conns.event_log,
        idempotency=RedisIdempotencyStore(conns.redis, settings.idempotency_ttl_s, pipeliner=pipeliner),
        ids=ids,
        limits=Limits(max_body_chars=settings.max_body_chars),
        directory=models.membership,
        watermarks=models.receipts,
        limiter=limiter,
        media=media,
    )


async def _connect(settings: Settings) -> _Connections:
    """Redis and a leased worker id, the Kafka producer, then the Cassandra session."""
    redis = redis_from(settings.redis_cluster, settings.redis_host, settings.redis_port, settings.redis_db)
    closers: list[Closer] = [redis.aclose]
    lease = await WorkerIdLease.acquire(redis)
    closers.append(lease.release)

    async def new_producer() -> AIOKafkaProducer:
        producer = KafkaEventLog.producer(settings.kafka_bootstrap, linger_ms=settings.kafka_linger_ms)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    producer = await new_producer()
    loop = asyncio.get_running_loop()
    cluster, session = await loop.run_in_executor(None, lambda: connect_to(settings))
    closers.append(lambda: loop.run_in_executor(None, cluster.shutdown))
    topics = Topics(settings.topic_prefix)
    event_log = KafkaEventLog(
        producer,
        topics,
        trace=telemetry.trace_kafka_append if telemetry.enabled() else None,
        renew=new_producer,
    )
    closers.append(event_log.close)
    cql = Cql(session, settings.cassandra_keyspace)
    return _Connections(redis, cql, event_log, topics, lease, closers)


async def _prepare(settings: Settings, cql: Cql) -> _ReadModels:
    models = _ReadModels(
        warm=CassandraMessages(cql, settings.message_bucket_ms),
        # The send path's encryption flags, read again off the path before they run out.
        membership=CassandraMembership(cql, flags=EncryptionFlags(cql, refresh_ahead=True)),
        receipts=CassandraReceipts(cql),
        sync_log=CassandraSyncLog(cql),
        presence_records=CassandraPresence(cql),
        push_settings=CassandraPushSettings(cql),
        media_index=CassandraMedia(cql),
        keys=CassandraKeys(cql),
    )
    loop = asyncio.get_running_loop()
    for model in vars(models).values():
        await loop.run_in_executor(None, model.prepare)
    return models


async def _start_hub(
    redis: RedisClient, membership: CassandraMembership, closers: list[Closer], gateway_id: int
) -> Hub:
    spans = _TelemetrySpans() if telemetry.enabled() else NoSpans()
    if isinstance(redis, RedisCluster):
        sharded = ShardedSubscriber(redis)
        closers.append(sharded.aclose)
        hub = Hub(sharded, membership.groups_of, shards=GROUP_SHARDS, spans=spans)
        await hub.start()
        sharded.on_reconnect(hub.resubscribed)  # each node connection's later reconnects
        return hub
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    closers.append(pubsub.aclose)
    # One instance: deliveries are routed to this gateway's channel by its leased worker id
    # (unique among live processes); on a cluster they still go to each user's channel.
    routes = GatewayRoutes(redis, gateway_id)
    hub = Hub(pubsub, membership.groups_of, shards=GROUP_SHARDS, spans=spans, routes=routes)
    await hub.start()
    # Called on every reconnect of the pub/sub connection (the first connect is done).
    assert pubsub.connection is not None  # connected by hub.start()
    pubsub.connection.register_connect_callback(hub.resubscribed)
    return hub


def _publisher(redis: RedisClient) -> Callable[[list[Push]], Awaitable[None]]:
    """Publishes pushes straight from the gateway (typing: never stored, never in the log)."""

    async def publish(pushes: list[Push]) -> None:
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for push in pushes:
                    queue_publish(pipe, push.channel, push.payload)
                await pipe.execute()
        except RedisError as exc:
            DELIVERY_FAILURES.labels("publish").inc(len(pushes))
            raise Unavailable("pub/sub unavailable") from exc

    return publish


def _unread_counter(settings: Settings, cql: Cql) -> UnreadCounter:
    async def unread(conversation_id: str, *, after: int, reader: str, cap: int) -> int:
        return await count_unread(
            cql, settings.message_bucket_ms, conversation_id, after=after, reader=reader, cap=cap
        )

    return unread


def _sync_context(
    settings: Settings, models: _ReadModels, unread: UnreadCounter, archive: ArchiveReader
) -> SyncContext:
    membership, partitions = models.membership, settings.topic_partitions
    return SyncContext(
        log=models.sync_log,
        partitions=partitions,
        # The producer's default partitioner: murmur2 of the key, as Kafka's Java client.
        partition_of=lambda cid: (murmur2(cid.encode()) & 0x7FFFFFFF) % partitions,
        conversation_ids=membership.conversation_ids,
        describe=lambda user_id, cid: one_conversation(user_id, cid, source=membership, unread=unread),
        group_row=membership.conversation_row,
        fanout_threshold=settings.fanout_threshold,
        cold=ArchivedLog(archive),
        encrypted=membership.encrypted,
    )


@dataclass
class _Media:
    service: MediaService
    probe: Callable[[], Awaitable[None]]


async def _media(settings: Settings, conns: _Connections, models: _ReadModels) -> _Media:
    """Uploads and downloads: the object store, its index and the Redis quotas."""
    store, store_stack = await open_store(settings)
    conns.closers.append(store_stack.aclose)
    service = MediaService(
        store=store,
        index=models.media_index,
        log=conns.event_log,
        directory=models.membership,
        pending=RedisPendingUploads(conns.redis),
        quota=RedisByteQuota(conns.redis),
        policy=MediaPolicy(
            allowed_types=frozenset(settings.media_allowed_types),
            max_direct_bytes=settings.media_max_direct_bytes,
            max_upload_bytes=settings.media_max_upload_bytes,
            max_pixels=settings.media_max_pixels,
            url_ttl_s=settings.media_url_ttl_s,
            daily_bytes=settings.media_daily_bytes,
        ),
        identify_image=identify_image,
    )

    async def probe() -> None:
        await store.size("readyz-probe")

    return _Media(service, probe)


def limits_from(settings: Settings) -> dict[str, tuple[float, int]]:
    """kind -> (tokens per second, burst)."""
    return {
        "send": (settings.rate_send_per_s, settings.rate_send_burst),
        "typing": (settings.rate_typing_per_s, settings.rate_typing_burst),
        "presence": (settings.rate_presence_per_s, settings.rate_presence_burst),
        "connect": (settings.rate_connect_per_s, settings.rate_connect_burst),
        "media": (settings.rate_media_per_s, settings.rate_media_burst),
        "search": (settings.rate_search_per_s, settings.rate_search_burst),
    }
