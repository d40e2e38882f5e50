"""The Faust app and its agents: a batch agent (``streams.adapters.faust_batches``) for each
topic one agent reads, Faust agents for the media topic, which two read. The composition root
(``tidings.worker``) builds the stores and passes them in; nothing here connects at import
time."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import faust

from events import ChatEvent, Topics, encode_event, partition_key
from events.topics import route
from streams.adapters.faust_fetch import App as FetchSizedApp
from streams.adapters.faust_ready import report_readiness
from streams.adapters.faust_take import Stream as BatchStream
from streams.adapters.metrics import BATCH_EVENTS, DEAD_LETTERS, export_lag
from streams.projector import PositionedStage, Projector, Record, Stage, Tracer

Append = Callable[[ChatEvent], Awaitable[None]]


class FaustDeadLetters:
    """Records the projector gave up on, into the dead-letter topic with why (``error``), from
    where (``source``: topic, partition, offset) and which consumer group gave up (``group``:
    each role reads the log in a group of its own, so one poison event is dead-lettered once
    per role that reads its topic)."""

    def __init__(self, topic: faust.TopicT, group: str) -> None:
        self._topic = topic
        self._group = group.encode()

    async def send(self, record: Record, error: str) -> None:
        # Awaited, so the dead letter is flushed before the source offset is committed.
        await self._topic.send(
            key=record.key,
            value=record.value,
            headers={
                "error": error.encode()[:4000],
                "source": f"{record.topic}:{record.partition}:{record.offset}".encode(),
                "group": self._group,
            },
        )
        # The error starts with the stage name, or "undecodable": a small set of reasons.
        DEAD_LETTERS.labels(error.split(":", 1)[0][:32]).inc()


def create_app(
    *,
    app_id: str,
    bootstrap: str,
    topics: Topics,
    partitions: int,
    stages: Sequence[Stage | PositionedStage],
    batch_size: int,
    presence_stages: Sequence[Stage] = (),
    user_stages: Sequence[Stage] = (),
    batch_window_s: float,
    session_timeout_s: float,
    offset_reset: str = "earliest",
    on_applied: Callable[[str, int, float], None] | None = None,
    on_unavailable: Callable[[str, int], None] | None = None,
    tracer: Tracer | None = None,
    lag_interval_s: float = 0.0,
    replication: int = 1,
    media_stages: Sequence[Stage] = (),
    media_workers: Sequence[Callable[[Append], Stage]] = (),
    key_stages: Sequence[Stage] = (),
    fetch_wait_ms: int = 0,
    datadir: Path | None = None,
) -> FetchSizedApp:
    """``fetch_wait_ms`` > 0: a group nobody waits on lets each fetch gather events for that
    long (``streams.adapters.faust_fetch``); 0 (delivery): a fetch returns at the first event.
    ``datadir``: where Faust makes its directories (``_faust_app``)."""
    app = _faust_app(app_id, bootstrap, partitions, replication, offset_reset, session_timeout_s, datadir)
    app.fetch_wait_ms = fetch_wait_ms
    report_readiness(app)
    source = app.topic(topics.conversation_events, key_type=bytes, value_type=bytes, partitions=partitions)
    dead_letters = app.topic(topics.dead_letters, key_type=bytes, value_type=bytes, partitions=partitions)

    def projector(of: Sequence[Stage | PositionedStage]) -> Projector:
        return Projector(
            of,
            FaustDeadLetters(dead_letters, app_id),
            on_applied=on_applied,
            on_unavailable=on_unavailable,
            tracer=tracer,
        )

    _batch_agent(app, source, projector(stages), "project", batch_size, batch_window_s)
    watched = [topics.conversation_events]
    if presence_stages:
        presence = app.topic(topics.presence_events, key_type=bytes, value_type=bytes, partitions=partitions)
        _batch_agent(app, presence, projector(presence_stages), "presence", batch_size, batch_window_s)
        watched.append(topics.presence_events)
    if media_stages or media_workers:
        media = app.topic(topics.media_events, key_type=bytes, value_type=bytes, partitions=partitions)
        _media_agents(app, media, topics, projector, media_stages, media_workers, batch_size, batch_window_s)
        if media_stages:
            watched.append(topics.media_events)
    if user_stages:
        users = app.topic(topics.user_events, key_type=bytes, value_type=bytes, partitions=partitions)
        _batch_agent(app, users, projector(user_stages), "user-settings", batch_size, batch_window_s)
        watched.append(topics.user_events)
    if key_stages:
        keys = app.topic(topics.key_events, key_type=bytes, value_type=bytes, partitions=partitions)
        _batch_agent(app, keys, projector(key_stages), "keys", batch_size, batch_window_s)
    if lag_interval_s > 0:
        for topic in watched:
            _lag_task(app, bootstrap, app_id, topic, partitions, lag_interval_s)
    return app


def _faust_app(
    app_id: str,
    bootstrap: str,
    partitions: int,
    replication: int,
    offset_reset: str,
    session_timeout_s: float,
    datadir: Path | None = None,
) -> FetchSizedApp:
    """Faust's app as every worker role configures it. Faust makes ``<datadir>/<app id>-data``
    (and its table directories) at start even with the in-memory store, and stores nothing
    there for these apps; its default is the working directory, which filled checkouts with
    empty directories. The composition roots pass their state directory; the rest (tests,
    benchmarks) get one in the system's temporary directory."""
    if datadir is None:
        datadir = Path(tempfile.gettempdir()) / f"tidings-faust-{os.getuid()}"
    datadir.mkdir(parents=True, exist_ok=True)
    return FetchSizedApp(
        app_id,
        datadir=str(datadir / f"{app_id}-data"),
        # take_events without a timer while idle (streams.adapters.faust_take)
        Stream=BatchStream,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        # Faust's own topics (its assignor's leader topic) replicate as the project's do.
        topic_replication_factor=replication,
        consumer_auto_offset_reset=offset_reset,
        producer_acks=-1,
        producer_request_timeout=30.0,
        web_enabled=False,
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=max(session_timeout_s / 4, 1.0),
    )


