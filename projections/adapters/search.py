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
import html
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
import tantivy

from events import ChatEvent, MessageSent
from events.errors import Unavailable
from projections.search_query import Hit, Parsed
from projections.wire import message_object

log = logging.getLogger(__name__)

NAME = "search"
TOKENIZER = "folded"
# Words longer than this are not indexed (base64 blobs, URLs glued together).
LONGEST_WORD = 40
APPLIED = "applied.json"
SNIPPET_CHARS = 160
WRITER_HEAP = 15_000_000  # tantivy's minimum per indexing thread


def analyzer() -> tantivy.TextAnalyzer:
    """Words split on non-alphanumerics, lowercased and folded to ASCII: ``Café`` is ``cafe``.
    The index and the query parser (``projections.search_query``) use this same analyzer."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(LONGEST_WORD))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .build()
    )


def schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("body", stored=True, tokenizer_name=TOKENIZER, index_option="position")
    builder.add_text_field("conversation_id", stored=False, tokenizer_name="raw", index_option="basic")
    builder.add_unsigned_field("message_id", stored=True, indexed=True, fast=True)
    # The protocol's Message object without its body (the body is stored above).
    builder.add_bytes_field("message", stored=True, indexed=False)
    return builder.build()


SCHEMA = schema()
ANALYZER = analyzer()


def analyze(text: str) -> list[str]:
    return list(ANALYZER.analyze(text))


def open_index(path: Path) -> tantivy.Index:
    path.mkdir(parents=True, exist_ok=True)
    index = tantivy.Index(SCHEMA, path=str(path), reuse=True)
    index.register_tokenizer(TOKENIZER, analyzer())
    return index


def shard_path(root: Path, topic: str, partition: int) -> Path:
    return root / topic / f"p{partition:04d}"


def read_applied(path: Path) -> int:
    """The offset of the last event the shard at ``path`` committed; -1 for none."""
    try:
        return int(json.loads((path / APPLIED).read_text())["offset"])
    except FileNotFoundError:
        return -1


def _write_applied(path: Path, offset: int) -> None:
    tmp = path / f".{APPLIED}.tmp"
    with open(tmp, "w") as out:
        out.write(json.dumps({"offset": offset}))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path / APPLIED)


def indexable(event: ChatEvent) -> bool:
    return isinstance(event, MessageSent) and event.kind == "text" and bool(event.body)


class Shard:
    """The writing side of one partition's index (only the ``search`` role holds one).

    ``seen`` is the last offset added, ``applied`` the last one committed (and on disk). Commits
    are what cost (a segment each), so they are batched in time (``SearchIndexer``); the log
    keeps what a crash loses before the next commit, and ``Backfill`` reads it again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index = open_index(path)
        self.writer = self.index.writer(heap_size=WRITER_HEAP, num_threads=1)
        self.applied = read_applied(path)
        self.seen = self.applied
        # A shard that has not committed for an interval commits its next batch at once: a quiet
        # conversation's message is searchable as soon as it is indexed.
        self.committed_at = float("-inf")
        self.lock = threading.Lock()

    def add(self, events: Sequence[tuple[int, ChatEvent]]) -> int:
        """Index ``(offset, event)`` past ``seen`` (not yet committed); how many were messages."""
        with self.lock:
            fresh = [(offset, event) for offset, event in events if offset > self.seen]
            # An upsert: the batch's ids are deleted (one query for the batch), then added once
            # each (the last copy of an id wins). By query: a term made from a Python int is an
            # i64 term, which never matches this u64 field.
            messages = {e.message_id: e for _, e in fresh if isinstance(e, MessageSent) and indexable(e)}
            if messages:
                self.writer.delete_documents_by_query(
                    tantivy.Query.term_set_query(SCHEMA, "message_id", list(messages))
                )
            added = 0
            for event in messages.values():
                wire = message_object(event)
                del wire["body"]
                doc = tantivy.Document()
                doc.add_text("body", event.body)
                doc.add_text("conversation_id", event.conversation_id)
                doc.add_unsigned("message_id", event.message_id)
                doc.add_bytes("message", orjson.dumps(wire))
                self.writer.add_document(doc)
                added += 1
            if fresh:
                self.seen = fresh[-1][0]
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

    def apply(self, events: Sequence[tuple[int, ChatEvent]]) -> int:
        added = self.add(events)
        self.commit()
        return added

    def close(self) -> None:
        self.commit()
        self.writer.wait_merging_threads()


