"""Parsing ``q`` (never by the engine's query parser), highlights and the search cursor."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tantivy
from hypothesis import given, settings
from hypothesis import strategies as st

from events.errors import Invalid
from projections.adapters.search import (
    SNIPPET_CHARS,
    SearchIndexer,
    analyze,
    build_query,
    commit_interval,
    highlight_words,
    prefix_query,
    prefix_regex,
)
from projections.adapters.search_schema import edge_ngrams, ngram_text
from projections.search_query import MAX_CHARS, Parsed, parse
from query_api.search_api import make_cursor, read_cursor


def test_words_phrases_and_prefixes() -> None:
    parsed = parse('Hello "Quick  Brown fox" jump* world', analyze)
    assert parsed == Parsed(("hello", "world"), (("quick", "brown", "fox"),), ("jump",))


@pytest.mark.parametrize(
    ("q", "words"),
    [
        ("Café", ("cafe",)),
        ("CRÈME brûlée", ("creme", "brulee")),
        ("Straße", ("strasse",)),
        ("naïve", ("naive",)),
    ],
)
def test_case_and_accents_fold_like_the_index(q: str, words: tuple[str, ...]) -> None:
    assert parse(q, analyze).words == words
    # The same analyzer indexes the bodies: the folded query word is the indexed term.
    assert analyze(q) == list(words)


@pytest.mark.parametrize("q", [None, "", "   ", "*", "**", '""', '"', "!!!", "x" * (MAX_CHARS + 1)])
def test_nothing_to_search_for_is_invalid(q: str | None) -> None:
    with pytest.raises(Invalid):
        parse(q, analyze)


@pytest.mark.parametrize("q", ["a\x00b", "tab\there", "line\nbreak", "\x1b[31m", "del\x7f"])
def test_control_characters_are_invalid(q: str) -> None:
    with pytest.raises(Invalid, match="control"):
        parse(q, analyze)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        # Query-language operators and syntax are literal words, never syntax.
        ("cats AND dogs", Parsed(("cats", "and", "dogs"), (), ())),
        ("-cats +dogs", Parsed(("cats", "dogs"), (), ())),
        ("body:secret", Parsed(("body", "secret"), (), ())),
        ("conversation_id:g:1", Parsed(("conversation", "id", "g", "1"), (), ())),
        ("(a OR b)~2^3", Parsed(("a", "or", "b", "2", "3"), (), ())),
        ('"unbalanced quote', Parsed(("unbalanced", "quote"), (), ())),
        ('one "two three" "four', Parsed(("one", "four"), (("two", "three"),), ())),
        ("[1 TO 9]", Parsed(("1", "to", "9"), (), ())),
        ("fo*o", Parsed(("fo", "o"), (), ())),
        ("a*", Parsed(("a",), (), ())),  # a one-letter prefix is a word
        ("hello *", Parsed(("hello",), (), ())),
        ('"single"', Parsed(("single",), (), ())),
        ("re.*gex", Parsed(("re", "gex"), (), ())),
    ],
)
def test_hostile_queries_are_literal(q: str, expected: Parsed) -> None:
    assert parse(q, analyze) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=MAX_CHARS))
def test_any_text_parses_or_is_invalid_and_builds_a_query(q: str) -> None:
    try:
        parsed = parse(q, analyze)
    except Invalid:
        return
    assert parsed
    indexed = set(analyze(q.replace("*", " ").replace('"', " ")))
    for term in (*parsed.words, *parsed.prefixes, *(w for p in parsed.phrases for w in p)):
        # Every term is a token the index's analyzer makes of the same text, without spaces.
        # The analyzer splits on ASCII punctuation, so typed query syntax never survives; folding
        # may make some (a parenthesised digit, U+2474, is "(1)"), which the engine takes as
        # literal text: the query is built from terms, never parsed from a string.
        assert term and not any(ch.isspace() for ch in term), term
        assert term in indexed, (term, indexed)
        if q.isascii():
            assert not any(not ch.isalnum() for ch in term), term
    build_query(parsed, ["g:1"], before=None)


def test_a_character_folded_to_punctuation_is_a_literal_term() -> None:
    parsed = parse("\u2474 x", analyze)
    assert parsed.words == ("(1)", "x")
    build_query(parsed, ["g:1"], before=None)


def test_prefix_regex_escapes_all_but_ascii_letters_and_digits() -> None:
    assert prefix_regex("ab12") == "ab12.*"
    assert prefix_regex("é.") == "\\x{e9}\\x{2e}.*"


def test_highlights_escape_the_body() -> None:
    parsed = parse("scr*", analyze)
    assert highlight_words("<b>Script</b> & more", parsed) == "&lt;b&gt;<em>Script</em>&lt;/b&gt; &amp; more"


def test_edge_ngrams_are_each_words_prefixes_of_2_to_8_characters_once() -> None:
    terms = analyze("Hi Straße wonderfully WONDER a")
    assert terms == ["hi", "strasse", "wonderfully", "wonder", "a"]
    assert edge_ngrams(terms) == [
        "hi",
        "st",
        "str",
        "stra",
        "stras",
        "strass",
        "strasse",
        "wo",
        "won",
        "wond",
        "wonde",
        "wonder",
        "wonderf",
        "wonderfu",
    ]


@pytest.mark.parametrize(
    ("prefix", "kind"),
    [
        ("ab", "TermQuery"),  # the shortest prefix there is (a* is the word a)
        ("abc", "TermQuery"),
        ("abcdefgh", "TermQuery"),
        ("abcdefghi", "RegexQuery"),  # longer: expanded (few terms share 9 characters)
    ],
)
def test_a_prefix_of_2_to_8_characters_is_one_term_of_the_ngram_field(prefix: str, kind: str) -> None:
    assert repr(prefix_query(prefix)).startswith(f"Query({kind}")
    # A shard written before the n-gram field has none: its prefixes are always expanded.
    assert repr(prefix_query(prefix, ngrams=False)).startswith("Query(RegexQuery")


def test_a_prefix_match_far_into_a_long_message_is_highlighted() -> None:
    body = "filler " * 40 + "the Quickly word " + "tail " * 40
    marked = highlight_words(body, parse("quic*", analyze))
    assert "<em>Quickly</em>" in marked
    assert len(marked) <= SNIPPET_CHARS + len("<em></em>")
    # With a word as well, both are marked (the engine's snippets would mark the word only).
    marked = highlight_words("a quickly brown fox", parse("brown quic*", analyze))
    assert marked == "a <em>quickly</em> <em>brown</em> fox"


def test_cursor_round_trip_and_tampering() -> None:
    cursor = make_cursor("secret", "alice", "hello", None, 12345)
    assert read_cursor("secret", "alice", "hello", None, cursor) == 12345
    before, _, mac = cursor.partition(".")
    for bad in (
        f"{int(before) + 1}.{mac}",  # another position
        f"{before}.{mac[:-1]}A" if not mac.endswith("A") else f"{before}.{mac[:-1]}B",
        before,
        "nonsense",
        "",
        f"{before}.{mac}" + "x" * 300,
    ):
        with pytest.raises(Invalid):
            read_cursor("secret", "alice", "hello", None, bad)
    # Not for another user, another q, another conversation or under another secret.
    for secret, who, q, conversation_id in (
        ("secret", "bob", "hello", None),
        ("secret", "alice", "hello2", None),
        ("secret", "alice", "hello", "g:1"),
        ("other", "alice", "hello", None),
    ):
        with pytest.raises(Invalid):
            read_cursor(secret, who, q, conversation_id, cursor)


def test_the_indexed_ngram_text_holds_exactly_the_edge_ngrams() -> None:
    terms = analyze("Hi Straße wonderfully WONDER a wonder")
    text = ngram_text(terms)
    assert set(text.split()) == set(edge_ngrams(terms))
    # tantivy's whitespace tokenizer cuts it into those terms.
    assert set(tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()).build().analyze(text)) == set(
        edge_ngrams(terms)
    )
    assert ngram_text(analyze("a b")).split() == []  # one-letter words: no n-gram
    assert ngram_text([]) == ""


def test_a_shard_commits_every_interval_while_it_keeps_up_and_less_often_behind() -> None:
    # Caught up: the interval, whatever the lateness below it.
    assert commit_interval(0.0, 0.5, 5.0) == 0.5
    assert commit_interval(0.9, 0.5, 5.0) == 0.5
    # Behind: half the lateness (a message ends up at most 1.5x as late as it already was)...
    assert commit_interval(2.0, 0.5, 5.0) == 1.0
    assert commit_interval(6.0, 0.5, 5.0) == 3.0
    # ... up to the longest wait.
    assert commit_interval(60.0, 0.5, 5.0) == 5.0
    assert commit_interval(1e9, 0.5, 5.0) == 5.0
    # A fixed interval (a rebuild's, or 0: every batch) stays fixed.
    assert commit_interval(1e9, 0.0, 0.0) == 0.0
    assert commit_interval(1e9, 5.0, 5.0) == 5.0


def _pending(**kw: float) -> Any:
    """A shard as ``SearchIndexer.due_in`` sees it (the real one needs tantivy on disk)."""
    state = {
        "seen": 10,
        "applied": 5,
        "committed_at": 100.0,
        "lateness": 0.1,
        "docs_pending": 3,
        "pending_since": 100.2,
        "oldest_ack": 100.1,
    }
    state.update(kw)
    return SimpleNamespace(**state)


def test_a_busy_shard_waits_for_its_oldest_message_to_reach_the_age() -> None:
    aged = SearchIndexer(Path("/none"), "t", commit_interval_s=1.0, commit_most_s=5.0, commit_age_s=1.5)
    plain = SearchIndexer(Path("/none"), "t", commit_interval_s=1.0, commit_most_s=5.0)
    shard = _pending()
    # News within the interval of the last commit: until its oldest message is 1.5 s old
    # (acked at 100.1: 101.6), not the interval (101.0).
    assert aged.due_in(shard, 100.5) == pytest.approx(1.1)
    assert plain.due_in(shard, 100.5) == pytest.approx(0.5)
    # Never sooner than the interval, even for a message that came late to the indexer.
    assert aged.due_in(_pending(oldest_ack=99.0), 100.5) == pytest.approx(0.5)
    # A quiet shard (its first news after the interval) commits at once, age or not.
    quiet = _pending(pending_since=101.3, oldest_ack=101.25)
    assert aged.due_in(quiet, 101.3) == pytest.approx(-0.3)
    assert plain.due_in(quiet, 101.3) == pytest.approx(-0.3)
    # Behind: the backlog's cadence, the age plays no part.
    assert aged.due_in(_pending(lateness=6.0), 100.5) == pytest.approx(2.5)
    # Nothing pending: nothing due; offsets alone (no message to make searchable): the
    # longest interval.
    assert aged.due_in(_pending(seen=5), 100.5) is None
    assert aged.due_in(_pending(docs_pending=0), 100.5) == pytest.approx(4.5)
    assert plain.due_in(_pending(docs_pending=0), 100.5) == pytest.approx(4.5)
    # An age below the interval changes nothing.
    short = SearchIndexer(Path("/none"), "t", commit_interval_s=1.0, commit_most_s=5.0, commit_age_s=0.5)
    assert short.due_in(shard, 100.5) == pytest.approx(0.5)
