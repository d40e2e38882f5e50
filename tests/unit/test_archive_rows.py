"""``RowBuilder.add_batch`` (messages and receipts parsed in bulk, ``archive.bulk``) gives
exactly the rows, the stop at the cutoff and the chunk limit of adding entries one by one,
whatever the batch holds: events the catalogue accepts, events only its models accept, and
garbage that goes to ``unreadable``."""

from __future__ import annotations

import random
from typing import Any

import pytest

from archive.rows import RowBuilder
from archive.tables import Entry, event_time, parse
from events import DirectOpened, GroupCreated, MediaRef, Member, MessageSent, ReceiptRecorded, encode_event
from tests.factories import message_sent, receipt_recorded

T0 = 1_700_000_000_000
DAY = 86_400_000


def _message(i: int, **changes: Any) -> MessageSent:
    fields: dict[str, Any] = dict(
        conversation_id=f"dm:u{i % 5}:v{i % 5}",
        message_id=(i + 1) << 22,
        sender_id=f"u{i % 5}",
        sender_device="d1",
        client_msg_id=f"c{i}",
        body=f'hello {i} "quoted" \\ ünïcode\n',
        ts=T0 + i * DAY // 7,  # spans several days
    )
    return message_sent(**{**fields, **changes})


def _receipt(i: int) -> ReceiptRecorded:
    return receipt_recorded(
        (i + 1) << 22,
        conversation_id=f"dm:u{i % 5}:v{i % 5}",
        user_id=f"v{i % 5}",
        device_id="d1",
        status="read" if i % 2 else "delivered",
        ts=T0 + i * DAY // 7,
    )


def _clean(n: int) -> list[bytes]:
    return [encode_event(_message(i) if i % 4 else _receipt(i)) for i in range(n)]


UNUSUAL: list[bytes] = [
    # only the models accept these (the per-event slow path)
    encode_event(
        _message(900, media=MediaRef(media_id="m1", content_type="image/png", size=5), kind="image")
    ),
    encode_event(
        GroupCreated(
            conversation_id="g:1",
            event_id=5 << 22,
            actor_id="u1",
            ts=T0,
            title="t",
            members=(Member(user_id="u1", role="owner"),),
            member_count=1,
        )
    ),
    # the bulk parser must refuse all of these, and the per-event path decides as before
    encode_event(_message(901)).replace(b'"v":1,', b'"v":1,\n', 1),  # a raw newline between tokens
    encode_event(_message(902))
    .replace(b'"message_id":', b'"message_id":"', 1)
    .replace(b',"sender_id"', b'","sender_id"', 1),
    encode_event(_message(903)).replace(b'"kind":"text"', b'"kind":"sticker"'),
    encode_event(_message(904)).replace(b'"media":null', b'"media":null,"extra":1'),
    encode_event(_message(905)).replace(b',"media":null', b""),  # no media key: the model's default
    encode_event(_message(906)).replace(b'"sender_device":"d1"', b'"sender_device":null'),
    encode_event(_message(907)).replace(b'"sender_device":"d1"', b'"sender_device":"d1","sender_device":"x"'),
    encode_event(_message(908)).replace(b'"ts":', b'"ts":1.5,"x":', 1),
    encode_event(_message(909))[:-10],  # cut short
    encode_event(_receipt(910)).replace(b'"status":"delivered"', b'"status":"seen"'),
    encode_event(_receipt(911)).replace(b'"message_id":', b'"message_id":true,"y":', 1),
    b'{"type":"message.sent","v":1,"conversation_id":"dm:x:y"} {"type":"message.sent","v":1}',
    b"not json at all",
]


def _entries(values: list[bytes], partition: int = 2, first_offset: int = 100) -> list[Entry]:
    return [Entry(partition, first_offset + i, T0 + i, f"k{i}".encode(), v) for i, v in enumerate(values)]


def _one_by_one(entries: list[Entry], cutoff_ms: int | None, room: int) -> tuple[RowBuilder, int, bool]:
    """What the job did before bulk parsing, entry by entry."""
    builder = RowBuilder()
    for taken, entry in enumerate(entries):
        data = parse(entry)
        if cutoff_ms is not None and event_time(entry, data) >= cutoff_ms:
            return builder, taken, True
        if builder.count >= room:
            return builder, taken, False
        builder.add(entry, data)
    return builder, len(entries), False