class Backfill(Protocol):
    async def read(self, partition: int, start: int, end: int) -> list[tuple[int, ChatEvent]]:
        """The events at offsets ``start`` (or the log's first, if later) up to ``end``
        (exclusive) of ``partition``."""


class SearchIndexer:
    """The ``search`` role's stage: each partition's events into that partition's shard,
    committed at most every ``commit_interval_s`` per shard (and at least that often while
    something is pending): a message is searchable within about that time."""

    name = NAME

    def __init__(
        self, root: Path, topic: str, backfill: Backfill | None = None, *, commit_interval_s: float = 0.0
    ) -> None:
        self._root = root
        self._topic = topic
        self._backfill = backfill
        self._interval = commit_interval_s
        self._shards: dict[int, Shard] = {}
        self._lock = threading.Lock()
        self._flusher: asyncio.Task[None] | None = None

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
        loop = asyncio.get_running_loop()
        by_partition: dict[int, list[tuple[int, ChatEvent]]] = {}
        for partition, offset, event in events:
            by_partition.setdefault(partition, []).append((offset, event))
        for partition, items in by_partition.items():
            shard = await loop.run_in_executor(None, self.shard, partition)
            first = items[0][0]
            if first > shard.seen + 1 and self._backfill is not None:
                log.warning(
                    "search shard %s is at offset %s, the log delivers %s: filling the gap from the log",
                    partition,
                    shard.seen,
                    first,
                )
                items = [*await self._backfill.read(partition, shard.seen + 1, first), *items]
            await loop.run_in_executor(None, shard.add, items)
        try:
            await self.commit_due()
        except Exception as exc:
            # A failed commit (a full disk) is retried; the events are already added.
            raise Unavailable(f"search commit: {exc!r}") from exc
        if self._interval > 0 and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop())

    async def commit_due(self, *, everything: bool = False) -> None:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for shard in list(self._shards.values()):
            if shard.seen != shard.applied and (everything or now - shard.committed_at >= self._interval):
                await loop.run_in_executor(None, shard.commit)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval / 2)
            try:
                await self.commit_due()
            except Exception:
                log.exception("search shard commit failed")

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


def prefix_regex(prefix: str) -> str:
    """A regex of the terms starting with ``prefix``: every character but ASCII letters and
    digits as an ``\\x{...}`` escape, so nothing in it is regex syntax."""
    return "".join(ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):x}}}" for ch in prefix) + ".*"


