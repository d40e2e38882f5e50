"""The search read model: one tantivy index shard per partition of the conversation log.

Shards live under ``Settings.search_root / <topic> / p<partition>``; each holds the text
messages of its partition and, beside the index, ``applied.json``: the offset of the last event
the shard has committed. The ``search`` worker role writes them (``SearchIndexer``); a gateway on
the same host opens them read-only (``ShardReaders``) and merges the newest hits.

- Only ``MessageSent`` of kind ``text`` is indexed: media captions, and any kind added later
  (``encrypted``), never are.
- Membership is not in the index: the caller's conversations, read from the membership read
  model at query time, are a filter of each query, so a member who leaves stops finding at once.
- Idempotent: a message is deleted by its id before it is added, and events at or below the
  shard's offset are skipped, so a redelivery after a crash changes nothing.
- The offset is written after the index commit: a crash between the two re-applies a batch
  (harmless), never skips one. An offset gap (a shard missing or older than the group's
  committed offset: a restore, a shard moved to a new disk) is filled from the log first
  (``Backfill``), so the shard never silently misses a message.
"""

from __future__ import annotations

import asyncio
import ctypes
import html
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, Protocol

import orjson
import tantivy

from events import ChatEvent, MessageSent
from events.errors import Unavailable
from projections.adapters.search_schema import (
    APPLIED,
    META,
    PREFIX_FIELD,
    SCHEMA,
    SCHEMA_VERSION,
    WRITER_HEAP,
    analyze,
    fields,
    ngram_query,
    ngram_text,
    open_existing,
    open_index,
    read_applied,
    read_state,
    set_aside,
)
from projections.search_query import Hit, Parsed
from projections.wire import message_object

__all__ = ["APPLIED", "SCHEMA_VERSION", "analyze", "read_applied", "read_state"]

log = logging.getLogger(__name__)

NAME = "search"
SNIPPET_CHARS = 160


def shard_path(root: Path, topic: str, partition: int) -> Path:
    return root / topic / f"p{partition:04d}"


_SHARD_DIR = re.compile(r"p\d{4}")


def _write_applied(path: Path, offset: int) -> None:
    tmp = path / f".{APPLIED}.tmp"
    with open(tmp, "w") as out:
        out.write(json.dumps({"offset": offset, "schema": SCHEMA_VERSION}))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path / APPLIED)


