"""``events.rows``, the one codec between events and rows: an event comes back from its row
unchanged, a stored row answers with the same Message object the pushes carry, and every store
that keeps the shape lays its columns out as the codec says."""

from __future__ import annotations

import pytest

from archive.bulk import COLUMNS
from archive.tables import MESSAGES, RECEIPTS, SCHEMAS
from events import MediaRef, MessageSent
from events.rows import (
    ENVELOPE_COLUMNS,
    MESSAGE_COLUMNS,
    MESSAGE_OBJECT_COLUMNS,
    RECEIPT_COLUMNS,
    envelope_row,
    message_from_row,
    message_object,
    message_row,
    receipt_from_row,
    receipt_row,
)
from projections.wire import message_object as pushed_object
from tests.factories import message_sent, receipt_recorded

MEDIA = MediaRef(media_id="m1", content_type="image/png", size=5, sha256="ab" * 32, width=2, height=1)
EVENTS = [
    message_sent(7 << 22, body='héllo "quoted" \\ 👋'),
    message_sent(8 << 22, kind="image", body="", media=MEDIA),
    message_sent(
        9 << 22, kind="encrypted", body="", ciphertext="AwgA", algorithm="megolm.v1", session_id="s1"
    ),
]
IDS = ["text", "media", "encrypted"]


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_a_message_comes_back_from_its_row(event: MessageSent) -> None:
    assert message_from_row(message_row(event), event.v, envelope_row(event)) == event


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_a_stored_row_answers_with_the_object_the_pushes_carry(event: MessageSent) -> None:
    columns = dict(
        zip((*MESSAGE_COLUMNS, *ENVELOPE_COLUMNS), (*message_row(event), *envelope_row(event)), strict=True)
    )
    row = [columns[name] for name in MESSAGE_OBJECT_COLUMNS]
    assert message_object(event.conversation_id, row) == pushed_object(event)
    assert list(message_object(event.conversation_id, row)) == list(pushed_object(event))  # key order


def test_a_receipt_comes_back_from_its_row() -> None:
    event = receipt_recorded(9 << 22, status="delivered")
    assert receipt_from_row(receipt_row(event), event.v) == event


def test_the_archive_tables_lay_out_the_codec_columns_then_the_version() -> None:
    assert SCHEMAS[MESSAGES].names[: len(MESSAGE_COLUMNS) + 1] == [*MESSAGE_COLUMNS, "v"]
    # the envelope came later: after the log position, so older files are a prefix of the schema
    assert SCHEMAS[MESSAGES].names[-len(ENVELOPE_COLUMNS) :] == list(ENVELOPE_COLUMNS)
    assert SCHEMAS[RECEIPTS].names[: len(RECEIPT_COLUMNS) + 1] == [*RECEIPT_COLUMNS, "v"]
    assert COLUMNS[MESSAGES] == [*MESSAGE_COLUMNS, "v"]
    assert COLUMNS[RECEIPTS] == [*RECEIPT_COLUMNS, "v"]
