"""A dead letter (``streams.app.FaustDeadLetters``) carries the record as it was, why it was
given up (``error``, cut to 4,000 bytes), where it came from (``source``) and which consumer
group gave up on it (``group``): each role reads the log in its own group, so an operator
needs the group to know which read model is missing the event."""

from __future__ import annotations

from typing import Any, cast

from streams.app import FaustDeadLetters
from streams.projector import Record


class _Topic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []

    async def send(self, *, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> None:
        self.sent.append((key, value, headers))


async def test_a_dead_letter_says_why_where_from_and_which_group_gave_up() -> None:
    topic = _Topic()
    letters = FaustDeadLetters(cast(Any, topic), "tidings-projector-persist")
    await letters.send(Record("tidings.conversation-events", 3, 42, b"dm:a:b", b"\xff\x00"), "undecodable: x")
    await letters.send(Record("tidings.conversation-events", 3, 43, None, b"{}"), "persist: " + "e" * 5000)
    assert topic.sent[0] == (
        b"dm:a:b",
        b"\xff\x00",
        {
            "error": b"undecodable: x",
            "source": b"tidings.conversation-events:3:42",
            "group": b"tidings-projector-persist",
        },
    )
    key, value, headers = topic.sent[1]
    assert (key, value, headers["source"], headers["group"]) == (
        None,
        b"{}",
        b"tidings.conversation-events:3:43",
        b"tidings-projector-persist",
    )
    assert headers["error"] == ("persist: " + "e" * 5000).encode()[:4000]
