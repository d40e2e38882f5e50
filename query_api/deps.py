"""What the gateway needs, built once per worker process from ``Settings`` (the composition
root), and a readiness check over it. Tests build the same ``Dependencies`` from fakes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from commands import EventLog, IdempotencyStore, IdGenerator, Limits, SendMessage, SendResult, send_message
from commands.direct import DirectChats
from commands.encryption import check_kind
from commands.keys import KeyStore
from commands.media import MediaService
from commands.ports import Directory, Locks
from commands.presence import PresenceStore, PresenceView
from commands.push import PushSettingsWriter
from commands.receipts import RecordReceipt, Watermarks, record_receipt
from commands.to_device import ToDeviceQueue
from events import Role
from projections.delivery import Push
from projections.device_lists import RedisDeviceLists
from projections.history import ColdTier, HotTier, WarmTier
from projections.inbox import InboxSource, UnreadCounter
from projections.search_query import Hit, Parsed
from projections.sync import SyncContext
from query_api.hub import Hub
from query_api.limits import NoLimits, RateLimiter
from query_api.presence import Contacts, PresenceTracker
from tidings.settings import Settings

log = logging.getLogger(__name__)


ReceiptStatus = Literal["delivered", "read"]


class MemberList(Protocol):
    async def members_page(
        self, conversation_id: str, *, after: str, limit: int
    ) -> list[tuple[str, Role]]: ...


class PresenceRecords(Protocol):
    async def read(self, user_ids: Sequence[str]) -> dict[str, PresenceView]:
        """The last recorded transitions (durable ``last_seen``) of those users that have one."""


class ReceiptView(Watermarks, Protocol):
    async def page(self, conversation_id: str, *, after: str, limit: int) -> list[Any]:
        """Rows with ``user_id``, ``delivered`` and ``read``, by user id after ``after``."""


class SearchShards(Protocol):
    def search(
        self, parsed: Parsed, conversation_ids: Iterable[str], *, before: int | None, limit: int
    ) -> list[Hit]:
        """The newest ``limit`` hits older than ``before`` in ``conversation_ids`` (blocking)."""


@dataclass
class Dependencies:
    settings: Settings
    secret: str
    limits: Limits
    log: EventLog
    idempotency: IdempotencyStore
    ids: IdGenerator
    hot: HotTier
    warm: WarmTier
    directory: Directory
    locks: Locks
    inbox: InboxSource
    members: MemberList
    unread: UnreadCounter
    receipts: ReceiptView
    hub: Hub
    presence_store: PresenceStore
    presence_records: PresenceRecords
    presence: PresenceTracker
    contacts: Contacts
    sync: SyncContext
    # Publishes pushes straight from the gateway (typing: never stored, never in the log).
    publish: Callable[[list[Push]], Awaitable[None]]
    # name -> coroutine that raises when that backing service is not reachable
    probes: dict[str, Callable[[], Awaitable[Any]]] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    cold: ColdTier | None = None  # the Parquet archive, when there is one
    limiter: RateLimiter = field(default_factory=NoLimits)
    media: MediaService | None = None  # uploads and downloads (the object store)
    # push registrations and mutes (write-through); None: the push routes answer 404
    push: PushSettingsWriter | None = None
    search: SearchShards | None = None  # the full-text index shards (GET /v1/search)
    keys: KeyStore | None = None  # the key directory of end-to-end encryption
    to_device: ToDeviceQueue | None = None  # to-device messages waiting for their devices
    # whose device lists changed, per user (E2EE; projections/device_lists.py)
    device_lists: RedisDeviceLists | None = None
    direct_chats: DirectChats = field(init=False)

    def __post_init__(self) -> None:
        self.direct_chats = DirectChats(self.directory)

    async def send(
        self, user_id: str, device_id: str, conversation_id: str, request: BaseModel
    ) -> SendResult:
        """Send what a ``send`` frame or a ``POST .../messages`` body asks for."""
        await self.limiter.check("send", user_id)
        cmd = SendMessage(
            sender_id=user_id,
            device_id=device_id,
            conversation_id=conversation_id,
            **request.model_dump(
                include={
                    *("client_msg_id", "kind", "body", "media_id"),
                    *("ciphertext", "algorithm", "session_id", "sender_device"),
                }
            ),
        )
        service, media = self.media, None
        if service is not None and cmd.kind not in ("text", "encrypted"):
            # Media is never sent in the clear into an encrypted conversation: that is 400,
            # whatever the media id names (it goes inside the ciphertext there).
            check_kind(encrypted=await self.directory.encrypted(conversation_id), kind=cmd.kind, fields={})
            media = await service.for_send(user_id, cmd.media_id, cmd.kind)
        result = await send_message(
            cmd,
            log=self.log,
            idempotency=self.idempotency,
            ids=self.ids,
            limits=self.limits,
            directory=self.directory,
            media=media,
        )
        if service is not None and media is not None:
            await service.sent(media, result.conversation_id, result.message_id)
        # Before the ack: the two users of a direct chat share it from its first message on.
        await self.direct_chats.sent(result.event)
        return result

    async def receipt(
        self, user_id: str, device_id: str, conversation_id: str, message_id: str, status: ReceiptStatus
    ) -> None:
        """Record what a ``receipt`` frame or a ``POST .../receipts`` body asks for."""
        cmd = RecordReceipt(
            user_id=user_id,
            device_id=device_id,
            conversation_id=conversation_id,
            message_id=int(message_id),
            status=status,
        )
        await record_receipt(cmd, log=self.log, directory=self.directory, watermarks=self.receipts)

    async def presence_of(self, user_ids: Sequence[str]) -> list[PresenceView]:
        """Live presence from the store; ``last_seen`` of offline users the store forgot (a
        Redis restart) comes from the durable record."""
        views = await self.presence_store.read(user_ids)
        forgotten = [v.user_id for v in views if v.state == "offline" and v.last_seen is None]
        if not forgotten:
            return views
        records = await self.presence_records.read(forgotten)
        out = []
        for view in views:
            record = records.get(view.user_id)
            if record is not None and view.state == "offline" and view.last_seen is None:
                # Offline now whatever the record says (no live socket in the store).
                view = PresenceView(view.user_id, "offline", record.last_seen, view.at)
            out.append(view)
        return out

    async def readiness(self) -> dict[str, str]:
        async def check(probe: Callable[[], Awaitable[Any]]) -> str:
            try:
                await asyncio.wait_for(probe(), timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a health check
                return f"down: {type(exc).__name__}"
            return "ok"

        names = list(self.probes)
        results = await asyncio.gather(*(check(self.probes[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        await close_all(self.closers)


# A client of a backing service that does not answer must not keep a stopping process alive for
# ever: an aiokafka producer stopping waits for its unconfirmed batches without end, and a
# gateway worker was seen hanging so after a Kafka timeout storm.
CLOSE_TIMEOUT_S = 10.0


async def close_all(
    closers: Sequence[Callable[[], Awaitable[Any]]], timeout_s: float = CLOSE_TIMEOUT_S
) -> None:
    """Run ``closers``, the last first, each for at most ``timeout_s``; one that fails or does
    not finish is logged, and the next one still runs. By the time they run no request or
    socket is left to answer, so what a producer had not confirmed was acknowledged to nobody."""
    for closer in reversed(closers):
        try:
            await asyncio.wait_for(closer(), timeout_s)
        except TimeoutError:
            log.error("%r did not finish closing within %.0f s; left to the process exit", closer, timeout_s)
        except Exception:
            log.exception("error while closing")


async def build_dependencies(settings: Settings) -> Dependencies:
    """Connect to Kafka, Cassandra and Redis and lease a Snowflake worker id."""
    # Imported here so unit tests that pass fakes never load the drivers.
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import murmur2
    from redis.exceptions import RedisError

    from archive.reader import ArchiveReader
    from archive.sync_source import ArchivedLog
    from commands.kafka_log import KafkaEventLog
    from commands.media import MediaPolicy
    from commands.redis_idempotency import RedisIdempotencyStore
    from commands.redis_locks import RedisLocks
    from commands.redis_media import RedisByteQuota, RedisPendingUploads
    from commands.redis_presence import RedisPresence
    from commands.redis_to_device import RedisToDevice
    from commands.to_device import TTL_S as TO_DEVICE_TTL_S
    from commands.worker_ids import LeasedSnowflake, WorkerIdLease
    from events import Topics
    from events.errors import Unavailable
    from projections.cql import Cql, connect_to
    from projections.delivery import GROUP_SHARDS
    from projections.inbox import one_conversation
    from projections.keys import CassandraKeys
    from projections.media import CassandraMedia
    from projections.membership import CassandraMembership
    from projections.messages import CassandraMessages, count_unread
    from projections.presence import CassandraPresence
    from projections.push import CassandraPushSettings
    from projections.receipts import CassandraReceipts
    from projections.recent import RedisRecent
    from projections.redis_client import make_redis
    from projections.search import ShardReaders
    from projections.sync import CassandraSyncLog
    from query_api.limits import RedisRateLimiter, limits_from
    from query_api.metrics import DELIVERY_FAILURES
    from tidings import telemetry
    from tidings.media_store import open_store

    redis = make_redis(settings.redis_host, settings.redis_port, settings.redis_db)
    closers: list[Callable[[], Awaitable[Any]]] = [redis.aclose]
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
    cluster, session = await loop.run_in_executor(
        None,
        lambda: connect_to(settings),
    )
    closers.append(lambda: loop.run_in_executor(None, cluster.shutdown))
    cql = Cql(session, settings.cassandra_keyspace)
    warm = CassandraMessages(cql, settings.message_bucket_ms)
    await loop.run_in_executor(None, warm.prepare)
    membership = CassandraMembership(cql)
    await loop.run_in_executor(None, membership.prepare)
    receipts = CassandraReceipts(cql)
    await loop.run_in_executor(None, receipts.prepare)
    sync_log = CassandraSyncLog(cql)
    await loop.run_in_executor(None, sync_log.prepare)
    presence_records = CassandraPresence(cql)
    await loop.run_in_executor(None, presence_records.prepare)
    push_settings = CassandraPushSettings(cql)
    await loop.run_in_executor(None, push_settings.prepare)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    closers.append(pubsub.aclose)
    hub = Hub(pubsub, membership.groups_of, shards=GROUP_SHARDS)
    await hub.start()
    # Called on every reconnect of the pub/sub connection (the first connect is done).
    assert pubsub.connection is not None  # connected by hub.start()
    pubsub.connection.register_connect_callback(hub.resubscribed)

    async def publish(pushes: list[Push]) -> None:
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for push in pushes:
                    pipe.publish(push.channel, push.payload)
                await pipe.execute()
        except RedisError as exc:
            DELIVERY_FAILURES.labels("publish").inc(len(pushes))
            raise Unavailable("pub/sub unavailable") from exc

    async def unread(conversation_id: str, *, after: int, reader: str, cap: int) -> int:
        return await count_unread(
            cql, settings.message_bucket_ms, conversation_id, after=after, reader=reader, cap=cap
        )

    archive = ArchiveReader(settings.archive_root)
    topics = Topics(settings.topic_prefix)
    event_log = KafkaEventLog(
        producer,
        topics,
        trace=telemetry.trace_kafka_append if telemetry.enabled() else None,
        renew=new_producer,
    )
    closers.append(event_log.close)
    presence_store = RedisPresence(redis, ttl_ms=int(settings.presence_ttl_s * 1000))
    presence = PresenceTracker(
        presence_store,
        event_log,
        idle_close_s=settings.idle_close_s,
        sweep_s=settings.presence_sweep_s,
        away_after_s=settings.presence_away_after_s,
    )

    async def kafka_probe() -> None:
        await event_log.current.partitions_for(topics.conversation_events)

    async def cassandra_probe() -> None:
        await cql.execute("SELECT release_version FROM system.local")

    async def redis_probe() -> None:
        await redis.ping()

    store, store_stack = await open_store(settings)
    closers.append(store_stack.aclose)
    media_index = CassandraMedia(cql)
    await loop.run_in_executor(None, media_index.prepare)
    media = MediaService(
        store=store,
        index=media_index,
        log=event_log,
        directory=membership,
        pending=RedisPendingUploads(redis),
        quota=RedisByteQuota(redis),
        policy=MediaPolicy(
            allowed_types=frozenset(settings.media_allowed_types),
            max_direct_bytes=settings.media_max_direct_bytes,
            max_upload_bytes=settings.media_max_upload_bytes,
            max_pixels=settings.media_max_pixels,
            url_ttl_s=settings.media_url_ttl_s,
            daily_bytes=settings.media_daily_bytes,
        ),
    )

    keys = CassandraKeys(cql)
    await loop.run_in_executor(None, keys.prepare)

    async def s3_probe() -> None:
        await store.size("readyz-probe")

    return Dependencies(
        settings=settings,
        secret=settings.resolved_auth_secret(),
        limits=Limits(max_body_chars=settings.max_body_chars),
        log=event_log,
        idempotency=RedisIdempotencyStore(redis, settings.idempotency_ttl_s),
        ids=LeasedSnowflake(lease),
        hot=RedisRecent(redis, settings.hot_history_size, roster=None),
        warm=warm,
        directory=membership,
        locks=RedisLocks(redis),
        inbox=membership,
        members=membership,
        unread=unread,
        receipts=receipts,
        hub=hub,
        presence_store=presence_store,
        presence_records=presence_records,
        presence=presence,
        contacts=Contacts(membership.conversation_ids),
        sync=SyncContext(
            log=sync_log,
            partitions=settings.topic_partitions,
            # The producer's default partitioner: murmur2 of the key, as Kafka's Java client.
            partition_of=lambda cid: (murmur2(cid.encode()) & 0x7FFFFFFF) % settings.topic_partitions,
            conversation_ids=membership.conversation_ids,
            describe=lambda user_id, cid: one_conversation(user_id, cid, source=membership, unread=unread),
            group_row=membership.conversation_row,
            fanout_threshold=settings.fanout_threshold,
            cold=ArchivedLog(archive),
            encrypted=membership.encrypted,
        ),
        publish=publish,
        probes={"kafka": kafka_probe, "cassandra": cassandra_probe, "redis": redis_probe, "s3": s3_probe},
        closers=closers,
        cold=archive,
        limiter=RedisRateLimiter(redis, limits_from(settings)),
        media=media,
        push=push_settings,
        search=ShardReaders(settings.search_root, Topics(settings.topic_prefix).conversation_events),
        keys=keys,
        to_device=RedisToDevice(redis, ttl_s=TO_DEVICE_TTL_S),
        device_lists=RedisDeviceLists(redis),
    )