def _media_agents(
    app: faust.App,
    media: Any,
    topics: Topics,
    projector: Callable[[Sequence[Stage]], Projector],
    media_stages: Sequence[Stage],
    media_workers: Sequence[Callable[[Append], Stage]],
    batch_size: int,
    batch_window_s: float,
) -> None:
    """The media read model's agent, and one agent per media worker (thumbnails), which append
    their events to the media topic."""

    async def append(event: ChatEvent) -> None:
        # Awaited like a dead letter: Faust flushes it before the source offset is committed.
        topic, key = route(topics, event)
        if topic != topics.media_events:
            raise ValueError(f"the media workers append media events only, not {type(event).__name__}")
        await media.send(key=partition_key(key), value=encode_event(event))

    if media_stages:
        _agent(app, media, projector(media_stages), "media", batch_size, batch_window_s)
    # Its own agent, so slow image work never holds up the media read model.
    for make in media_workers:
        worker = make(append)
        _agent(app, media, projector([worker]), worker.name, 1, batch_window_s)


def _lag_task(
    app: faust.App, bootstrap: str, group: str, topic: str, partitions: int, interval_s: float
) -> None:
    async def consumer_lag() -> None:
        await export_lag(bootstrap, group, topic, partitions=partitions, interval_s=interval_s)

    app.task(consumer_lag)


def _batch_agent(
    app: FetchSizedApp,
    source: faust.TopicT,
    projector: Projector,
    name: str,
    batch_size: int,
    window_s: float,
) -> None:
    """The one reader of ``source``: its records in batches, past Faust's per-record path
    (``streams.adapters.faust_batches``)."""

    async def handle(batch: Sequence[Record]) -> None:
        BATCH_EVENTS.observe(len(batch))
        await projector.handle(batch)

    app.batch_agent(source, handle, name=name, max_=batch_size, within=window_s)


def _agent(
    app: faust.App, source: faust.TopicT, projector: Projector, name: str, batch_size: int, window_s: float
) -> None:
    """A Faust agent, for a topic that more than one agent reads (the media topic)."""

    # concurrency=1: more breaks per-partition order and lets Faust commit past in-flight events.
    @app.agent(source, concurrency=1, name=name)
    async def project(stream: faust.StreamT) -> None:
        # take_events (not in StreamT's type) gives each event's partition and offset.
        async for batch in stream.take_events(batch_size, within=window_s):  # type: ignore[attr-defined]
            BATCH_EVENTS.observe(len(batch))
            await projector.handle(
                [
                    Record(
                        ev.message.topic,
                        ev.message.partition,
                        ev.message.offset,
                        ev.key,
                        ev.value,
                        ev.headers,
                    )
                    for ev in batch
                ]
            )
