"""The archive job against the real Kafka: what it archives, that re-running changes nothing,
that a kill at any point of a chunk loses nothing and shows no half file, and the analyst's
SQL command."""

from __future__ import annotations

import itertools
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from archive.manifest import load
from archive.reader import ArchiveReader
from events import GroupCreated, MembersAdded, MessageSent, ReceiptRecorded
from tests.integration.archive_support import ROOT, Log, make_log, tree
from tidings.settings import Settings


@pytest.fixture(scope="module")
def log(services: Settings) -> Iterator[Log]:
    yield from make_log(services, old=3000, recent=300)


def test_archives_every_old_event_once_and_stops_at_the_cutoff(log: Log, tmp_path: Path) -> None:
    summary = log.archive(tmp_path, chunk_events=700)
    old = log.old
    assert summary.events == len(old) and summary.chunks == 5
    manifest = load(tmp_path)
    assert manifest is not None and manifest.pending is None
    # Chunks tile each partition from offset 0 without gaps or overlaps.
    for p in range(3):
        ranges = [c.ranges[p] for c in manifest.chunks if p in c.ranges]
        assert ranges[0][0] == 0
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert manifest.watermarks[p] == ranges[-1][1]
    reader = ArchiveReader(tmp_path)
    messages = reader.sql("SELECT message_id, conversation_id, body, epoch_ms(ts) AS ts FROM messages")
    expected = {(e.message_id, e.conversation_id, e.body, e.ts) for e in old if isinstance(e, MessageSent)}
    got = set(zip(*(messages[c].to_pylist() for c in messages.column_names), strict=True))
    assert got == expected and messages.num_rows == len(expected)
    receipts = reader.sql("SELECT count(*) AS n FROM receipts")["n"][0].as_py()
    assert receipts == sum(isinstance(e, ReceiptRecorded) for e in old)
    membership = reader.sql("SELECT count(*) AS n FROM membership")["n"][0].as_py()
    assert membership == sum(isinstance(e, GroupCreated | MembersAdded) for e in old)
    assert not any(e.ts >= log.cutoff_ms for e in old)

    # A second run archives nothing and changes no byte.
    before, manifest_bytes = tree(tmp_path), (tmp_path / "manifest.json").read_bytes()
    again = log.archive(tmp_path, chunk_events=700)
    assert again.events == 0
    assert tree(tmp_path) == before and (tmp_path / "manifest.json").read_bytes() == manifest_bytes


def _without_times(path: Path) -> str:
    # When the run happened and the cutoff it computed from the clock are all that may differ.
    return re.sub(r'"(created_at|cutoff_ms)": [^,\n]*', "", (path / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(log: Log, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive of an uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    log.archive(root, chunk_events=700, compact_after=True)
    return root


# staged: half-written files in staging; renamed-one: one file of the chunk in place but not
# listed; verified: all in place and verified, the manifest not yet updated.
@pytest.mark.parametrize("point", ["staged@2", "renamed-one@3", "verified@2"])
def test_killed_mid_chunk_and_rerun_gives_the_same_files(
    log: Log, reference: Path, tmp_path: Path, point: str
) -> None:
    crashed = tmp_path / "crashed"
    killed = log.cli(
        crashed, "archive", "run", TIDINGS_ARCHIVE_CHUNK_EVENTS="700", TIDINGS_ARCHIVE_FAULT=point
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # What a reader can see after the crash is complete: every listed file opens, and its
    # row count is the manifest's.
    manifest = load(crashed)
    assert manifest is not None
    for rel, entry in manifest.files.items():
        assert pq.ParquetFile(crashed / rel).metadata.num_rows == entry.rows
    assert len(manifest.chunks) == int(point[-1]) - 1 and manifest.pending is not None

    rerun = log.cli(crashed, "archive", "run", TIDINGS_ARCHIVE_CHUNK_EVENTS="700")
    assert rerun.returncode == 0, rerun.stderr
    assert tree(crashed) == tree(reference)
    assert _without_times(crashed) == _without_times(reference)
    assert not list((crashed / "_staging").rglob("*.parquet"))


def test_sql_command_prints_csv_without_any_service(log: Log, tmp_path: Path) -> None:
    log.archive(tmp_path, chunk_events=10_000)
    # Point every service at a closed port: the command must not need them.
    result = log.cli(
        tmp_path,
        "archive",
        "sql",
        "SELECT kind, count(*) AS n FROM messages GROUP BY kind",
        "--format",
        "csv",
        TIDINGS_KAFKA_BOOTSTRAP="127.0.0.1:1",
        TIDINGS_CASSANDRA_PORT="1",
        TIDINGS_REDIS_PORT="1",
    )
    assert result.returncode == 0, result.stderr
    expected = sum(isinstance(e, MessageSent) for e in log.old)
    assert result.stdout.splitlines() == ['"kind","n"', f'"text",{expected}']


def test_the_queries_in_docs_archive_md_run_as_written(log: Log, tmp_path: Path) -> None:
    log.archive(tmp_path, chunk_events=10_000)
    reader = ArchiveReader(tmp_path)
    doc = (ROOT / "docs" / "archive.md").read_text()
    queries = re.findall(r"```sql\n(.*?)```", doc, flags=re.S)
    assert len(queries) >= 10
    for query in queries:
        result = reader.sql(query)
        assert result.num_rows > 0, query
