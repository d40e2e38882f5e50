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
    from archive.adapters.kafka_source import KafkaLogSource
    from archive.compact import compact
    from archive.job import ArchiveJob
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


@archive_app.command("trim-log")
def archive_trim_log() -> None:
    """Delete the Kafka log's records that verified chunks hold (below the archive's
    watermark), but none a consumer group of the topic has not committed yet. Replay reads
    the archive for that part."""
    from archive.manifest import exclusive
    from tidings.archive_prune import trim_log

    settings = _settings()
    with exclusive(settings.archive_root):
        trimmed = asyncio.run(trim_log(settings))
    if not trimmed:
        typer.echo("no archive yet: nothing to trim")
    for t in trimmed:
        held = f" (held by consumer group {t.held_by})" if t.held_by else ""
        typer.echo(f"partition {t.partition}: log starts at {t.after:,} (was {t.before:,}){held}")


@archive_app.command("prune")
def archive_prune() -> None:
    """Delete the Cassandra `messages` and sync log rows of archived (verified) chunks;
    history and sync then read them from the archive. The Kafka log is not touched."""
    from archive.manifest import exclusive
    from tidings.archive_prune import prune

    settings = _settings()
    with exclusive(settings.archive_root):
        deleted, dropped = asyncio.run(prune(settings, settings.cassandra_keyspace))
    typer.echo(
        f"pruned {deleted:,} archived messages from {settings.cassandra_keyspace}.messages "
        f"({dropped} empty buckets)"
    )


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
    """Run SQL over the archive (views messages, membership, receipts, unreadable, and
    message_media: messages with their media). Needs
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


replay_app = typer.Typer(
    invoke_without_command=True,
    help="Rebuild read models into a fresh keyspace from the archive and the log; `switch` to it.",
)


@replay_app.callback()
def replay_cmd(
    ctx: typer.Context,
    projection: Annotated[
        str,
        typer.Option(
            help="a read model name (membership, receipts, messages), search (the index shards, "
            "into <search dir>/rebuilt), or all"
        ),
    ] = "all",
    processes: Annotated[
        int, typer.Option(help="replay processes; the log's partitions are shared out among them")
    ] = 1,
) -> None:
    """Rebuild read models into <keyspace>_r<N>: the archive, then the log from its watermark
    to the end offsets now. No consumer group, no pushes."""
    if ctx.invoked_subcommand is not None:
        return
    from archive.manifest import exclusive
    from tidings.archive_replay import replay

    settings = Settings()
    if projection == "search":
        _replay_search(settings)
        return
    with exclusive(settings.archive_root), _progress("replaying") as progress:
        task = progress.add_task("replay", total=None, rate="-")
        started = time.monotonic()

        def on_progress(done: int, total: int) -> None:
            rate = done / max(time.monotonic() - started, 1e-6)
            progress.update(task, completed=done, total=total, rate=f"{rate:,.0f}")

        state = asyncio.run(
            replay(
                settings,
                projections=None if projection == "all" else [projection],
                on_progress=on_progress,
                processes=processes,
            )
        )
    events = state.archived + state.from_log
    typer.echo(
        f"rebuilt {', '.join(state.projections)} into {state.keyspace}: {state.archived:,} archived + "
        f"{state.from_log:,} logged events in {state.seconds:.1f}s ({events / max(state.seconds, 1e-9):,.0f} "
        f"events/s)\nnext: tidings verify, then tidings replay switch"
    )


def _replay_search(settings: Settings) -> None:
    from archive.manifest import exclusive
    from tidings.search_rebuild import rebuild_search, rebuilt_root

    with exclusive(settings.archive_root), _progress("indexing") as progress:
        task = progress.add_task("search", total=None, rate="-")
        started = time.monotonic()
        done = 0

        def on_progress(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(time.monotonic() - started, 1e-6)
            progress.update(task, completed=done, rate=f"{rate:,.0f}")

        state = asyncio.run(rebuild_search(settings, on_progress=on_progress))
    events = state.archived + state.from_log
    typer.echo(
        f"rebuilt the search shards into {rebuilt_root(settings)}: {state.archived:,} archived + "
        f"{state.from_log:,} logged events in {state.seconds:.1f}s ({events / max(state.seconds, 1e-9):,.0f} "
        "events/s)\nnext: tidings replay search-verify, then (search worker stopped) "
        "tidings replay search-switch"
    )


@replay_app.command("search-verify")
def replay_search_verify() -> None:
    """Compare the hit sets of a fixed query list in the live and the rebuilt search shards;
    exit 1 on a difference."""
    from tidings.search_rebuild import verify_search

    differing = 0
    for d in verify_search(Settings()):
        typer.echo(
            f"{d.q:12} live {d.live:10,} rebuilt {d.rebuilt:10,}  {'equal' if d.equal else 'DIFFERENT'}"
        )
        for side, ids in (("only live   ", d.only_live), ("only rebuilt", d.only_rebuilt)):
            if ids:
                typer.echo(f"    {side} {ids[:10]}{' ...' if len(ids) > 10 else ''}")
        differing += not d.equal
    typer.echo(
        f"{differing} queries differ"
        + (" (messages after the rebuild's end offsets may explain recent differences)" if differing else "")
    )
    raise typer.Exit(1 if differing else 0)


@replay_app.command("search-switch")
def replay_search_switch() -> None:
    """Put the rebuilt search shards in place (stop the search worker first, start it after:
    it resumes each shard from its rebuilt offset)."""
    from tidings.search_rebuild import switch_search

    old = switch_search(Settings())
    typer.echo(f"the rebuilt shards are live; the old ones are in {old} (delete them when satisfied)")


@replay_app.command("switch")
def replay_switch(
    keyspace: Annotated[str | None, typer.Option(help="the rebuilt keyspace (default: the newest)")] = None,
) -> None:
    """Catch the rebuilt keyspace up to the log end and make it the live one (stop the persist
    workers first; restart every gateway and worker after)."""
    from tidings.archive_replay import latest_rebuilt, switch
    from tidings.keyspaces import active_keyspace

    settings = Settings()
    target = keyspace or latest_rebuilt(settings)
    if target is None:
        typer.echo("nothing rebuilt yet: run tidings replay first", err=True)
        raise typer.Exit(1)
    before = active_keyspace(settings)
    applied, pointer = asyncio.run(switch(settings, target))
    typer.echo(
        f"caught {target} up by {applied:,} events; live keyspace {before} -> {target} ({pointer}).\n"
        "Restart the gateways and workers now; they read the pointer at start-up."
    )


def verify_cmd(
    keyspace: Annotated[str | None, typer.Option(help="the rebuilt keyspace (default: the newest)")] = None,
    show: Annotated[int, typer.Option(help="differing rows shown per table and side")] = 10,
) -> None:
    """Compare every table of the rebuilt keyspace with the live one; exit 1 on a difference."""
    from tidings.archive_replay import latest_rebuilt, load_state, verify
    from tidings.keyspaces import active_keyspace

    settings = Settings()
    target = keyspace or latest_rebuilt(settings)
    if target is None:
        typer.echo("nothing rebuilt yet: run tidings replay first", err=True)
        raise typer.Exit(1)
    live = active_keyspace(settings)
    state = load_state(settings, target)
    diffs = verify(settings, live, target, only_filled=not state.complete)
    differing = 0
    for d in diffs:
        mark = "equal" if d.equal else "DIFFERENT"
        typer.echo(f"{d.table:20} live {d.live_rows:10,} rebuilt {d.rebuilt_rows:10,}  {mark}")
        for side, rows in (("only live   ", d.only_live), ("only rebuilt", d.only_rebuilt)):
            for row in rows[:show]:
                typer.echo(f"    {side} {row}")
            if len(rows) > show:
                typer.echo(f"    {side} ... {len(rows) - show} more")
        differing += not d.equal
    typer.echo(
        f"{target} vs {live}: {differing} of {len(diffs)} tables differ"
        + (" (events after the replay's end offsets may explain recent differences)" if differing else "")
    )
    raise typer.Exit(1 if differing else 0)