def commit_interval(lateness_s: float, interval_s: float, most_s: float) -> float:
    """How long a shard waits between commits, given how late its newest events were when they
    reached the indexer (``lateness_s``: their age, from the time in their ids): ``interval_s``
    while it keeps up, half its lateness once that is longer (a catch-up, a backlog: those
    messages' freshness is already lost, and every commit costs a segment), at most ``most_s``.
    So a message is searchable about its lateness plus that wait after its ack: at most 1.5x
    as late as it already was, once that is longer than the interval."""
    return max(interval_s, min(most_s, lateness_s / 2))


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> None:
    """Have glibc's malloc keep the memory tantivy frees (``mallopt``), once per process.

    Every commit ends the shard writer's indexing thread and starts a new one, with a new
    segment writer: its arena and term hash table (megabytes) are allocated, touched and freed
    again. By default glibc gives such blocks back to the kernel (``mmap``/trim), so each
    commit page-faulted them in afresh: ~2,500 faults, 7 ms of system CPU per commit measured
    here. A fixed mmap threshold of 32 MiB (glibc's largest) and a trim threshold of 512 MiB
    keep them in the heap for the next commit. Not glibc (musl, macOS): nothing to do."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 512 * 2**20)


def _lateness(events: Sequence[tuple[int, ChatEvent]]) -> float | None:
    """How old the newest of ``events`` is now, in seconds (None: none carries a time)."""
    newest = max((ts for _, e in events if isinstance(ts := getattr(e, "ts", None), int)), default=None)
    return None if newest is None else time.time() - newest / 1000


def indexable(event: ChatEvent) -> bool:
    return isinstance(event, MessageSent) and event.kind == "text" and bool(event.body)


class Shard:
    """The writing side of one partition's index (only the ``search`` role holds one).

    ``seen`` is the last offset added, ``applied`` the last one committed (and on disk). Commits
    are what cost (a segment each), so they are batched in time (``SearchIndexer``); the log
    keeps what a crash loses before the next commit, and ``Backfill`` reads it again.
    ``lateness`` is how old the newest events added were when they came (seconds), which sets
    how long the shard waits before its next commit (``commit_interval``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        applied, version = read_state(path)
        if version is not None and version != SCHEMA_VERSION:
            # Written by other code: set aside, and this one starts empty at offset -1, so
            # the first batch's gap check fills it from the start of the log.
            set_aside(path, version)
            applied = -1
        self.index = open_index(path)
        self.writer = self.index.writer(heap_size=WRITER_HEAP, num_threads=1)
        self.applied = applied
        self.seen = self.applied
        # A shard that has not committed for an interval commits its next batch at once: a quiet
        # conversation's message is searchable as soon as it is indexed.
        self.committed_at = float("-inf")
        self.lateness = 0.0
        # Since the last commit: the messages added (an offset-only advance need not be
        # searchable, only durable some time), when the first of them came, and the ack time
        # of the oldest of them (both on the monotonic clock): how long the shard may wait.
        self.docs_pending = 0
        self.pending_since = float("inf")
        self.oldest_ack = float("inf")
        self.commits = 0  # index commits made (tests, benchmarks)
        # The largest message id in the shard (committed, or added since): a message with a
        # larger id cannot be in it yet, so it needs no delete before its add.
        self.newest_id = self._newest_committed_id()
        self.lock = threading.Lock()

    def _newest_committed_id(self) -> int:
        searcher = self.index.searcher()
        if searcher.num_docs == 0:
            return -1
        result = searcher.search(tantivy.Query.all_query(), 1, count=False, order_by_field="message_id")
        return max((int(key) for key, _ in result.hits), default=-1)

    def add(self, events: Sequence[tuple[int, ChatEvent]]) -> int:
        """Index ``(offset, event)`` past ``seen`` (not yet committed); how many were messages."""
        with self.lock:
            fresh = [(offset, event) for offset, event in events if offset > self.seen]
            # An upsert: the batch's ids that may be in the shard already (a redelivery, a
            # duplicate on the log, an id older than the shard's newest) are deleted, in one
            # query, then every message is added once (the last copy of an id wins). Ids above
            # the shard's newest, most of them (ids grow with time), skip the delete: each
            # delete query runs against every segment of the shard at the next commit. By
            # query: a term made from a Python int is an i64 term, never matching this u64 field.
            messages = {e.message_id: e for _, e in fresh if isinstance(e, MessageSent) and indexable(e)}
            maybe_there = [mid for mid in messages if mid <= self.newest_id]
            if maybe_there:
                self.writer.delete_documents_by_query(
                    tantivy.Query.term_set_query(SCHEMA, "message_id", maybe_there)
                )
            if messages:
                self.newest_id = max(self.newest_id, *messages)
            added = 0
            if messages and not self.docs_pending:
                now = time.monotonic()
                self.pending_since = now
                age = max(0.0, time.time() - min(e.ts for e in messages.values()) / 1000)
                self.oldest_ack = now - age
            for event in messages.values():
                wire = message_object(event)
                del wire["body"]
                doc = tantivy.Document()
                doc.add_text("body", event.body)
                grams = ngram_text(analyze(event.body))
                if grams:
                    doc.add_text(PREFIX_FIELD, grams)
                doc.add_text("conversation_id", event.conversation_id)
                doc.add_unsigned("message_id", event.message_id)
                doc.add_bytes("message", orjson.dumps(wire))
                self.writer.add_document(doc)
                added += 1
            self.docs_pending += added
            if fresh:
                self.seen = fresh[-1][0]
                lateness = _lateness(fresh)
                if lateness is not None:
                    self.lateness = lateness
            return added

    def commit(self) -> None:
        """Make what was added searchable and durable, then record its offset."""
        with self.lock:
            self.committed_at = time.monotonic()
            if self.seen == self.applied:
                return
            self.writer.commit()
            _write_applied(self.path, self.seen)
            self.applied = self.seen
            self.commits += 1
            self.docs_pending = 0
            self.pending_since = self.oldest_ack = float("inf")

    def apply(self, events: Sequence[tuple[int, ChatEvent]]) -> int:
        added = self.add(events)
        self.commit()
        return added

    def close(self) -> None:
        self.commit()
        self.writer.wait_merging_threads()


class Backfill(Protocol):
    def read(self, partition: int, start: int, end: int) -> AsyncGenerator[list[tuple[int, ChatEvent]], None]:
        """The events at offsets ``start`` (or the log's first, if later) up to ``end``
        (exclusive) of ``partition``, in offset order, in lists (a whole partition may not fit
        in memory: a shard rebuilt after a schema change is filled from offset 0)."""


class SearchIndexer:
    """The ``search`` role's stage: each partition's events into that partition's shard,
    committed at most every ``commit_interval_s`` per shard (and at least that often while
    something is pending) while it keeps up, so a message is searchable within about that time.
    Behind (a catch-up, a backlog, a refill), a shard commits less often, up to every
    ``commit_most_s``: every ``commit_interval`` of its newest events' lateness.

    Commits are made by the batches as they come (a shard that is due commits after its batch
    is added) and, for a shard whose last events came when it was not due, by a flusher that
    sleeps until the first pending shard is due (woken when a shard gets its first pending
    events), so no pending shard waits longer than its interval. The due shards of one look
    are committed in one job of the thread pool, one after the other (not together: each
    commit is a burst of CPU, and twelve at once would hold a core for ~0.1 s)."""

    name = NAME

    def __init__(
        self,
        root: Path,
        topic: str,
        backfill: Backfill | None = None,
        *,
        commit_interval_s: float = 0.0,
        commit_most_s: float | None = None,
        commit_age_s: float | None = None,
    ) -> None:
        keep_freed_memory()
        self._root = root
        self._topic = topic
        self._backfill = backfill
        self._interval = commit_interval_s
        # Without a longest interval, the interval is fixed (a rebuild's, the tests').
        self._most = commit_interval_s if commit_most_s is None else max(commit_most_s, commit_interval_s)
        # While caught up, a shard that had news within the interval commits once its oldest
        # pending message is this old (from its ack), not sooner (None: at the interval).
        self._age = commit_age_s
        self._shards: dict[int, Shard] = {}
        self._lock = threading.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.flusher_looks = 0  # the flusher's wake-ups (tests, benchmarks)

    def shard(self, partition: int) -> Shard:
        with self._lock:
            if partition not in self._shards:
                path = shard_path(self._root, self._topic, partition)
                try:
                    self._shards[partition] = Shard(path)
                except (OSError, ValueError) as exc:
                    # Most often another worker on this host still holds the shard's writer
                    # lock (a rebalance in progress): retried, never dead-lettered.
                    raise Unavailable(f"search shard {path}: {exc}") from exc
            return self._shards[partition]

    @property
    def commits(self) -> int:
        """Index commits made by the shards open now (tests, benchmarks)."""
        return sum(shard.commits for shard in list(self._shards.values()))

    def release(self, partitions: Iterable[int]) -> None:
        """Commit and close the shards of ``partitions`` (revoked in a rebalance), so that
        their next owner can open their writers."""
        for partition in partitions:
            with self._lock:
                shard = self._shards.pop(partition, None)
            if shard is not None:
                shard.close()
                del shard.writer  # tantivy frees the writer lock when the writer is dropped

    async def apply_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> None:
        """Add a batch to its partitions' shards and commit those due: one job of the thread
        pool for the whole batch (one hop there and back, whatever the partitions), another
        only to open a shard or to fill a gap from the log (rare)."""
        loop = asyncio.get_running_loop()
        by_partition: dict[int, list[tuple[int, ChatEvent]]] = {}
        for partition, offset, event in events:
            by_partition.setdefault(partition, []).append((offset, event))
        newly_pending = failed = False
        try:
            work: list[tuple[Shard, list[tuple[int, ChatEvent]]]] = []
            for partition, items in by_partition.items():
                shard = self._shards.get(partition)
                if shard is None:
                    shard = await loop.run_in_executor(None, self.shard, partition)
                first = items[0][0]
                if first > shard.seen + 1 and self._backfill is not None:
                    log.warning(
                        "search shard %s is at offset %s, the log delivers %s: filling the gap from the log",
                        partition,
                        shard.seen,
                        first,
                    )
                    newly_pending |= shard.seen == shard.applied
                    async with aclosing(self._backfill.read(partition, shard.seen + 1, first)) as chunks:
                        async for chunk in chunks:
                            await loop.run_in_executor(None, shard.add, chunk)
                            await self._commit_or_retry()
                work.append((shard, items))
            newly_pending |= await loop.run_in_executor(None, self._add_and_commit, work)
        except BaseException:
            failed = True  # what was added before the failure waits for the flusher too
            raise
        finally:
            if self._interval > 0:
                if self._flusher is None:
                    self._wake = asyncio.Event()
                    self._flusher = asyncio.create_task(self._flush_loop())
                elif (newly_pending or failed) and self._wake is not None:
                    # A shard that had nothing pending has now, or its first message: it may
                    # be due before the shard the flusher sleeps for.
                    self._wake.set()

    def _add_and_commit(self, work: Sequence[tuple[Shard, list[tuple[int, ChatEvent]]]]) -> bool:
        """Add each shard's events, then commit the open shards that are due (one job of the
        thread pool); whether a shard's due time moved up: it had nothing pending and has now,
        it had only offsets pending (due at the longest interval) and now has a message, or it
        was behind and its new events are not."""
        newly_pending = False
        now = time.monotonic()
        for shard, items in work:
            before = self.due_in(shard, now)
            shard.add(items)
            after = self.due_in(shard, now)
            newly_pending |= after is not None and (before is None or after < before)
        now = time.monotonic()
        try:
            _commit_all([shard for shard in list(self._shards.values()) if self.due(shard, now)])
        except Exception as exc:
            # A failed commit (a full disk) is retried; the events are already added.
            raise Unavailable(f"search commit: {exc!r}") from exc
        return newly_pending

    async def _commit_or_retry(self) -> None:
        try:
            await self.commit_due()
        except Exception as exc:
            # A failed commit (a full disk) is retried; the events are already added.
            raise Unavailable(f"search commit: {exc!r}") from exc

    def due_in(self, shard: Shard, now: float) -> float | None:
        """In how many seconds ``shard`` is due to commit (<= 0: now); None: nothing pending.

        - Only offsets pending (events that are not indexed messages): in ``commit_most_s``;
          nobody searches for them, and a crash before then re-reads them from the log.
        - Behind: ``commit_interval`` of the newest events' lateness after the last commit.
        - Caught up: the interval after the last commit, at once if the shard's first pending
          message came after that (a quiet shard). With ``commit_age_s``, a shard whose news
          came sooner waits until its oldest pending message is that old (from its ack): a
          shard with a steady stream commits every ``commit_age_s`` less the pipeline's
          latency, not every interval, and each message is still searchable that long after
          its ack, plus the commit."""
        if shard.seen == shard.applied:
            return None
        if not shard.docs_pending:
            return shard.committed_at + self._most - now
        wait = commit_interval(shard.lateness, self._interval, self._most)
        due = shard.committed_at + wait
        if self._age is not None and wait <= self._interval and shard.pending_since < due:
            due = max(due, shard.oldest_ack + self._age)
        return due - now

    def due(self, shard: Shard, now: float) -> bool:
        """Whether ``shard`` has something to commit and has waited long enough for it."""
        wait = self.due_in(shard, now)
        return wait is not None and wait <= 0

    async def commit_due(self, *, everything: bool = False) -> None:
        now = time.monotonic()
        shards = [
            shard
            for shard in list(self._shards.values())
            if (everything and shard.seen != shard.applied) or self.due(shard, now)
        ]
        if shards:
            await asyncio.get_running_loop().run_in_executor(None, _commit_all, shards)

    def next_due_in(self) -> float | None:
        """Seconds until the first pending shard is due (None: nothing pending)."""
        now = time.monotonic()
        waits = [w for shard in list(self._shards.values()) if (w := self.due_in(shard, now)) is not None]
        return min(waits, default=None)

    async def _flush_loop(self) -> None:
        assert self._wake is not None
        while True:
            wait = self.next_due_in()
            if wait is None or wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    pass
                else:
                    continue  # a shard's first pending events: look again
            self.flusher_looks += 1
            try:
                await self.commit_due()
            except Exception:
                log.exception("search shard commit failed")
                await asyncio.sleep(self._interval)

    def abandon(self) -> None:
        """Drop the shards without committing (what a crash does; tests)."""
        if self._flusher is not None:
            self._flusher.cancel()
        for shard in self._shards.values():
            shard.writer.rollback()
        self._shards.clear()

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        for shard in self._shards.values():
            shard.close()


def _commit_all(shards: Sequence[Shard]) -> None:
    """Commit ``shards`` one after the other (one job of the thread pool)."""
    for shard in shards:
        shard.commit()


def prefix_regex(prefix: str) -> str:
    """A regex of the terms starting with ``prefix``: every character but ASCII letters and
    digits as an ``\\x{...}`` escape, so nothing in it is regex syntax."""
    return "".join(ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):x}}}" for ch in prefix) + ".*"