def _tables(builder: RowBuilder) -> list[tuple[str, str, list[dict[str, Any]]]]:
    return [(name, day, table.to_pylist()) for name, day, table in builder.tables()]


def test_clean_batches_are_parsed_in_bulk_into_the_same_rows() -> None:
    entries = _entries(_clean(400))
    bulk = RowBuilder()
    assert bulk.add_batch(entries, None, 10_000) == (400, False)
    assert bulk._parts["messages"] and bulk._parts["receipts"]  # the bulk path was taken
    reference, _, _ = _one_by_one(entries, None, 10_000)
    assert bulk.count == reference.count == 400
    assert _tables(bulk) == _tables(reference)
    # and the tables are bit for bit what the writer gets (same types, order and chunks)
    for (n1, d1, t1), (n2, d2, t2) in zip(bulk.tables(), reference.tables(), strict=True):
        assert (n1, d1) == (n2, d2) and t1.equals(t2) and t1.schema == t2.schema


@pytest.mark.parametrize("seed", range(6))
def test_unusual_values_give_the_same_rows_as_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    values = _clean(200)
    for bad in rng.sample(UNUSUAL, rng.randint(1, len(UNUSUAL))):
        values.insert(rng.randrange(len(values)), bad)
    entries = _entries(values)
    bulk = RowBuilder()
    assert bulk.add_batch(entries, None, 10_000) == (len(entries), False)
    reference, _, _ = _one_by_one(entries, None, 10_000)
    assert _tables(bulk) == _tables(reference)
    unreadable = sum(len(rows) for name, _, rows in _tables(bulk) if name == "unreadable")
    assert unreadable == sum(len(rows) for name, _, rows in _tables(reference) if name == "unreadable") > 0


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize(
    ("cutoff_at", "room"),
    [(None, 0), (None, 150), (None, 10_000), (120, 10_000), (120, 120), (120, 119), (0, 50), (300, 10_000)],
)
def test_stops_at_the_cutoff_and_the_limit_like_one_by_one(
    cutoff_at: int | None, room: int, mixed: bool
) -> None:
    values = _clean(300)
    if mixed:
        values[57:57] = UNUSUAL
    entries = _entries(values)
    times = [event_time(e, parse(e)) for e in entries]
    cutoff = None if cutoff_at is None else (times[cutoff_at] if cutoff_at < len(times) else max(times) + 1)
    bulk = RowBuilder()
    taken, cut = bulk.add_batch(entries, cutoff, room)
    reference, ref_taken, ref_cut = _one_by_one(entries, cutoff, room)
    assert (taken, cut) == (ref_taken, ref_cut)
    assert bulk.count == reference.count == taken
    assert _tables(bulk) == _tables(reference)


@pytest.mark.parametrize("bad", range(len(UNUSUAL)))
def test_each_unusual_value_alone_in_a_clean_batch(bad: int) -> None:
    values = _clean(100)
    values.insert(41, UNUSUAL[bad])
    entries = _entries(values)
    bulk = RowBuilder()
    assert bulk.add_batch(entries, None, 10_000) == (len(entries), False)
    reference, _, _ = _one_by_one(entries, None, 10_000)
    assert _tables(bulk) == _tables(reference)


def test_an_opened_direct_chat_is_archived_with_the_membership_changes() -> None:
    opened = DirectOpened(conversation_id="dm:u1:v1", event_id=7 << 22, actor_id="u1", user_id="v1", ts=T0)
    builder = RowBuilder()
    entry = _entries([encode_event(opened)])[0]
    builder.add(entry, parse(entry))
    [(name, _, rows)] = _tables(builder)
    assert name == "membership"
    assert {k: rows[0][k] for k in ("conversation_id", "type", "actor_id", "user_id", "event_id")} == {
        "conversation_id": "dm:u1:v1",
        "type": "direct.opened",
        "actor_id": "u1",
        "user_id": "v1",
        "event_id": 7 << 22,
    }
