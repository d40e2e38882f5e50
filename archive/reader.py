"""Reading the archive with DuckDB: the tables as views, the history query of the cold tier,
and ad-hoc SQL for analysts.

Files are listed from the manifest, never by walking folders, so a reader never opens a file
that is still being written or verified. A compaction may delete a file a reader listed a
moment earlier: the reader then re-reads the manifest and tries again (files are immutable
and never change under a name; only whole files appear and disappear).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import duckdb
import pyarrow as pa

from archive.manifest import MANIFEST, Manifest, load
from archive.tables import SCHEMAS, TABLES, sql_columns
from events.rows import MESSAGE_OBJECT_COLUMNS, message_object

T = TypeVar("T")
_RETRIES = 20

_COLUMNS = sql_columns(MESSAGE_OBJECT_COLUMNS)


# Messages with their media, one row per message carrying media: the media reference each
# archived message keeps (its `media` JSON), as columns to join and group by.
MESSAGE_MEDIA = """
SELECT conversation_id, message_id, sender_id, kind, ts, day,
       json_extract_string(media, '$.media_id') AS media_id,
       json_extract_string(media, '$.content_type') AS content_type,
       CAST(json_extract(media, '$.size') AS BIGINT) AS size,
       json_extract_string(media, '$.sha256') AS sha256,
       CAST(json_extract(media, '$.width') AS INTEGER) AS width,
       CAST(json_extract(media, '$.height') AS INTEGER) AS height