def prefix_query(prefix: str, schema: tantivy.Schema = SCHEMA, *, ngrams: bool = True) -> tantivy.Query:
    """``prefix`` as the start of a word: a term of the n-gram field for 3..8 characters (one
    posting list, like a word), else the body's terms that start with it, expanded over the
    term dictionary (what every prefix cost before the n-gram field: the postings of all those
    terms read over whole segments). Longer prefixes are expanded because few words share 9
    characters, so the expansion is small; an 8-character n-gram AND that expansion would cost
    the same, since tantivy reads the expansion's postings in full either way. ``ngrams``:
    whether the shard has the n-gram field (schema 2 and later)."""
    if ngrams and ngram_query(prefix):
        return tantivy.Query.term_query(schema, PREFIX_FIELD, prefix)
    return tantivy.Query.regex_query(schema, "body", prefix_regex(prefix))


def build_query(
    parsed: Parsed,
    conversation_ids: Iterable[str] | None,
    before: int | None,
    schema: tantivy.Schema = SCHEMA,
    *,
    ngrams: bool = True,
) -> tantivy.Query:
    """The engine query: every part of ``parsed`` must match, in one of ``conversation_ids``
    (None: any), older than ``before``; over a shard of ``schema`` (with the n-gram field or
    not: ``ngrams``)."""
    Occur, Query = tantivy.Occur, tantivy.Query
    must: list[tuple[Any, tantivy.Query]] = []
    for word in parsed.words:
        must.append((Occur.Must, Query.term_query(schema, "body", word)))
    for phrase in parsed.phrases:
        must.append((Occur.Must, Query.phrase_query(schema, "body", list(phrase))))
    for prefix in parsed.prefixes:
        must.append((Occur.Must, prefix_query(prefix, schema, ngrams=ngrams)))
    if conversation_ids is not None:
        must.append((Occur.Must, Query.term_set_query(schema, "conversation_id", sorted(conversation_ids))))
    if before is not None:
        must.append(
            (
                Occur.Must,
                Query.range_query(
                    schema, "message_id", tantivy.FieldType.Unsigned, None, before, True, False
                ),
            )
        )
    return Query.boolean_query(must)


