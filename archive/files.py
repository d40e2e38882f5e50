"""Writing one archive file: the same Parquet options for every file (so the same rows always
give the same bytes), fsynced, renamed into place, and read back to verify (``archive.job``'s
rules 3 and 4; compaction and the conversation index write their files the same way)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from archive.manifest import FileEntry, fsync_dir
from archive.tables import ID_COLUMN

# Same options for every file, so the same rows always give the same bytes.
WRITE_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "row_group_size": 16_384,
    "write_statistics": True,
    "use_dictionary": True,
    # Lets a reader skip a row group that does not hold a conversation even when its min/max
    # range does: what keeps "newest 50 of a quiet conversation" fast over many files.
    "bloom_filter_options": {"conversation_id": {"ndv": 16_384, "fpp": 0.02}},
}


def write_file(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **WRITE_OPTIONS)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def rename_into_place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    fsync_dir(dst.parent)


def id_range(table_name: str, table: pa.Table) -> tuple[int, int]:
    col = table[ID_COLUMN[table_name]]
    mm = pc.min_max(col)
    return int(mm["min"].as_py()), int(mm["max"].as_py())


def verify_file(path: Path, table_name: str, expected: pa.Table) -> FileEntry:
    """Read a renamed file back; raise if it is not what was written."""
    written = pq.ParquetFile(path).read(columns=[ID_COLUMN[table_name], "kafka_partition", "kafka_offset"])
    if written.num_rows != expected.num_rows:
        raise RuntimeError(f"{path}: {written.num_rows} rows read back, {expected.num_rows} written")
    if id_range(table_name, written) != id_range(table_name, expected):
        raise RuntimeError(f"{path}: id range differs after read-back")
    for col in ("kafka_partition", "kafka_offset"):
        if pc.sum(written[col]).as_py() != pc.sum(expected[col]).as_py():
            raise RuntimeError(f"{path}: {col} differs after read-back")
    lo, hi = id_range(table_name, written)
    return FileEntry(table_name, "", written.num_rows, path.stat().st_size, lo, hi, [])
