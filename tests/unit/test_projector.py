from collections.abc import Sequence

from events import ChatEvent, MessageSent, encode_event
from events.errors import Unavailable
from projections.memory import MemoryMessages, MemoryRecent
from projections.roster import Entry, Roster
from streams.projector import Projector, Record
from tests.factories import message_sent


class Letters:
    def __init__(self) -> None:
        self.sent: list[tuple[Record, str]] = []

    async def send(self, record: Record, error: str) -> None:
        self.sent.append((record, error))


class Poisoned:
    """A stage that cannot apply one particular message (a bug, not an outage)."""

    name = "poisoned"

    def __init__(self, bad_id: int) -> None:
        self.bad_id = bad_id
        self.applied: list[int] = []

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        if any(e.message_id == self.bad_id for e in events):
            raise KeyError("boom")
        self.applied += [e.message_id for e in events]


def _roster() -> Roster:
    async def load(cid: str, threshold: int) -> Entry:
        raise AssertionError("direct chats need no lookup")

    return Roster(load, threshold=500)


async def _no_sleep(_: float) -> None:
    return None


def _record(offset: int, event: MessageSent | None = None, raw: bytes | None = None) -> Record:
    value = raw if raw is not None else encode_event(event)  # type: ignore[arg-type]
    return Record("t", 0, offset, b"dm:alice:bob", value)


def _message(mid: int) -> MessageSent:
    return message_sent(mid, ts=1)


async def test_transient_failures_are_retried_until_applied_without_repushing() -> None:
    recent, messages, letters = MemoryRecent(roster=_roster()), MemoryMessages(), Letters()
    messages.fail_next = 3
    projector = Projector([recent, messages], letters, sleep=_no_sleep)
    await projector.handle([_record(1, _message(1)), _record(2, _message(2))])
    assert sorted(messages.rows["dm:alice:bob"]) == [1, 2]
    # Two messages x two members: pushed once each, although Cassandra was retried three times.
    assert len(recent.published) == 4
    assert letters.sent == []


async def test_undecodable_record_is_dead_lettered_and_the_rest_applied() -> None:
    messages, letters = MemoryMessages(), Letters()
    projector = Projector([messages], letters, sleep=_no_sleep)
    await projector.handle([_record(1, _message(1)), _record(2, raw=b"garbage"), _record(3, _message(3))])
    assert sorted(messages.rows["dm:alice:bob"]) == [1, 3]
    [(record, error)] = letters.sent
    assert record.offset == 2 and "undecodable" in error


async def test_a_poison_event_in_a_batch_is_isolated() -> None:
    stage, letters = Poisoned(bad_id=2), Letters()
    projector = Projector([stage], letters, sleep=_no_sleep)
    await projector.handle([_record(i, _message(i)) for i in (1, 2, 3)])
    assert stage.applied == [1, 3]
    [(record, error)] = letters.sent
    assert record.offset == 2 and "KeyError" in error


async def test_dead_letter_outage_is_retried_not_dropped() -> None:
    class Flaky(Letters):
        failures = 2

        async def send(self, record: Record, error: str) -> None:
            if self.failures:
                self.failures -= 1
                raise Unavailable("kafka down")
            await super().send(record, error)

    letters = Flaky()
    await Projector([], letters, sleep=_no_sleep).handle([_record(1, raw=b"{}")])
    assert len(letters.sent) == 1


async def test_applying_twice_changes_nothing() -> None:
    once, twice = MemoryMessages(), MemoryMessages()
    batch = [_record(i, _message(i)) for i in range(5)]
    await Projector([once], Letters(), sleep=_no_sleep).handle(batch)
    await Projector([twice], Letters(), sleep=_no_sleep).handle(batch + batch)
    assert once.rows == twice.rows