def highlight(snippet: tantivy.Snippet) -> str:
    """The fragment with each hit in ``<em>``; the message text is HTML-escaped. Tantivy's
    ranges count UTF-8 bytes."""
    text = snippet.fragment().encode()
    out, last = [], 0
    for span in snippet.highlighted():
        out.append(html.escape(text[last : span.start].decode(errors="replace")))
        out.append(f"<em>{html.escape(text[span.start : span.end].decode(errors='replace'))}</em>")
        last = span.end
    out.append(html.escape(text[last:].decode(errors="replace")))
    return "".join(out)


_WORDS = re.compile(r"\w+")
# How much text a highlight keeps before its first match, when that match is not near the start.
_LEAD_CHARS = 40


def highlight_words(body: str, parsed: Parsed) -> str:
    """Highlights made here, for queries with a prefix (the engine's snippets mark only the
    body's own terms, never a prefix's): up to ``SNIPPET_CHARS`` of ``body`` around its first
    match, each matching word in ``<em>``."""
    wanted = set(parsed.words) | {w for phrase in parsed.phrases for w in phrase}

    def matches(word: str) -> bool:
        return any(t in wanted or t.startswith(parsed.prefixes) for t in analyze(word))

    start = 0
    first = next((m for m in _WORDS.finditer(body) if matches(m.group())), None)
    if first is not None and first.end() > SNIPPET_CHARS:
        # Begin at a word boundary a little before the first match.
        lead = body.rfind(" ", 0, max(0, first.start() - _LEAD_CHARS))
        start = lead + 1 if lead >= 0 else first.start()
    text = body[start : start + SNIPPET_CHARS]
    out, last = [], 0
    for match in _WORDS.finditer(text):
        if matches(match.group()):
            out.append(html.escape(text[last : match.start()]))
            out.append(f"<em>{html.escape(match.group())}</em>")
            last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


