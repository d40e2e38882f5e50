"""The archive's manifest: the one file that says what the archive holds.

``manifest.json`` in the archive folder lists every verified chunk (its per-partition offset
ranges, counts and files), every live file (rows, bytes, id range), the per-partition
watermark (the next offset to archive: everything below it is in verified Parquet, so the log
below it may be deleted), the prune watermark (Cassandra ``messages`` and sync log rows below it
are gone), the prune in progress (``pruning``: rows below it may be going now), and the chunk in
progress (``pending``), whose exact ranges a re-run repeats.

It is only ever replaced whole, by writing a temporary file, fsyncing it and renaming it over
the old one, so a reader sees the old or the new manifest, never half of one. Readers list
files from it, never from a directory walk, so they never see a file that is still being
written or verified.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

MANIFEST = "manifest.json"
STAGING = "_staging"
VERSION = 1


@dataclass
class FileEntry:
    table: str
    day: str
    rows: int
    bytes: int
    min_id: int
    max_id: int
    chunks: list[str]


@dataclass
class Chunk:
    id: str
    # partition -> [first offset, end offset) as strings in JSON
    ranges: dict[int, tuple[int, int]]
    cutoff_ms: int
    events: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    created_at: str = ""


@dataclass
class IndexEntry:
    path: str  # relative to the archive folder
    files: list[str]  # the messages files it covers


@dataclass
class Manifest:
    topic: str
    partitions: int
    watermarks: dict[int, int] = field(default_factory=dict)
    prune_watermarks: dict[int, int] = field(default_factory=dict)
    # The prune in progress: per partition, the offset below which it is deleting warm rows.
    pruning: dict[int, int] = field(default_factory=dict)
    chunks: list[Chunk] = field(default_factory=list)
    files: dict[str, FileEntry] = field(default_factory=dict)
    pending: Chunk | None = None
    next_chunk: int = 1
    next_compaction: int = 1
    index: IndexEntry | None = None
    next_index: int = 1
    version: int = VERSION

    def watermark(self, partition: int) -> int:
        return self.watermarks.get(partition, 0)

    def files_of(self, table: str) -> list[tuple[str, FileEntry]]:
        return sorted((p, f) for p, f in self.files.items() if f.table == table)

    def to_json(self) -> bytes:
        data = asdict(self)
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data: dict[str, Any] = orjson.loads(raw)
        if data.get("version") != VERSION:
            raise ValueError(f"unknown archive manifest version {data.get('version')}")

        def chunk(c: dict[str, Any]) -> Chunk:
            ranges = {int(p): (int(r[0]), int(r[1])) for p, r in c.pop("ranges").items()}
            return Chunk(ranges=ranges, **c)

        return cls(
            topic=data["topic"],
            partitions=data["partitions"],
            watermarks={int(p): o for p, o in data["watermarks"].items()},
            prune_watermarks={int(p): o for p, o in data["prune_watermarks"].items()},
            pruning={int(p): o for p, o in data.get("pruning", {}).items()},
            chunks=[chunk(c) for c in data["chunks"]],
            files={p: FileEntry(**f) for p, f in data["files"].items()},
            pending=chunk(data["pending"]) if data.get("pending") else None,
            next_chunk=data["next_chunk"],
            next_compaction=data["next_compaction"],
            index=IndexEntry(**data["index"]) if data.get("index") else None,
            next_index=data.get("next_index", 1),
        )


def load(root: Path) -> Manifest | None:
    try:
        return Manifest.from_json((root / MANIFEST).read_bytes())
    except FileNotFoundError:
        return None


def save(root: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically and durably."""
    write_atomic(root / MANIFEST, manifest.to_json())


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """One writer at a time (archive run, compact, prune); readers need no lock."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another archive job holds {root / '.lock'}") from None
        yield
