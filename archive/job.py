"""The archive job: compacts old events of the log into Parquet, chunk by chunk.

Rules, in the order a chunk goes through them (STYLE rule 11):
1. **Read** each partition from the manifest's watermark, stopping at the first event newer
   than the cutoff (or the log end captured at start, or the chunk size).
2. **Record the intent**: the chunk's exact per-partition offset ranges go into the manifest as
   ``pending`` before any file is written, so a re-run after a crash repeats exactly this chunk
   and writes exactly the same files.
3. **Write** every file to ``_staging/<chunk>/`` (fsynced), then **rename** each into place.
   A file is either absent or complete at its final path; readers list files from the
   manifest only, so they do not see it until step 5.
4. **Verify**: read every file back; its row count and id range must match what was written,
   and the rows of all files must add up to the events read.
5. **Record**: the chunk, its files and the new watermarks replace the manifest atomically.
   The watermark is the mark that the source may be deleted; deleting is a separate step
   (``tidings archive prune``).

A crash at any point loses nothing: the source is untouched until a later, separate prune, and
the next run first deletes what no manifest lists (staging folders, files renamed into place
before a crash) and then re-does the pending chunk. Re-running an archived chunk changes
nothing: the watermark has moved past it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from archive.files import rename_into_place, verify_file, write_file
from archive.index import update_index
from archive.manifest import STAGING, Chunk, FileEntry, Manifest, load, save
from archive.rows import RowBuilder
from archive.tables import TABLES, LogEntry, file_path


class LogSource(Protocol):
    """The event log as the archive reads it (the Kafka adapter, or a fake in unit tests)."""

    async def end_offsets(self) -> dict[int, int]: ...

    def read(self, starts: dict[int, int], ends: dict[int, int]) -> AsyncIterator[list[LogEntry]]:
        """Entries of each partition from ``starts[p]`` (inclusive) to ``ends[p]`` (exclusive),
        in offset order per partition; stops when every partition reached its end."""
        ...


@dataclass
class RunSummary:
    events: int = 0
    chunks: int = 0
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    tables: dict[str, int] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class FaultInjected(BaseException):
    pass


class ArchiveJob:
    def __init__(
        self,
        root: Path,
        source: LogSource,
        *,
        topic: str,
        partitions: int,
        chunk_events: int,
        on_progress: Callable[[int], None] | None = None,
        fault: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self._source = source
        self._topic = topic
        self._partitions = partitions
        self._chunk_events = chunk_events
        self._on_progress = on_progress
        # Test hook "<point>@<chunk number>": SIGKILL this process at that point of that chunk.
        self._fault = fault
        self._clock = clock

    def manifest(self) -> Manifest:
        found = load(self.root)
        if found is None:
            return Manifest(topic=self._topic, partitions=self._partitions)
        if found.topic != self._topic or found.partitions != self._partitions:
            raise SystemExit(
                f"{self.root} archives {found.topic} ({found.partitions} partitions), "
                f"not {self._topic} ({self._partitions})"
            )
        return found

    async def backlog(self, cutoff_ms: int) -> tuple[dict[int, int], int]:
        """The log ends now, and how many entries lie between the watermarks and them (an
        upper bound of what this run archives)."""
        ends = await self._source.end_offsets()
        manifest = self.manifest()
        return ends, sum(max(0, ends[p] - manifest.watermark(p)) for p in ends)

    async def run(self, cutoff_ms: int, ends: dict[int, int] | None = None) -> RunSummary:
        """Archive everything older than ``cutoff_ms`` (Unix ms) up to the log end."""
        started = time.monotonic()
        summary = RunSummary()
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.manifest()
        self.remove_unlisted(manifest)
        if manifest.pending is not None:
            await self._chunk(manifest, manifest.pending, summary)
        ends = ends if ends is not None else await self._source.end_offsets()
        stopped: set[int] = set()  # partitions that reached the cutoff in this run
        while True:
            starts = {
                p: manifest.watermark(p)
                for p in range(self._partitions)
                if p not in stopped and manifest.watermark(p) < ends.get(p, 0)
            }
            if not starts:
                break
            chunk = Chunk(
                id=f"c{manifest.next_chunk:06d}",
                ranges={},
                cutoff_ms=cutoff_ms,
                created_at=datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="seconds"),
            )
            builder, stops, cut = await self._collect(starts, ends, cutoff_ms, self._chunk_events)
            stopped |= cut
            chunk.ranges = {p: (starts[p], stops[p]) for p in sorted(starts) if stops[p] > starts[p]}
            if not chunk.ranges:
                break
            self._maybe_fault("read", chunk)
            manifest.pending = chunk
            manifest.next_chunk += 1
            save(self.root, manifest)
            await self._chunk(manifest, chunk, summary, builder)
        update_index(self.root, manifest)
        summary.seconds = time.monotonic() - started
        return summary

    async def _collect(
        self, starts: dict[int, int], ends: dict[int, int], cutoff_ms: int | None, limit: int
    ) -> tuple[RowBuilder, dict[int, int], set[int]]:
        """Read partitions one after the other, in partition order, so that the same watermarks,
        cutoff and chunk size always make the same chunk."""
        builder = RowBuilder()
        stops = dict(starts)
        cut: set[int] = set()
        for p in sorted(starts):
            if builder.count >= limit:
                break
            full = False
            reader = self._source.read({p: starts[p]}, {p: ends[p]})
            async for batch in reader:
                entries = [e for e in batch if e.partition == p and stops[p] <= e.offset < ends[p]]
                taken, reached_cutoff = builder.add_batch(entries, cutoff_ms, limit - builder.count)
                if taken:
                    stops[p] = entries[taken - 1].offset + 1
                if reached_cutoff:
                    cut.add(p)
                elif taken < len(entries):
                    full = True
                if self._on_progress is not None:
                    self._on_progress(builder.count)
                if full or p in cut:
                    break
            await reader.aclose()  # type: ignore[attr-defined]
            if not full and p not in cut:
                # The partition reached its end (offsets may skip, e.g. control records).
                stops[p] = ends[p]
        return builder, stops, cut

    async def _chunk(
        self, manifest: Manifest, chunk: Chunk, summary: RunSummary, builder: RowBuilder | None = None
    ) -> None:
        if builder is None:  # a re-run of a pending chunk: exactly its ranges, no cutoff
            starts = {p: r[0] for p, r in chunk.ranges.items()}
            ends = {p: r[1] for p, r in chunk.ranges.items()}
            builder, stops, _ = await self._collect(starts, ends, None, 1 << 62)
            if stops != ends:
                raise RuntimeError(f"chunk {chunk.id}: the log no longer holds its ranges")
        staging = self.root / STAGING / chunk.id
        shutil.rmtree(staging, ignore_errors=True)
        written: list[tuple[str, str, str, pa.Table]] = []
        for table_name, day, table in builder.tables():
            rel = file_path(table_name, day, chunk.id)
            write_file(table, staging / rel)
            written.append((rel, table_name, day, table))
        self._maybe_fault("staged", chunk)
        for i, (rel, *_) in enumerate(written):
            rename_into_place(staging / rel, self.root / rel)
            if i == 0:
                self._maybe_fault("renamed-one", chunk)
        self._maybe_fault("renamed", chunk)
        entries: dict[str, FileEntry] = {}
        total = 0
        counts: dict[str, int] = dict.fromkeys(TABLES, 0)
        for rel, table_name, day, table in written:
            entry = verify_file(self.root / rel, table_name, table)
            entry.day, entry.chunks = day, [chunk.id]
            entries[rel] = entry
            total += entry.rows
            counts[table_name] += entry.rows
        if total != builder.count:
            raise RuntimeError(f"chunk {chunk.id}: {total} rows in files, {builder.count} events read")
        self._maybe_fault("verified", chunk)
        chunk.events = builder.count
        chunk.counts = {t: n for t, n in counts.items() if n}
        chunk.files = sorted(entries)
        manifest.chunks.append(chunk)
        manifest.files.update(entries)
        for p, (_, end) in chunk.ranges.items():
            manifest.watermarks[p] = max(manifest.watermark(p), end)
        manifest.pending = None
        save(self.root, manifest)
        shutil.rmtree(staging, ignore_errors=True)
        summary.events += builder.count
        summary.chunks += 1
        summary.files += len(entries)
        summary.bytes += sum(e.bytes for e in entries.values())
        for t, n in chunk.counts.items():
            summary.tables[t] = summary.tables.get(t, 0) + n

    def remove_unlisted(self, manifest: Manifest) -> list[str]:
        """Delete staging folders and files no manifest lists (left by a crash). Safe while
        readers run: they only open files the manifest lists."""
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
        removed = []
        for path in sorted((self.root / "_index").glob("*.parquet")):
            if manifest.index is None or path.relative_to(self.root).as_posix() != manifest.index.path:
                path.unlink()
                removed.append(path.name)
        for table in TABLES:
            for path in sorted((self.root / table).glob("day=*/*.parquet")):
                rel = path.relative_to(self.root).as_posix()
                if rel not in manifest.files:
                    path.unlink()
                    removed.append(rel)
        return removed

    def _maybe_fault(self, point: str, chunk: Chunk) -> None:
        if self._fault and self._fault == f"{point}@{int(chunk.id[1:])}":
            os.kill(os.getpid(), signal.SIGKILL)