class _Shard:
    """One shard as a gateway reads it: its index, opened with the schema it was written with
    (reloaded by hand, never by tantivy's own watcher), and the searcher of its last reload,
    with the ``meta.json`` it was made from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta = path / META
        self.index: tantivy.Index | None = None
        self.fields: frozenset[str] = frozenset()
        self.stamp: tuple[int, int, int] | None = None
        self.searcher: tantivy.Searcher | None = None

    @property
    def ngrams(self) -> bool:
        return PREFIX_FIELD in self.fields

    @property
    def schema(self) -> tantivy.Schema:
        assert self.index is not None
        return self.index.schema

    def fresh(self) -> tantivy.Searcher | None:
        """The searcher of the shard's last commit; None while there is none (a shard set aside
        for a rebuild, its new one not yet committed). A commit replaces ``meta.json`` (a new
        file renamed over the old), so its inode, time and size are compared: a reload opens
        every segment again and empties the stores' caches, which is why it is not done per
        query. A shard whose fields changed (rebuilt with another schema) is opened anew."""
        try:
            st = self.meta.stat()
        except FileNotFoundError:
            self.index = self.searcher = self.stamp = None
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self.searcher is None or stamp != self.stamp:
            # The stamp is read before the reload: a commit in between reloads once more.
            on_disk = fields(self.path)
            if self.index is None or on_disk != self.fields:
                self.index = open_existing(self.path)
                self.index.config_reader("manual")
                self.fields = on_disk
            else:
                self.index.reload()
            self.searcher = self.index.searcher()
            self.stamp = stamp
        return self.searcher


class ShardReaders:
    """Read-only views of every shard under one topic's folder (a gateway's side). Each shard's
    searcher is kept until the shard commits again (``meta.json`` replaced). Each shard is
    asked with the fields it has: one written before the n-gram field gets prefixes expanded
    over its body's terms."""

    def __init__(self, root: Path, topic: str) -> None:
        self._dir = root / topic
        self._shards: dict[Path, _Shard] = {}
        self._lock = threading.Lock()
        self.reloads = 0  # searchers made (tests, benchmarks)

    def _searchers(self) -> list[tuple[tantivy.Searcher, _Shard]]:
        """The current searcher of every shard under the folder (a new shard is opened)."""
        with self._lock:
            if self._dir.is_dir():
                for path in sorted(self._dir.iterdir()):
                    if (
                        path not in self._shards
                        and _SHARD_DIR.fullmatch(path.name)
                        and (path / META).exists()
                    ):
                        self._shards[path] = _Shard(path)
            searchers = []
            for shard in self._shards.values():
                before = shard.searcher
                searcher = shard.fresh()
                if searcher is not None:
                    searchers.append((searcher, shard))
                    self.reloads += searcher is not before
            return searchers

    def all_ids(self, parsed: Parsed) -> set[int]:
        """The message ids of every hit in every conversation (verify's hit sets)."""
        ids: set[int] = set()
        for searcher, shard in self._searchers():
            if searcher.num_docs == 0:
                continue
            query = build_query(parsed, None, None, shard.schema, ngrams=shard.ngrams)
            result = searcher.search(query, searcher.num_docs, count=False, order_by_field="message_id")
            ids.update(int(key) for key, _ in result.hits)
        return ids

    def search(
        self, parsed: Parsed, conversation_ids: Iterable[str], *, before: int | None, limit: int
    ) -> list[Hit]:
        """The newest ``limit`` hits across the shards (blocking: run it in a thread)."""
        cids = list(conversation_ids)
        found: list[tuple[int, tantivy.Searcher, _Shard, tantivy.Query, Any]] = []
        for searcher, shard in self._searchers():
            query = build_query(parsed, cids, before, shard.schema, ngrams=shard.ngrams)
            result = searcher.search(query, limit, count=False, order_by_field="message_id")
            found.extend((int(key), searcher, shard, query, address) for key, address in result.hits)
        found.sort(key=lambda hit: hit[0], reverse=True)
        hits = []
        snippets: dict[int, tantivy.SnippetGenerator] = {}
        for message_id, searcher, shard, query, address in found[:limit]:
            doc = searcher.doc(address)
            stored = doc.get_first("message")
            assert isinstance(stored, bytes)
            message = orjson.loads(stored)
            message["body"] = doc.get_first("body")
            if parsed.prefixes:
                marked = highlight_words(message["body"], parsed)
            else:
                generator = snippets.get(id(searcher))
                if generator is None:
                    generator = tantivy.SnippetGenerator.create(searcher, query, shard.schema, "body")
                    generator.set_max_num_chars(SNIPPET_CHARS)
                    snippets[id(searcher)] = generator
                snippet = generator.snippet_from_doc(doc)
                marked = (
                    highlight(snippet) if snippet.highlighted() else highlight_words(message["body"], parsed)
                )
            hits.append(Hit(message_id, message, [marked]))
        return hits
