"""``tidings archive ...``, ``tidings replay`` and ``tidings verify``: the composition roots of
the cold archive and of rebuilding read models."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tidings.settings import Settings

archive_app = typer.Typer(
    no_args_is_help=True, help="The cold archive: Parquet files for analysts and replay."
)

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_ms(text: str) -> int:
    match = _DURATION.match(text.strip())
    if match is None:
        raise typer.BadParameter(f"{text!r}: expected a number and s, m, h or d, e.g. 90d")
    return int(match.group(1)) * _UNITS[match.group(2)] * 1000


def _settings() -> Settings:
    from tidings.keyspaces import with_active_keyspace

    return with_active_keyspace(Settings())


def _progress(description: str):  # type: ignore[no-untyped-def]
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} events/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
        disable=not sys.stderr.isatty() and os.environ.get("TIDINGS_PROGRESS") != "1",
    )


@archive_app.command("run")
def archive_run(
    older_than: Annotated[
        str | None,
        typer.Option(help="archive events older than this (default TIDINGS_ARCHIVE_OLDER_THAN, 90d)"),
    ] = None,
    compact_after: Annotated[
        bool, typer.Option("--compact/--no-compact", help="merge small files after")
    ] = True,
) -> None:
    """Compact events older than the warm window from the log into verified Parquet."""
    from archive.compact import compact
    from archive.job import ArchiveJob
    from archive.kafka_source import KafkaLogSource
    from archive.manifest import exclusive
    from events import Topics

    settings = _settings()
    cutoff_ms = int(time.time() * 1000) - parse_duration_ms(older_than or settings.archive_older_than)
    root = settings.archive_root
    topic = Topics(settings.topic_prefix).conversation_events

    async def main() -> None:
        async with KafkaLogSource(settings.kafka_bootstrap, topic, settings.topic_partitions) as source:
            with _progress("archiving") as progress:
                task = progress.add_task("archive", total=None, rate="-")
                started = time.monotonic()
                base = 0

                def on_progress(in_chunk: int) -> None:
                    done = base + in_chunk
                    rate = done / max(time.monotonic() - started, 1e-6)
                    progress.update(task, completed=done, rate=f"{rate:,.0f}")

                job = ArchiveJob(
                    root,
                    source,
                    topic=topic,
                    partitions=settings.topic_partitions,
                    chunk_events=settings.archive_chunk_events,
                    on_progress=on_progress,
                    fault=os.environ.get("TIDINGS_ARCHIVE_FAULT"),
                )
                ends, backlog = await job.backlog(cutoff_ms)
                progress.update(task, total=backlog)
                summary = await job.run(cutoff_ms, ends)
                progress.update(task, total=summary.events, completed=summary.events)
        per_table = ", ".join(f"{t} {n:,}" for t, n in sorted(summary.tables.items())) or "nothing"
        typer.echo(
            f"archived {summary.events:,} events ({per_table}) in {summary.chunks} chunks: "
            f"{summary.files} files, {summary.bytes / 1e6:,.1f} MB, {summary.seconds:.2f}s, "
            f"{summary.events_per_s:,.0f} events/s"
        )

    with exclusive(root):
        asyncio.run(main())
        if compact_after:
            merged = compact(root)
            if merged.partitions:
                typer.echo(
                    f"compacted {merged.partitions} partitions: {merged.files_before} files into "
                    f"{merged.files_after}"
                )


@archive_app.command("compact")
def archive_compact(
    min_files: Annotated[int, typer.Option(help="merge partitions with at least this many files")] = 2,
) -> None:
    """Merge small files: one file per table and day (up to 5M rows each)."""
    from archive.compact import compact
    from archive.manifest import exclusive

    root = _settings().archive_root
    with exclusive(root):
        merged = compact(root, min_files=min_files, on_merged=typer.echo)
    typer.echo(
        f"compacted {merged.partitions} partitions: {merged.files_before} files into {merged.files_after}"
    )


@archive_app.command("prune")
def archive_prune() -> None:
    """Delete the Cassandra `messages` rows of archived (verified) chunks; history then reads
    them from the archive. The Kafka log is not touched."""
    from archive.manifest import exclusive, load, save
    from archive.reader import ArchiveReader
    from projections.archived import delete_archived, drop_empty_buckets
    from projections.cql import Cql, connect
    from projections.messages import bucket_of

    settings = _settings()
    root = settings.archive_root

    async def main() -> None:
        manifest = load(root)
        if manifest is None:
            typer.echo(f"no archive at {root}")
            return
        cluster, session = connect(
            settings.cassandra_hosts,
            settings.cassandra_port,
            protocol_version=settings.cassandra_protocol_version,
            local_dc=settings.cassandra_local_dc,
        )
        try:
            cql = Cql(session, settings.cassandra_keyspace)
            reader = ArchiveReader(root)
            deleted = 0
            buckets: set[tuple[str, int]] = set()
            for rows in reader.unpruned_messages(manifest):
                deleted += await delete_archived(cql, settings.message_bucket_ms, rows)
                buckets |= {(cid, bucket_of(mid, settings.message_bucket_ms)) for cid, mid in rows}
            dropped = await drop_empty_buckets(cql, sorted(buckets))
            manifest.prune_watermarks = dict(manifest.watermarks)
            save(root, manifest)
            typer.echo(
                f"pruned {deleted:,} archived messages from {settings.cassandra_keyspace}.messages "
                f"({dropped} empty buckets)"
            )
        finally:
            cluster.shutdown()

    with exclusive(root):
        asyncio.run(main())


@archive_app.command("sql")
def archive_sql(
    query: str,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | parquet")] = "table",
    output: Annotated[
        Path | None, typer.Option(help="write here instead of stdout (needed for parquet)")
    ] = None,
    max_rows: Annotated[int, typer.Option(help="rows shown in table format")] = 1000,
    archive_dir: Annotated[
        Path | None, typer.Option(help="the archive folder (default TIDINGS_ARCHIVE_DIR)")
    ] = None,
) -> None:
    """Run SQL over the archive (views messages, membership, receipts, unreadable). Needs
    no Tidings service."""
    import duckdb
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from archive.reader import ArchiveReader

    root = archive_dir or Settings().archive_root
    reader = ArchiveReader(root)
    if reader.manifest() is None:
        typer.echo(f"no archive at {root} (set TIDINGS_ARCHIVE_DIR or --archive-dir)", err=True)
        raise typer.Exit(1)
    try:
        result = reader.sql(query)
    except duckdb.Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if fmt == "parquet":
        if output is None:
            raise typer.BadParameter("--format parquet needs --output FILE")
        pq.write_table(result, output)
    elif fmt == "csv":
        if output is None:
            pcsv.write_csv(result, sys.stdout.buffer)
        else:
            pcsv.write_csv(result, output)
    elif fmt == "table":
        from rich.console import Console
        from rich.table import Table

        table = Table(*result.column_names)
        for row in result.slice(0, max_rows).to_pylist():
            table.add_row(*("" if v is None else str(v) for v in row.values()))
        Console(file=open(output, "w") if output else None, width=200).print(table)  # noqa: SIM115
        if result.num_rows > max_rows:
            typer.echo(f"({result.num_rows:,} rows, {max_rows} shown)", err=True)
    else:
        raise typer.BadParameter("format is table, csv or parquet")


@archive_app.command("status")
def archive_status() -> None:
    """What the archive holds: chunks, files, rows per table, watermarks."""
    from archive.manifest import load

    root = _settings().archive_root
    manifest = load(root)
    if manifest is None:
        typer.echo(f"no archive at {root}")
        return
    typer.echo(f"archive {root}: topic {manifest.topic}, {len(manifest.chunks)} chunks")
    for table in ("messages", "membership", "receipts", "unreadable"):
        files = manifest.files_of(table)
        typer.echo(
            f"  {table:11} {len(files):5} files {sum(f.rows for _, f in files):12,} rows "
            f"{sum(f.bytes for _, f in files) / 1e6:10,.1f} MB"
        )
    typer.echo(f"  watermarks (next offset to archive): {dict(sorted(manifest.watermarks.items()))}")
    typer.echo(f"  pruned below: {dict(sorted(manifest.prune_watermarks.items()))}")
    if manifest.pending is not None:
        typer.echo(f"  pending chunk {manifest.pending.id} (re-done by the next run)")
