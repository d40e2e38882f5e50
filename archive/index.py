"""The conversation index of the messages table: which file holds which conversation, and the
range of its ids there, in one small sorted Parquet file (``_index/messages-<n>.parquet``).

History opens the index first (one row group, found by its statistics) and then only the files
that hold the conversation, instead of probing every file of the archive. The index is rebuilt
incrementally at the end of each archive run and compaction: rows of files still listed are
kept, rows of new files are added. It is written like any other file (staging, rename,
manifest) and the manifest says which files it covers; a reader probes files it does not cover
as before, so a stale or missing index only costs speed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa

from archive.files import rename_into_place, write_file
from archive.manifest import STAGING, IndexEntry, Manifest, save
from archive.tables import MESSAGES

INDEX_SCHEMA = pa.schema(
    [
        pa.field("conversation_id", pa.string(), False),
        pa.field("file", pa.string(), False),
        pa.field("rows", pa.int64(), False),
        pa.field("min_id", pa.int64(), False),
        pa.field("max_id", pa.int64(), False),
    ]
)


def _literal(items: list[str]) -> str:
    return "[" + ", ".join("'" + i.replace("'", "''") + "'" for i in items) + "]"


def update_index(root: Path, manifest: Manifest) -> bool:
    """Bring the index up to the manifest's messages files; returns whether it changed. The
    caller holds the writer lock and has saved the manifest it passes."""
    files = [rel for rel, _ in manifest.files_of(MESSAGES)]
    old = manifest.index
    if old is not None and sorted(old.files) == files:
        return False
    covered = set(old.files) if old is not None else set()
    kept = [f for f in files if f in covered]
    added = [f for f in files if f not in covered]
    parts = []
    if old is not None and kept:
        parts.append(
            f"SELECT * FROM read_parquet('{root / old.path}') WHERE file IN (SELECT unnest({_literal(kept)}))"
        )
    if added:
        prefix = str(root).rstrip("/") + "/"
        parts.append(
            "SELECT conversation_id, replace(filename, '" + prefix.replace("'", "''") + "', '') AS file,"
            " count(*) AS rows, min(message_id) AS min_id, max(message_id) AS max_id"
            f" FROM read_parquet({_literal([str(root / f) for f in added])}, filename = true) GROUP BY ALL"
        )
    name = f"_index/messages-{manifest.next_index:06d}.parquet"
    manifest.next_index += 1
    if parts:
        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false").fetchall()
        try:
            table = con.sql(" UNION ALL ".join(parts)).to_arrow_table()
        finally:
            con.close()
        table = table.cast(INDEX_SCHEMA).sort_by([("conversation_id", "ascending"), ("file", "ascending")])
        staged = root / STAGING / name
        write_file(table, staged)
        rename_into_place(staged, root / name)
        manifest.index = IndexEntry(path=name, files=files)
    else:
        manifest.index = None
    save(root, manifest)
    if old is not None:
        (root / old.path).unlink(missing_ok=True)
    shutil.rmtree(root / STAGING / "_index", ignore_errors=True)
    return True
