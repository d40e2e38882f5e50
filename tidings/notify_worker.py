"""Composition roots of ``tidings worker --role notify`` (the notifier agent over the
conversation events) and ``--role push`` (the sender over the notifications topic); two
processes, so each can be scaled, stopped and killed on its own (docs/push.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import faust
import httpx
import orjson
import uvloop
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from commands.adapters.kafka_log import KafkaEventLog
from events import ChatEvent, Topics, partition_key
from events.errors import Unavailable
from projections.adapters.cql import Cql, connect_to
from projections.adapters.redis_client import RedisClient, redis_from
from projections.inbox import inbox_page
from projections.membership import CassandraMembership
from projections.messages import count_unread
from projections.push import CassandraPushSettings
from streams.adapters.metrics import observe_applied, observe_unavailable
from streams.adapters.push_mobile import ApnsProvider, FcmProvider, apns_client
from streams.adapters.push_providers import Provider, WebhookProvider, WebPushProvider
from streams.adapters.push_redis import RedisOnlineDevices, RedisSentLog
from streams.adapters.push_sender import Sender
from streams.app import create_app
from streams.notify import Notifier
from streams.push_metrics import PUSH_JOBS
from streams.push_model import Job
from tidings.settings import Settings

log = logging.getLogger(__name__)

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

    async def close(self) -> None:
        if self._producer is not None:
            await asyncio.wait_for(self._producer.stop(), 10)


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


@dataclass
class _Stores:
    cql: Cql
    membership: CassandraMembership
    push_settings: CassandraPushSettings
    redis: RedisClient
    topics: Topics
    producer: LazyProducer


def _stores(settings: Settings) -> _Stores:
    _, session = connect_to(settings)
    cql = Cql(session, settings.cassandra_keyspace)
    membership = CassandraMembership(cql)
    membership.prepare()
    push_settings = CassandraPushSettings(cql)
    push_settings.prepare()
    redis = redis_from(settings.redis_cluster, settings.redis_host, settings.redis_port, settings.redis_db)
    return _Stores(
        cql, membership, push_settings, redis, Topics(settings.topic_prefix), LazyProducer(settings)
    )


def build_notify_app(settings: Settings) -> faust.App:
    """The notifier: a Faust agent over the conversation events appending notification jobs."""
    stores = _stores(settings)
    topics, producer = stores.topics, stores.producer

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

    notifier = Notifier(
        members=stores.membership,
        push=stores.push_settings,
        online=RedisOnlineDevices(stores.redis),
        emit=emit,
    )
    return create_app(
        app_id=f"{settings.worker_app_id}-notify",
        # Like delivery: a new notify group starts at the end of the log, so an old message
        # never becomes a new notification.
        offset_reset="latest",
        bootstrap=settings.kafka_bootstrap,
        topics=topics,
        partitions=settings.topic_partitions,
        stages=[notifier],
        batch_size=settings.worker_batch_size,
        # A notification goes to a device that is offline: a quarter second more does not
        # matter, and fuller, fewer fetches (gathered at the broker over the notify window)
        # cost far less per message (docs/benchmarks.md).
        batch_window_s=settings.worker_batch_window_s,
        fetch_wait_ms=settings.background_fetch_wait_ms("notify"),
        session_timeout_s=settings.worker_session_timeout_s,
        datadir=settings.faust_root,
        on_applied=observe_applied,
        on_unavailable=observe_unavailable,
        lag_interval_s=settings.lag_interval_s,
    )


def build_sender(settings: Settings) -> tuple[Sender, LazyProducer]:
    """The sender (role ``push``): coalesces the jobs and delivers through the providers; and
    its producer, to close."""
    stores = _stores(settings)
    cql, membership = stores.cql, stores.membership

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
        **mobile_providers(settings),
    }
    sender = Sender(
        bootstrap=settings.kafka_bootstrap,
        group_id=f"{settings.worker_app_id}-push",
        topics=stores.topics,
        producer=stores.producer,
        event_log=LazyEventLog(stores.producer, stores.topics),
        registrations=stores.push_settings,
        write_through=stores.push_settings,
        badge=badge,
        providers=providers,
        sent=RedisSentLog(stores.redis),
        window_ms=int(settings.push_window_s * 1000),
        retry_for_ms=int(settings.push_retry_for_s * 1000),
        first_backoff_ms=int(settings.push_first_backoff_s * 1000),
        max_backoff_ms=int(settings.push_max_backoff_s * 1000),
        delivery_timeout_s=settings.push_timeout_s * 2,
        max_in_flight=settings.push_max_in_flight,
    )
    return sender, stores.producer


def run_sender(settings: Settings) -> None:
    """``tidings worker --role push``: the sender until SIGTERM/SIGINT, then a last commit."""
    # httpx logs every request at INFO: a line per notification, with its endpoint.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sender, producer = build_sender(settings)

    async def forever() -> None:
        while True:
            try:
                await sender.run()
            except (KafkaError, OSError) as exc:
                # Kafka unreachable or the group in trouble: held jobs were not committed, so
                # a new run reads them again.
                log.warning("push sender stopped (%r); starting again in 2 s", exc)
                await asyncio.sleep(2)

    async def main() -> None:
        task = asyncio.create_task(forever())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await producer.close()

    uvloop.run(main())
