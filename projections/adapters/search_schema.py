"""What a search shard holds, and which version of it: the analyzer, the tantivy schema, each
word's edge n-grams, and the schema version written beside each shard's offset.

A shard's ``applied.json`` is ``{"offset": N, "schema": V}``. ``V`` changes whenever what is
indexed changes (a field, an analyzer, the n-gram lengths), so a shard written by older code is
known as such: the ``search`` worker sets it aside and fills a new one from the log
(``SearchIndexer``), ``tidings replay --projection search`` builds new ones beside the live
ones, and a gateway queries each shard only with the fields its own schema has
(``ShardReaders``). Versions:

1. ``body`` (positions), ``conversation_id``, ``message_id``, ``message``. No ``schema`` key in
   ``applied.json``.
2. 1 plus ``prefixes``: the edge n-grams (2..8 characters) of every word of ``body``, so that a
   prefix query of 2..8 characters is one term query.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path

import tantivy

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
TOKENIZER = "folded"
# Words longer than this are not indexed (base64 blobs, URLs glued together).
LONGEST_WORD = 40
PREFIX_FIELD = "prefixes"
# A prefix query of NGRAM_MIN..NGRAM_MAX characters is a term of PREFIX_FIELD; a longer one is
# expanded over the body's term dictionary (few terms share 9 characters). 2 is the shortest
# prefix the protocol takes (docs/protocol.md); its n-grams cost 3 % of the index (docs/search.md).
NGRAM_MIN = 2
NGRAM_MAX = 8
APPLIED = "applied.json"
META = "meta.json"  # tantivy's: the schema and segments of the last commit
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
    # Space-separated n-grams made here (ngram_text), split by tantivy's built-in whitespace
    # tokenizer; doc ids only: a prefix has no phrase position and no score.
    builder.add_text_field(PREFIX_FIELD, stored=False, tokenizer_name="whitespace", index_option="basic")
    return builder.build()


SCHEMA = schema()
ANALYZER = analyzer()


def analyze(text: str) -> list[str]:
    return list(ANALYZER.analyze(text))


def edge_ngrams(terms: Iterable[str]) -> list[str]:
    """Each term's prefixes of ``NGRAM_MIN..NGRAM_MAX`` characters, once each. tantivy 0.27's
    Python binding has no per-word edge n-gram filter (its n-gram tokenizer takes the whole
    text as one word), so they are made here from the analyzer's terms."""
    grams: dict[str, None] = {}
    for term in terms:
        grams.update(_term_ngrams(term))
    return list(grams)


@functools.lru_cache(maxsize=32_768)
def _term_ngrams(term: str) -> dict[str, None]:
    # Words repeat (a chat's vocabulary is small next to its messages): each is cut once.
    return dict.fromkeys(term[:n] for n in range(NGRAM_MIN, min(len(term), NGRAM_MAX) + 1))


def ngram_text(terms: Iterable[str]) -> str:
    """The ``PREFIX_FIELD`` text of a message: ``edge_ngrams`` of its terms, space-separated,
    for tantivy's whitespace tokenizer. An n-gram shared by two words is in it twice, which
    changes nothing (the field holds doc ids only), and saves deduplicating here: half the
    Python time of ``edge_ngrams`` (4.5 against 9-10 µs per bench message)."""
    return " ".join(map(_term_text, terms))


@functools.lru_cache(maxsize=32_768)
def _term_text(term: str) -> str:
    return " ".join(_term_ngrams(term))


def ngram_query(prefix: str) -> bool:
    """Whether a prefix query of ``prefix`` is a term of ``PREFIX_FIELD``."""
    return NGRAM_MIN <= len(prefix) <= NGRAM_MAX


def open_index(path: Path) -> tantivy.Index:
    """The shard at ``path`` with this schema (created when absent)."""
    path.mkdir(parents=True, exist_ok=True)
    index = tantivy.Index(SCHEMA, path=str(path), reuse=True)
    index.register_tokenizer(TOKENIZER, analyzer())
    return index


def open_existing(path: Path) -> tantivy.Index:
    """The shard at ``path`` with the schema it was written with (a reader's view)."""
    index = tantivy.Index.open(str(path))
    index.register_tokenizer(TOKENIZER, analyzer())
    return index


def fields(path: Path) -> frozenset[str]:
    """The field names of the shard's last commit (tantivy's ``meta.json``); empty if none."""
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        return frozenset()
    return frozenset(field["name"] for field in meta["schema"])


CURRENT_FIELDS = frozenset({"body", "conversation_id", "message_id", "message", PREFIX_FIELD})


def read_state(path: Path) -> tuple[int, int | None]:
    """The shard's committed offset (-1 for none) and schema version: None for no shard,
    1 for an ``applied.json`` without a version. A shard that committed its index but not yet
    an offset (a crash in between) is current only if its fields are."""
    try:
        state = json.loads((path / APPLIED).read_text())
    except FileNotFoundError:
        on_disk = fields(path)
        if not on_disk:
            return -1, None
        return -1, SCHEMA_VERSION if on_disk == CURRENT_FIELDS else 0
    return int(state["offset"]), int(state.get("schema", 1))


def read_applied(path: Path) -> int:
    """The offset of the last event the shard at ``path`` committed; -1 for none."""
    return read_state(path)[0]


def set_aside(path: Path, version: int) -> Path:
    """Move the shard at ``path`` (of schema ``version``) out of its topic's folder, to
    ``<topic>.schema-v<version>/<p...>-<time>`` beside it, so that a new shard can be made
    there. Refused (``ValueError``, from tantivy) while another process holds its writer."""
    if (path / META).exists():
        old = tantivy.Index.open(str(path))
        writer = old.writer(heap_size=WRITER_HEAP, num_threads=1)  # proves no one else writes it
        del writer, old  # dropping the writer frees its lock
    aside = path.parent.parent / f"{path.parent.name}.schema-v{version}" / f"{path.name}-{time.time_ns()}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    path.rename(aside)
    log.warning(
        "search shard %s has schema version %s, this code writes %s: moved to %s and rebuilt "
        "from the log (delete the old copy once the new shard has caught up)",
        path,
        version,
        SCHEMA_VERSION,
        aside,
    )
    return aside
