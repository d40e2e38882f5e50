"""Composition root of ``tidings worker --role notify``: the notifier agent over the
conversation events and the push sender over the notifications topic (docs/push.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import faust
import httpx
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from commands.kafka_log import KafkaEventLog
from events import ChatEvent, Topics, partition_key
from events.errors import Unavailable
from projections.cql import Cql, connect_to
from projections.inbox import inbox_page
from projections.membership import CassandraMembership
from projections.messages import count_unread
from projections.push import CassandraPushSettings
from projections.redis_client import make_redis
from streams.app import create_app
from streams.metrics import observe_applied, observe_unavailable
from streams.notify import Notifier
from streams.push_metrics import PUSH_JOBS
from streams.push_mobile import ApnsProvider, FcmProvider, apns_client
from streams.push_model import Job
from streams.push_providers import Provider, WebhookProvider, WebPushProvider
from streams.push_redis import RedisOnlineDevices, RedisSentLog
from streams.push_sender import Sender
from tidings.settings import Settings

# Inbox rows read to count a badge (the user's total unread, each conversation capped).
BADGE_CONVERSATIONS = 500


class LazyProducer:
    """One durable producer, started on first use inside the worker's loop."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = KafkaEventLog.producer(self._settings.kafka_bootstrap, linger_ms=5)
                try:
                    await producer.start()
                except KafkaError as exc:
                    await producer.stop()
                    raise Unavailable("Kafka is not reachable") from exc
                self._producer = producer
            return self._producer


class LazyEventLog:
    """Appends (``PushUnregistered`` when a receiver answers 404/410) on the lazy producer."""

    def __init__(self, producer: LazyProducer, topics: Topics) -> None:
        self._producer = producer
        self._topics = topics

    async def append(self, event: ChatEvent) -> None:
        await KafkaEventLog(await self._producer(), self._topics).append(event)


def mobile_providers(settings: Settings) -> dict[str, Provider]:
    """FCM and APNs, each when its credentials are set."""
    out: dict[str, Provider] = {}
    if settings.push_fcm_credentials_file is not None:
        account = orjson.loads(settings.push_fcm_credentials_file.read_bytes())
        out["fcm"] = FcmProvider(
            httpx.AsyncClient(timeout=settings.push_timeout_s, follow_redirects=False),
            account,
            project_id=settings.push_fcm_project_id or str(account["project_id"]),
            base_url=settings.push_fcm_base_url,
        )
    if settings.push_apns_key_file is not None:
        missing = [
            name
            for name in ("push_apns_key_id", "push_apns_team_id", "push_apns_topic")
            if not getattr(settings, name)
        ]
        if missing:
            raise SystemExit(f"APNs needs TIDINGS_{', TIDINGS_'.join(m.upper() for m in missing)}")
        out["apns"] = ApnsProvider(
            apns_client(settings.push_apns_base_url, settings.push_timeout_s),
            key_pem=settings.push_apns_key_file.read_bytes(),
            key_id=str(settings.push_apns_key_id),
            team_id=str(settings.push_apns_team_id),
            topic=str(settings.push_apns_topic),
            base_url=settings.push_apns_base_url,
            expiration_s=settings.push_apns_expiration_s,
        )
    return out


def build_notify_app(settings: Settings) -> faust.App:
    _, session = connect_to(settings)
    cql = Cql(session, settings.cassandra_keyspace)
    membership = CassandraMembership(cql)
    membership.prepare()
    push_settings = CassandraPushSettings(cql)
    push_settings.prepare()
    redis = make_redis(settings.redis_host, settings.redis_port, settings.redis_db)
    topics = Topics(settings.topic_prefix)
    producer = LazyProducer(settings)

    async def emit(jobs: Sequence[Job]) -> None:
        out = await producer()
        try:
            sends = [
                await out.send(topics.notifications, key=partition_key(j.user_id), value=j.encode())
                for j in jobs
            ]
            await asyncio.gather(*sends)  # acknowledged by Kafka before the batch's offsets move
        except KafkaError as exc:
            raise Unavailable("the notifications topic did not take the jobs") from exc
        PUSH_JOBS.inc(len(jobs))

    notifier = Notifier(members=membership, push=push_settings, online=RedisOnlineDevices(redis), emit=emit)

    async def unread(conversation_id: str, *, after: int, reader: str, cap: int) -> int:
        return await count_unread(
            cql, settings.message_bucket_ms, conversation_id, after=after, reader=reader, cap=cap
        )

    async def badge(user_id: str) -> int:
        rows, _ = await inbox_page(
            user_id, before=None, limit=BADGE_CONVERSATIONS, source=membership, unread=unread
        )
        return sum(int(r["unread_count"]) for r in rows)

    client = httpx.AsyncClient(timeout=settings.push_timeout_s, follow_redirects=False)
    providers: dict[str, Provider] = {
        "webhook": WebhookProvider(
            client, settings.resolved_push_webhook_secret(), settings.hosts(settings.push_webhook_hosts)
        ),
        "webpush": WebPushProvider(
            client,
            settings.resolved_vapid_private_pem(),
            settings.push_vapid_subject,
            settings.hosts(settings.push_webpush_hosts),
            ttl_s=settings.push_webpush_ttl_s,
        ),
    }

    providers.update(mobile_providers(settings))
    app_id = f"{settings.worker_app_id}-notify"
    sender = Sender(
        bootstrap=settings.kafka_bootstrap,
        group_id=f"{app_id}-sender",
        topics=topics,
        producer=producer,
        event_log=LazyEventLog(producer, topics),
        registrations=push_settings,
        write_through=push_settings,
        badge=badge,
        providers=providers,
        sent=RedisSentLog(redis),
        window_ms=int(settings.push_window_s * 1000),
        retry_for_ms=int(settings.push_retry_for_s * 1000),
        first_backoff_ms=int(settings.push_first_backoff_s * 1000),
        max_backoff_ms=int(settings.push_max_backoff_s * 1000),
        delivery_timeout_s=settings.push_timeout_s * 2,
    )
    app = create_app(
        app_id=app_id,
        # Like delivery: a new notify group starts at the end of the log, so an old message
        # never becomes a new notification.
        offset_reset="latest",
        bootstrap=settings.kafka_bootstrap,
        topics=topics,
        partitions=settings.topic_partitions,
        stages=[notifier],
        batch_size=settings.worker_batch_size,
        batch_window_s=settings.worker_batch_window_s,
        session_timeout_s=settings.worker_session_timeout_s,
        on_applied=observe_applied,
        on_unavailable=observe_unavailable,
        lag_interval_s=settings.lag_interval_s,
    )

    @app.task
    async def push_sender() -> None:
        await sender.run()

    return app
