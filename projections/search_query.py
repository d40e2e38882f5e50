"""The words of a search, parsed by us, never by the engine's query parser.

``q`` holds words (all must match), ``"quoted phrases"`` and ``prefix*``. The user's text never
reaches tantivy's query language: it is cut here into those three kinds, each word then goes
through the index's own analyzer (``projections.adapters.search.ANALYZER``: lowercase and ASCII folding),
and ``projections.adapters.search`` builds term, phrase and regex queries from the results. So operators
(``AND``, ``-x``, ``field:``), brackets and stray quotes are literal text, not syntax.

Refused with ``Invalid`` (400): an empty ``q``, one over ``MAX_CHARS``, one with control
characters, and one with nothing to search for once parsed (``*``, ``"!!"``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from events.errors import Invalid

MAX_CHARS = 256
MAX_PARTS = 32
# A prefix shorter than this matches too much of the term dictionary to be worth expanding.
MIN_PREFIX = 2

Analyze = Callable[[str], list[str]]

_PHRASE = re.compile(r'"([^"]*)"')
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Parsed:
    """Analyzed terms: each ``words`` term must match, each phrase in order, each prefix as
    the start of some word."""

    words: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]
    prefixes: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.words or self.phrases or self.prefixes)


def parse(q: str | None, analyze: Analyze) -> Parsed:
    """``q`` as words, phrases and prefixes, each analyzed; ``Invalid`` when it cannot be a
    search."""
    if q is None or not q.strip():
        raise Invalid("q is required")
    if len(q) > MAX_CHARS:
        raise Invalid(f"q is longer than {MAX_CHARS} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in q):
        raise Invalid("q has control characters")
    words: list[str] = []
    phrases: list[tuple[str, ...]] = []
    prefixes: list[str] = []
    rest: list[str] = []
    last = 0
    for match in _PHRASE.finditer(q):
        rest.append(q[last : match.start()])
        last = match.end()
        terms = tuple(analyze(match.group(1)))
        if len(terms) == 1:
            words.append(terms[0])
        elif terms:
            phrases.append(terms)
    # An unbalanced quote is just a character.
    rest.append(q[last:].replace('"', " "))
    for chunk in rest:
        for token in _WORD.findall(chunk):
            _split(token, analyze, words, prefixes)
    parsed = Parsed(_unique(words), tuple(dict.fromkeys(phrases)), _unique(prefixes))
    if not parsed:
        raise Invalid("q has nothing to search for")
    if len(parsed.words) + len(parsed.phrases) + len(parsed.prefixes) > MAX_PARTS:
        raise Invalid(f"q has more than {MAX_PARTS} words")
    return parsed


def _split(token: str, analyze: Analyze, words: list[str], prefixes: list[str]) -> None:
    terms = analyze(token)
    if not terms:
        return
    # `foo*`: the last word of the token is a prefix when the token ends in `*` right after it.
    if token.endswith("*") and len(token.rstrip("*")) > 0 and token.rstrip("*")[-1].isalnum():
        *whole, last = terms
        words.extend(whole)
        if len(last) >= MIN_PREFIX:
            prefixes.append(last)
        else:
            words.append(last)
        return
    words.extend(terms)


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class Hit:
    """One found message: its protocol Message object and its highlighted fragments."""

    message_id: int
    message: dict[str, Any]
    highlights: list[str]