FROM messages WHERE media IS NOT NULL
"""


def _literal_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _empty_view(table: str) -> str:
    con = duckdb.connect()
    try:
        empty = pa.Table.from_pylist([], schema=SCHEMAS[table])
        con.register("e", empty)
        described = con.execute("SELECT column_name, column_type FROM (DESCRIBE e)").fetchall()
    finally:
        con.close()
    cols = ", ".join(f'CAST(NULL AS {typ}) AS "{name}"' for name, typ in described)
    return f"SELECT {cols}, CAST(NULL AS DATE) AS day WHERE false"


class _Range(NamedTuple):
    min_id: int
    max_id: int


class ArchiveReader:
    """One per process. Thread-safe: every query runs on its own DuckDB cursor."""

    def __init__(self, root: Path, *, threads: int | None = None) -> None:
        self.root = root
        self._db = duckdb.connect(":memory:")
        # Footers of immutable files are read once, not per query.
        self._db.execute("SET parquet_metadata_cache = true").fetchall()
        self._db.execute("SET enable_progress_bar = false").fetchall()
        if threads:
            self._db.execute(f"SET threads = {int(threads)}")
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._manifest: Manifest | None = None
        self._empty: dict[str, str] = {}

    # -- manifest ----------------------------------------------------------------------
    def manifest(self, *, fresh: bool = False) -> Manifest | None:
        """The current manifest (re-read when the file changed), or ``None`` if none yet."""
        try:
            st = os.stat(self.root / MANIFEST)
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_ino)
        with self._lock:
            if fresh or stamp != self._stamp:
                self._manifest, self._stamp = load(self.root), stamp
            return self._manifest

    def retrying(self, query: Callable[[Manifest | None], T]) -> T:
        """Run ``query`` on the current manifest; again on a fresh one when a file it listed
        was removed meanwhile (a compaction)."""
        for attempt in range(_RETRIES):
            manifest = self.manifest(fresh=attempt > 0)
            try:
                return query(manifest)
            except duckdb.IOException:
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.002 * attempt)
        raise AssertionError("unreachable")

    def paths(self, manifest: Manifest | None, table: str) -> list[str]:
        if manifest is None:
            return []
        return [str(self.root / rel) for rel, _ in manifest.files_of(table)]

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own (one per thread or per concurrent result)."""
        return self._db.cursor()

    # -- views ---------------------------------------------------------------------------
    def view_sql(self, manifest: Manifest | None, table: str) -> str:
        paths = self.paths(manifest, table)
        if not paths:
            if table not in self._empty:
                self._empty[table] = _empty_view(table)
            return self._empty[table]
        # union_by_name: files written before a column was added give nulls for it.
        options = "hive_partitioning = true, union_by_name = true"
        return f"SELECT * FROM read_parquet({_literal_list(paths)}, {options})"

    def cursor_with_views(self, manifest: Manifest | None) -> duckdb.DuckDBPyConnection:
        cur = self._db.cursor()
        for table in TABLES:
            cur.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {self.view_sql(manifest, table)}")
        cur.execute(f"CREATE OR REPLACE TEMP VIEW message_media AS {MESSAGE_MEDIA}")
        return cur

    def sql(self, query: str) -> pa.Table:
        """Run an analyst's query with the archive's tables as views; the result as Arrow."""

        def run(manifest: Manifest | None) -> pa.Table:
            cur = self.cursor_with_views(manifest)
            try:
                return cur.sql(query).to_arrow_table()
            finally:
                cur.close()

        return self.retrying(run)

    # -- history (the cold tier) ---------------------------------------------------------
    def page_sync(
        self, conversation_id: str, *, before: int | None, after: int | None, limit: int
    ) -> list[dict[str, Any]]:
        def run(manifest: Manifest | None) -> list[dict[str, Any]]:
            if manifest is None:
                return []
            files = self._files_for(manifest, conversation_id, before=before, after=after)
            if after is not None:
                where, order, bound = "message_id > $bound", "ASC", after
                files.sort(key=lambda pf: pf[1].min_id)
            else:
                where, order, bound = (
                    "message_id < $bound",
                    "DESC",
                    before if before is not None else (1 << 63) - 1,
                )
                files.sort(key=lambda pf: -pf[1].max_id)
            sql = (
                # DISTINCT ON: the log may hold a message twice (a retried append), and so may
                # the archive; a page counts it once.
                f"SELECT DISTINCT ON (message_id) {_COLUMNS} FROM read_parquet($paths, union_by_name = true)"
                f" WHERE conversation_id = $cid AND {where}"
                f" ORDER BY message_id {order} LIMIT $limit"
            )
            params = {"cid": conversation_id, "bound": bound, "limit": limit}
            found = self._read_in_groups(files, sql, params, descending=order == "DESC")
            ids = sorted(found, reverse=order == "DESC")[:limit]
            return [message_object(conversation_id, found[m]) for m in sorted(ids)]

        return self.retrying(run)

    def _files_for(
        self, manifest: Manifest, conversation_id: str, *, before: int | None, after: int | None
    ) -> list[tuple[str, _Range]]:
        """The message files that may hold a message of the page: files whose id range cannot
        are not opened at all; with the conversation index, neither are files that do not
        hold the conversation."""
        ranges = {rel: (f.min_id, f.max_id) for rel, f in manifest.files_of("messages")}
        if manifest.index is not None:
            covered = set(manifest.index.files)
            cur = self._db.cursor()
            try:
                held = cur.execute(
                    "SELECT file, min_id, max_id FROM read_parquet($index) WHERE conversation_id = $cid",
                    {"index": str(self.root / manifest.index.path), "cid": conversation_id},
                ).fetchall()
            finally:
                cur.close()
            # Files the index covers but the manifest no longer lists were merged into a
            # listed file: reading both would count their rows twice.
            listed = set(ranges)
            ranges = {rel: r for rel, r in ranges.items() if rel not in covered}
            ranges.update((rel, (lo, hi)) for rel, lo, hi in held if rel in covered and rel in listed)
        return [
            (str(self.root / rel), _Range(lo, hi))
            for rel, (lo, hi) in ranges.items()
            if (before is None or lo < before) and (after is None or hi > after)
        ]

    def _read_in_groups(
        self, files: list[tuple[str, _Range]], sql: str, params: dict[str, Any], *, descending: bool
    ) -> dict[int, tuple[Any, ...]]:
        """The rows ``sql`` finds, by message id. Newest files first (oldest first reading
        forward), in growing groups: a busy conversation is answered from the newest day's
        file alone, and a quiet one after a few more; stop once no file left can hold a
        message that belongs in the page."""
        limit = params["limit"]
        found: dict[int, tuple[Any, ...]] = {}
        i, group = 0, 1
        cur = self._db.cursor()
        try:
            while i < len(files):
                batch, i, group = files[i : i + group], i + group, group * 4
                for row in cur.execute(sql, {**params, "paths": [p for p, _ in batch]}).fetchall():
                    found[row[0]] = row
                if len(found) < limit or i >= len(files):
                    continue
                edge = sorted(found, reverse=descending)[:limit][-1]
                if (descending and edge > files[i][1].max_id) or (
                    not descending and edge < files[i][1].min_id
                ):
                    break
        finally:
            cur.close()
        return found

    async def page(
        self, conversation_id: str, *, before: int | None, after: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` archived messages, ascending: the oldest newer than ``after`` when
        given, else the newest older than ``before`` (or the newest of all)."""
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.page_sync(conversation_id, before=before, after=after, limit=limit)
        )

    def unpruned_messages(self, manifest: Manifest, batch: int = 20_000) -> Iterator[list[tuple[str, int]]]:
        """``(conversation_id, message_id)`` of archived messages not yet pruned from the warm
        tier, in batches. The caller holds the writer lock (no compaction meanwhile)."""
        for rows in self._unpruned(manifest, ["messages"], "conversation_id, message_id", batch):
            yield [(str(cid), int(mid)) for cid, mid in rows]

    def unpruned_log_buckets(self, manifest: Manifest, bucket_bits: int) -> set[tuple[str, int, int]]:
        """``(conversation_id, partition, offset >> bucket_bits)`` of every archived event not
        yet pruned from the sync log: the sync log partitions holding them."""
        found: set[tuple[str, int, int]] = set()
        columns = f"DISTINCT conversation_id, kafka_partition, kafka_offset >> {int(bucket_bits)}"
        for rows in self._unpruned(manifest, ["messages", "membership", "receipts"], columns, 20_000):
            found.update((str(cid), int(p), int(b)) for cid, p, b in rows)
        return found

    def _unpruned(
        self, manifest: Manifest, tables: list[str], columns: str, batch: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        conds = [
            f"(kafka_partition = {int(p)} AND kafka_offset >= {int(manifest.prune_watermarks.get(p, 0))}"
            f" AND kafka_offset < {int(wm)})"
            for p, wm in sorted(manifest.watermarks.items())
            if wm > manifest.prune_watermarks.get(p, 0)
        ]
        if not conds:
            return
        for table in tables:
            paths = self.paths(manifest, table)
            if not paths:
                continue
            cur = self._db.cursor()
            try:
                cur.execute(
                    f"SELECT {columns} FROM read_parquet($paths, union_by_name = true)"
                    f" WHERE {' OR '.join(conds)}",
                    {"paths": paths},
                )
                while rows := cur.fetchmany(batch):
                    yield rows
            finally:
                cur.close()

    def close(self) -> None:
        self._db.close()
