"""Readers while the archive changes under them: they never fail and never see a partial
file or a half-applied compaction (a count is never more than the truth, and once the job is
done every answer is exact)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from archive.compact import compact
from archive.manifest import load
from archive.reader import ArchiveReader
from events import MessageSent
from tests.integration.archive_support import Log, make_log
from tidings.settings import Settings


@pytest.fixture(scope="module")
def log(services: Settings) -> Iterator[Log]:
    yield from make_log(services, old=2500, recent=10, seed=7)


class Readers:
    def __init__(self, reader: ArchiveReader, checks: list[Callable[[ArchiveReader], None]]) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.rounds = Counter[int]()
        self.threads = [
            threading.Thread(target=self._loop, args=(i, reader, check), daemon=True)
            for i, check in enumerate(checks)
        ]

    def _loop(self, i: int, reader: ArchiveReader, check: Callable[[ArchiveReader], None]) -> None:
        while not self.stop.is_set():
            try:
                check(reader)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
                return
            self.rounds[i] += 1

    def __enter__(self) -> Readers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def test_concurrent_readers_during_archiving_and_compaction_never_fail(log: Log, tmp_path: Path) -> None:
    messages = [e for e in log.old if isinstance(e, MessageSent)]
    busiest, _ = Counter(e.conversation_id for e in messages).most_common(1)[0]
    mine = sorted(e.message_id for e in messages if e.conversation_id == busiest)
    newest = [str(m) for m in mine[-50:]]
    reader = ArchiveReader(tmp_path)

    def page_is_a_true_suffix(r: ArchiveReader) -> None:
        ids = [m["message_id"] for m in r.page_sync(busiest, before=None, after=None, limit=50)]
        # While chunks arrive the archive holds a prefix of each partition's log.
        assert ids == sorted(ids, key=int) and set(ids) <= {str(m) for m in mine}

    def count_never_exceeds(r: ArchiveReader) -> None:
        assert r.sql("SELECT count(*) AS n FROM messages")["n"][0].as_py() <= len(messages)

    with Readers(reader, [page_is_a_true_suffix, count_never_exceeds, page_is_a_true_suffix]) as readers:
        log.archive(tmp_path, chunk_events=100)  # many chunks, many small files
    assert not readers.errors, readers.errors
    manifest = load(tmp_path)
    assert manifest is not None
    files_before = len(manifest.files)

    def exact_page(r: ArchiveReader) -> None:
        ids = [m["message_id"] for m in r.page_sync(busiest, before=None, after=None, limit=50)]
        assert ids == newest

    def exact_count(r: ArchiveReader) -> None:
        assert r.sql("SELECT count(*) AS n FROM messages")["n"][0].as_py() == len(messages)

    def exact_forward(r: ArchiveReader) -> None:
        ids = [int(m["message_id"]) for m in r.page_sync(busiest, before=None, after=mine[0], limit=100)]
        assert ids == mine[1:101]

    with Readers(ArchiveReader(tmp_path), [exact_page, exact_count, exact_forward]) as readers:
        summary = compact(tmp_path)
    assert not readers.errors, readers.errors
    assert all(readers.rounds[i] > 0 for i in range(3)), readers.rounds
    manifest = load(tmp_path)
    assert manifest is not None
    assert summary.files_before > summary.files_after and len(manifest.files) < files_before
    # Every file on disk is listed, and every listed file is on disk (the conversation index
    # included).
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet")}
    assert manifest.index is not None
    assert on_disk == {*manifest.files, manifest.index.path}