def build_query(parsed: Parsed, conversation_ids: Iterable[str] | None, before: int | None) -> tantivy.Query:
    """The engine query: every part of ``parsed`` must match, in one of ``conversation_ids``
    (None: any), older than ``before``."""
    Occur, Query = tantivy.Occur, tantivy.Query
    must: list[tuple[Any, tantivy.Query]] = []
    for word in parsed.words:
        must.append((Occur.Must, Query.term_query(SCHEMA, "body", word)))
    for phrase in parsed.phrases:
        must.append((Occur.Must, Query.phrase_query(SCHEMA, "body", list(phrase))))
    for prefix in parsed.prefixes:
        must.append((Occur.Must, Query.regex_query(SCHEMA, "body", prefix_regex(prefix))))
    if conversation_ids is not None:
        must.append((Occur.Must, Query.term_set_query(SCHEMA, "conversation_id", sorted(conversation_ids))))
    if before is not None:
        must.append(
            (
                Occur.Must,
                Query.range_query(
                    SCHEMA, "message_id", tantivy.FieldType.Unsigned, None, before, True, False
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


def highlight_words(body: str, parsed: Parsed) -> str:
    """Highlights made here, for what the engine's snippets do not mark (prefix matches): the
    start of ``body`` with each matching word in ``<em>``."""
    text = body[:SNIPPET_CHARS]
    wanted = set(parsed.words) | {w for phrase in parsed.phrases for w in phrase}
    out, last = [], 0
    for match in _WORDS.finditer(text):
        terms = analyze(match.group())
        if any(t in wanted or t.startswith(parsed.prefixes) for t in terms):
            out.append(html.escape(text[last : match.start()]))
            out.append(f"<em>{html.escape(match.group())}</em>")
            last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


class _Shard:
    """One shard as a gateway reads it: its index (reloaded by hand, never by tantivy's own
    watcher) and the searcher of its last reload, with the ``meta.json`` it was made from."""

    def __init__(self, path: Path) -> None:
        self.meta = path / "meta.json"
        self.index = open_index(path)
        self.index.config_reader("manual")
        self.stamp: tuple[int, int, int] | None = None
        self.searcher: tantivy.Searcher | None = None

    def fresh(self) -> tantivy.Searcher:
        """The searcher of the shard's last commit. A commit replaces ``meta.json`` (a new file
        renamed over the old), so its inode, time and size are compared: a reload opens every
        segment again and empties the stores' caches, which is why it is not done per query."""
        try:
            st = self.meta.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None  # the reload below says what is wrong
        if self.searcher is None or stamp is None or stamp != self.stamp:
            # The stamp is read before the reload: a commit in between reloads once more.
            self.index.reload()
            self.searcher = self.index.searcher()
            self.stamp = stamp
        return self.searcher


class ShardReaders:
    """Read-only views of every shard under one topic's folder (a gateway's side). Each shard's
    searcher is kept until the shard commits again (``meta.json`` replaced)."""

    def __init__(self, root: Path, topic: str) -> None:
        self._dir = root / topic
        self._shards: dict[Path, _Shard] = {}
        self._lock = threading.Lock()
        self.reloads = 0  # searchers made (tests, benchmarks)

    def _searchers(self) -> list[tantivy.Searcher]:
        """The current searcher of every shard under the folder (a new shard is opened)."""
        with self._lock:
            if self._dir.is_dir():
                for path in sorted(self._dir.iterdir()):
                    if path not in self._shards and (path / "meta.json").exists():
                        self._shards[path] = _Shard(path)
            searchers = []
            for shard in self._shards.values():
                before = shard.searcher
                searchers.append(shard.fresh())
                self.reloads += shard.searcher is not before
            return searchers

    def all_ids(self, parsed: Parsed) -> set[int]:
        """The message ids of every hit in every conversation (verify's hit sets)."""
        query = build_query(parsed, None, None)
        ids: set[int] = set()
        for searcher in self._searchers():
            if searcher.num_docs == 0:
                continue
            result = searcher.search(query, searcher.num_docs, count=False, order_by_field="message_id")
            ids.update(int(key) for key, _ in result.hits)
        return ids

    def search(
        self, parsed: Parsed, conversation_ids: Iterable[str], *, before: int | None, limit: int
    ) -> list[Hit]:
        """The newest ``limit`` hits across the shards (blocking: run it in a thread)."""
        query = build_query(parsed, conversation_ids, before)
        found: list[tuple[int, tantivy.Searcher, Any]] = []
        for searcher in self._searchers():
            result = searcher.search(query, limit, count=False, order_by_field="message_id")
            found.extend((int(key), searcher, address) for key, address in result.hits)
        found.sort(key=lambda hit: hit[0], reverse=True)
        hits = []
        snippets: dict[int, tantivy.SnippetGenerator] = {}
        for message_id, searcher, address in found[:limit]:
            doc = searcher.doc(address)
            generator = snippets.get(id(searcher))
            if generator is None:
                generator = tantivy.SnippetGenerator.create(searcher, query, SCHEMA, "body")
                generator.set_max_num_chars(SNIPPET_CHARS)
                snippets[id(searcher)] = generator
            stored = doc.get_first("message")
            assert isinstance(stored, bytes)
            message = orjson.loads(stored)
            message["body"] = doc.get_first("body")
            snippet = generator.snippet_from_doc(doc)
            marked = highlight(snippet) if snippet.highlighted() else highlight_words(message["body"], parsed)
            hits.append(Hit(message_id, message, [marked]))
        return hits
