"""Small-file compaction: the files of one ``(table, day)`` partition are merged into one, so
the number of files a query opens stays near one per day however many chunks wrote the day.

Per partition: write the merged file to staging, rename it into place, read it back and
verify its rows and id range against its inputs, replace the inputs by it in the manifest
(atomically); the inputs are deleted at the end of the compaction. Readers that listed an
input before re-read the manifest when it is gone (``archive.reader``). A crash leaves either the old files
listed (and the new one unlisted, deleted by the next job) or the new one listed (and the old
ones unlisted, deleted likewise).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from archive.files import id_range, rename_into_place, verify_file, write_file
from archive.index import update_index
from archive.manifest import STAGING, FileEntry, Manifest, load, save
from archive.tables import SCHEMAS, SORT_KEYS, file_path


@dataclass
class CompactSummary:
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0


def compact(
    root: Path,
    *,
    min_files: int = 2,
    max_rows: int = 5_000_000,
    on_merged: Callable[[str], None] | None = None,
) -> CompactSummary:
    """Merge every partition with at least ``min_files`` files (up to ``max_rows`` rows per
    output file). The caller holds the archive's writer lock."""
    summary = CompactSummary()
    manifest = load(root)
    if manifest is None:
        return summary
    replaced: list[str] = []
    groups: dict[tuple[str, str], list[tuple[str, FileEntry]]] = {}
    for rel, entry in sorted(manifest.files.items()):
        groups.setdefault((entry.table, entry.day), []).append((rel, entry))
    for (table_name, day), files in sorted(groups.items()):
        batch: list[tuple[str, FileEntry]] = []
        for item in [*files, None]:
            if item is not None and (not batch or sum(f.rows for _, f in batch) + item[1].rows <= max_rows):
                batch.append(item)
                continue
            if len(batch) >= min_files:
                replaced += _merge(root, manifest, table_name, day, batch)
                summary.partitions += 1
                summary.files_before += len(batch)
                summary.files_after += 1
                if on_merged is not None:
                    on_merged(f"{table_name}/day={day}: {len(batch)} files")
            batch = [item] if item is not None else []
    update_index(root, manifest)
    # The inputs go last, all at once: a reader that listed them before the manifest changed
    # finishes or retries once, not once per merged partition.
    for old in replaced:
        (root / old).unlink(missing_ok=True)
    return summary


def _merge(
    root: Path, manifest: Manifest, table_name: str, day: str, files: list[tuple[str, FileEntry]]
) -> list[str]:
    """Merge ``files`` into one and list it instead of them; returns the files to delete."""
    name = f"k{manifest.next_compaction:06d}"
    manifest.next_compaction += 1
    # Files written before a column was added lack it: it is null in their rows.
    merged = pa.concat_tables(
        [pq.ParquetFile(root / rel).read() for rel, _ in files], promote_options="default"
    ).select(SCHEMAS[table_name].names)
    merged = merged.sort_by(SORT_KEYS[table_name])
    rel = file_path(table_name, day, name)
    staged = root / STAGING / name / rel
    write_file(merged, staged)
    rename_into_place(staged, root / rel)
    entry = verify_file(root / rel, table_name, merged)
    if entry.rows != sum(f.rows for _, f in files) or id_range(table_name, merged) != (
        min(f.min_id for _, f in files),
        max(f.max_id for _, f in files),
    ):
        raise RuntimeError(f"{rel}: merged file does not hold its inputs")
    entry.day = day
    entry.chunks = sorted({c for _, f in files for c in f.chunks})
    for old, _ in files:
        del manifest.files[old]
    manifest.files[rel] = entry
    for chunk in manifest.chunks:
        if set(chunk.files) & {old for old, _ in files}:
            chunk.files = sorted({rel if f in {old for old, _ in files} else f for f in chunk.files})
    save(root, manifest)
    shutil.rmtree(root / STAGING / name, ignore_errors=True)
    return [old for old, _ in files]
