"""The archive keeps the media references of messages, and ``tidings archive sql`` joins
messages with their media (the ``message_media`` view)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from archive.reader import ArchiveReader
from events import ChatEvent, MediaRef, MessageSent
from events.ids import EPOCH_MS
from tests.factories import message_sent
from tests.integration.archive_support import DAY_MS, Log, make_log
from tidings.settings import Settings

pytestmark = pytest.mark.integration


def _media_messages(n: int) -> list[ChatEvent]:
    out: list[ChatEvent] = []
    base = int(time.time() * 1000) - 150 * DAY_MS
    for i in range(n):
        mid = ((base + i * 1000 - EPOCH_MS) << 22) | (5 << 12)  # 150 days old: archived
        media = MediaRef(
            media_id=uuid.uuid4().hex,
            content_type="image/png" if i % 2 else "application/pdf",
            size=1000 + i,
            sha256=f"{i:064x}",
            width=640 if i % 2 else None,
            height=480 if i % 2 else None,
        )
        out.append(
            message_sent(
                mid,
                conversation_id="dm:ann:bo",
                sender_id="ann",
                client_msg_id=f"m{i}",
                kind="image" if i % 2 else "file",
                body="caption" if i % 3 == 0 else "",
                media=media,
            )
        )
    return out


@pytest.fixture(scope="module")
def log(services: Settings) -> Iterator[Log]:
    yield from make_log(services, old=200, recent=10, extra=_media_messages(12))


def test_archived_messages_keep_their_media_and_join_by_media_id(log: Log, tmp_path: Path) -> None:
    log.archive(tmp_path, chunk_events=100)
    carried = {e.message_id: e.media for e in log.old if isinstance(e, MessageSent) and e.media is not None}
    assert len(carried) == 12

    reader = ArchiveReader(tmp_path)
    rows = reader.sql(
        "SELECT message_id, media_id, content_type, size, sha256, width, height FROM message_media"
    ).to_pylist()
    got = {r["message_id"]: r for r in rows}
    assert set(got) == set(carried)
    for message_id, media in carried.items():
        row = got[message_id]
        assert media is not None
        assert (row["media_id"], row["content_type"], row["size"], row["sha256"]) == (
            media.media_id,
            media.content_type,
            media.size,
            media.sha256,
        )
        assert (row["width"], row["height"]) == (media.width, media.height)
    # An analyst's join: media per kind of message, through the media ids.
    counts = reader.sql(
        "SELECT m.kind, count(*) AS n, sum(mm.size) AS bytes FROM messages m "
        "JOIN message_media mm USING (message_id) GROUP BY m.kind ORDER BY m.kind"
    ).to_pylist()
    assert counts == [
        {"kind": "file", "n": 6, "bytes": sum(1000 + i for i in range(0, 12, 2))},
        {"kind": "image", "n": 6, "bytes": sum(1000 + i for i in range(1, 12, 2))},
    ]
    reader.close()
