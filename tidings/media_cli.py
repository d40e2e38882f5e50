"""``tidings media``: the media jobs (the orphan collector)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer

from tidings.keyspaces import with_active_keyspace
from tidings.settings import Settings

media_app = typer.Typer(no_args_is_help=True, help="Media (the object store) jobs.")


async def gc_orphans(settings: Settings, *, older_than_s: int | None = None) -> tuple[int, int]:
    """Run the orphan job once; returns (media deleted, objects deleted)."""
    from commands.adapters.kafka_log import KafkaEventLog
    from commands.media_gc import collect_orphans
    from events import Topics
    from projections.adapters.cql import Cql, connect_to
    from projections.media import CassandraMedia
    from tidings.media_store import open_store

    loop = asyncio.get_running_loop()
    cluster, session = await loop.run_in_executor(None, connect_to, settings)
    producer = KafkaEventLog.producer(settings.kafka_bootstrap, linger_ms=0)
    await producer.start()
    try:
        catalogue = CassandraMedia(Cql(session, settings.cassandra_keyspace))
        await loop.run_in_executor(None, catalogue.prepare)
        store, stack = await open_store(settings)
        async with stack:
            done = await collect_orphans(
                catalogue,
                store,
                KafkaEventLog(producer, Topics(settings.topic_prefix)),
                now_ms=int(time.time() * 1000),
                older_than_ms=1000 * (settings.media_orphan_age_s if older_than_s is None else older_than_s),
            )
        return len(done.media), len(done.objects)
    finally:
        await producer.stop()
        cluster.shutdown()


@media_app.command("gc-orphans")
def gc_orphans_cmd(
    older_than: Annotated[
        int | None, typer.Option(help="Seconds; default TIDINGS_MEDIA_ORPHAN_AGE_S (a day).")
    ] = None,
) -> None:
    """Delete media uploaded and never sent, and unreferenced objects, older than a day."""
    media, objects = asyncio.run(gc_orphans(with_active_keyspace(Settings()), older_than_s=older_than))
    typer.echo(f"orphans: {media} media deleted, {objects} objects deleted")
