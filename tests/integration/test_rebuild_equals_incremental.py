"""Incremental equals rebuilt, for the membership and inbox read models, the encryption flags
(and the media ones): the same events,
applied as the live system applies them (write-through, small batches, a redelivery) and
rebuilt from the whole log in one pass into a fresh keyspace the way replay does it (one
round of batched writes for both read models), give the same rows."""

from __future__ import annotations

import base64
import os
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from commands.groups import (
    AddMembers,
    ChangeRole,
    CreateGroup,
    GroupState,
    RemoveMember,
    RenameGroup,
    decide_add,
    decide_create,
    decide_remove,
    decide_rename,
    decide_role,
)
from commands.memory import MemoryDirectory
from events import (
    ChatEvent,
    DirectOpened,
    EncryptionEnabled,
    MediaDeleted,
    MediaRef,
    MediaStored,
    MessageSent,
    ReceiptRecorded,
    ThumbnailMade,
    direct_conversation_id,
    snowflake_ts,
)
from events.ids import Snowflake
from projections.adapters.cql import Cql, connect_to
from projections.adapters.migrate import migrate_cassandra
from projections.inbox import inbox_page
from projections.media import CassandraMedia
from projections.membership import CassandraMembership
from projections.receipts import CassandraReceipts
from projections.roster import Roster
from streams.combined import CombinedWrites
from tests.factories import message_sent, receipt_recorded
from tidings.settings import Settings

REBUILD_KEYSPACE = os.environ["TIDINGS_CASSANDRA_KEYSPACE"] + "_rebuild"
THRESHOLD = 4  # so the scenario crosses it both ways


# A random walk over the group commands: one branch per command, as a table would be.
async def scenario(seed: int) -> tuple[list[ChatEvent], MemoryDirectory]:  # noqa: C901
    """A log: groups created (end-to-end encrypted for odd seeds), grown past the threshold and
    shrunk, roles, renames, leaves, and messages in groups and direct chats in between; a direct
    chat that becomes encrypted (both sides asking) halfway."""
    rng = random.Random(seed)
    secret = seed % 2 == 1
    ids = Snowflake(rng.randrange(1024))
    directory = MemoryDirectory()
    users = [f"r{uuid.uuid4().hex[:10]}" for _ in range(8)]
    owner = users[0]
    log: list[ChatEvent] = []

    async def emit(event: Any) -> None:
        if event is not None:
            await directory.apply([event])
            log.append(event)

    def stamp() -> tuple[int, int]:
        eid = ids.next_id()
        return eid, snowflake_ts(eid)

    async def state(cid: str, actor: str, named: list[str]) -> GroupState:
        info = await directory.conversation(cid)
        assert info is not None
        roles = await directory.roles(cid, [actor, *named])
        return GroupState(cid, info.member_count, roles.get(actor), roles)

    def message(cid: str, sender: str, body: str, encrypted: bool = False) -> MessageSent:
        mid, ts = stamp()
        if encrypted:
            return message_sent(
                mid,
                conversation_id=cid,
                sender_id=sender,
                kind="encrypted",
                body="",
                ts=ts,
                ciphertext=base64.b64encode(body.encode()).decode(),
                algorithm="megolm.v1",
                session_id="s",
            )
        return message_sent(mid, conversation_id=cid, sender_id=sender, body=body, ts=ts)

    eid, ts = stamp()
    created = decide_create(
        CreateGroup(actor_id=owner, title="T", members=tuple(users[1:3]), encrypted=secret),
        event_id=eid,
        ts=ts,
        max_members=100,
    )
    cid = created.conversation_id
    await emit(created)
    dm = direct_conversation_id(users[1], users[5])
    # A direct chat opened before any message in it, written in later, and opened again by
    # the other side (two concurrent opens both reach the log).
    opened = direct_conversation_id(users[2], users[6])

    async def open_direct(actor: str, other: str) -> None:
        eid, ts = stamp()
        await emit(DirectOpened(conversation_id=opened, event_id=eid, actor_id=actor, user_id=other, ts=ts))

    await open_direct(users[2], users[6])
    for step in range(40):
        roll = rng.random()
        members = list(directory.members[cid])
        sent = [e for e in log if isinstance(e, MessageSent) and e.conversation_id == cid]
        if step == 20:
            for actor in (users[6], users[2]):  # both ask at once: both events reach the log
                eid, ts = stamp()
                await emit(EncryptionEnabled(conversation_id=opened, event_id=eid, actor_id=actor, ts=ts))
        if roll < 0.35:
            await emit(message(cid, rng.choice(members), f"g{step}", encrypted=secret))
        elif roll < 0.45 and sent:
            # Receipts arrive in any order; older ones must not move a watermark back.
            _, ts = stamp()
            await emit(
                receipt_recorded(
                    conversation_id=cid,
                    user_id=rng.choice(members),
                    message_id=rng.choice(sent).message_id,
                    status=rng.choice(["delivered", "read"]),
                    ts=ts,
                )
            )
        elif roll < 0.6:
            await emit(message(dm, rng.choice([users[1], users[5]]), f"d{step}"))
            await emit(message(opened, rng.choice([users[2], users[6]]), f"o{step}", encrypted=step > 20))
        elif roll < 0.75:
            eid, ts = stamp()
            new = rng.sample(users, 3)
            await emit(
                decide_add(
                    AddMembers(actor_id=owner, conversation_id=cid, user_ids=tuple(new)),
                    await state(cid, owner, new),
                    event_id=eid,
                    ts=ts,
                    max_members=100,
                )
            )
        elif roll < 0.88:
            others = [u for u in members if u != owner]
            if others:
                target = rng.choice(others)
                actor = rng.choice([owner, target])  # removed, or left
                eid, ts = stamp()
                await emit(
                    decide_remove(
                        RemoveMember(actor_id=actor, conversation_id=cid, user_id=target),
                        await state(cid, actor, [target]),
                        event_id=eid,
                        ts=ts,
                    )
                )
        elif roll < 0.95:
            others = [u for u in members if u != owner]
            if others:
                target = rng.choice(others)
                eid, ts = stamp()
                await emit(
                    decide_role(
                        ChangeRole(
                            actor_id=owner,
                            conversation_id=cid,
                            user_id=target,
                            role=rng.choice(["admin", "member"]),
                        ),
                        await state(cid, owner, [target]),
                        event_id=eid,
                        ts=ts,
                    )
                )
        else:
            eid, ts = stamp()
            await emit(
                decide_rename(
                    RenameGroup(actor_id=owner, conversation_id=cid, title=f"T{step}"),
                    await state(cid, owner, []),
                    event_id=eid,
                    ts=ts,
                )
            )
    return log, directory


@pytest.fixture(scope="module")
def sessions(services: Settings) -> Iterator[tuple[Cql, Cql]]:
    cluster, session = connect_to(services)
    migrate_cassandra(
        session, REBUILD_KEYSPACE, replication=services.cassandra_replication_map(), echo=lambda _: None
    )
    yield Cql(session, services.cassandra_keyspace), Cql(session, REBUILD_KEYSPACE)
    cluster.shutdown()


class _Worker:
    """The persist role's stages: membership (with its roster) and receipts, applied as the
    persist worker applies them: both read models' writes in one round (``streams.combined``)."""

    def __init__(self, cql: Cql) -> None:
        loader = CassandraMembership(cql)
        self.membership = CassandraMembership(cql, Roster(loader.load_roster, threshold=THRESHOLD))
        self.membership.prepare()
        self.receipts = CassandraReceipts(cql)
        self.receipts.prepare()
        self._combined = CombinedWrites(cql, [self.membership, self.receipts], name="persist")
        self._offset = 0

    async def apply(self, events: list[ChatEvent]) -> None:
        positioned = [(0, self._offset + n, event) for n, event in enumerate(events)]
        self._offset += len(events)
        await self._combined.apply_at(positioned)


def _model(cql: Cql) -> _Worker:
    return _Worker(cql)


async def _dump(cql: Cql, events: list[ChatEvent]) -> dict[str, Any]:
    cids = sorted({e.conversation_id for e in events})
    users = sorted({u for e in events for u in _users(e)})
    out: dict[str, Any] = {}
    for cid in cids:
        out[f"conv {cid}"] = [
            tuple(r)
            for r in await cql.execute("SELECT * FROM {ks}.conversations WHERE conversation_id = ?", (cid,))
        ]
        out[f"receipts {cid}"] = sorted(
            tuple(r)
            for r in await cql.execute("SELECT * FROM {ks}.receipts WHERE conversation_id = ?", (cid,))
        )
        out[f"encryption {cid}"] = [
            tuple(r)
            for r in await cql.execute(
                "SELECT * FROM {ks}.conversation_encryption WHERE conversation_id = ?", (cid,)
            )
        ]
        out[f"members {cid}"] = sorted(
            tuple(r)
            for r in await cql.execute("SELECT * FROM {ks}.members WHERE conversation_id = ?", (cid,))
        )
    model = CassandraMembership(cql)
    for uid in users:
        rows = await cql.execute("SELECT * FROM {ks}.user_conversations WHERE user_id = ?", (uid,))
        # A group row's newest-message columns are a cache that the inbox query compares with
        # `conversations` (it shows the newer): right after a worker restart near the fan-out
        # threshold the worker may fill or skip them differently. What users see must match.
        out[f"inbox rows {uid}"] = sorted(
            (r.conversation_id, r.kind, r.joined_ts, r.read_up_to) if r.kind == "group" else tuple(r)
            for r in rows
        )
        out[f"inbox view {uid}"] = (
            await inbox_page(uid, before=None, limit=100, source=model, unread=_no_unread)
        )[0]
    return out


async def _no_unread(conversation_id: str, *, after: int, reader: str, cap: int) -> int:
    return 0  # counted from `messages`, which this test does not build; read_up_to is compared


def _users(event: ChatEvent) -> list[str]:
    found = [
        getattr(event, "actor_id", None),
        getattr(event, "user_id", None),
        getattr(event, "sender_id", None),
    ]
    found += [m.user_id for m in getattr(event, "members", ())]
    if event.conversation_id.startswith("dm:"):
        found += event.conversation_id.split(":")[1:]
    return [u for u in found if u]


@pytest.mark.parametrize("seed", range(1, 11))
async def test_incremental_equals_rebuilt(sessions: tuple[Cql, Cql], seed: int) -> None:
    live_cql, rebuilt_cql = sessions
    events, oracle = await scenario(seed)
    rng = random.Random(seed)

    # Live: the gateway writes membership events through as they happen...
    gateway = CassandraMembership(live_cql)
    gateway.prepare()
    worker = _model(live_cql)
    i = 0
    batches = []
    while i < len(events):
        n = rng.randint(1, 5)
        batches.append(events[i : i + n])
        i += n
    for batch in batches:
        await gateway.apply([e for e in batch if not isinstance(e, MessageSent)])
    # ...and the worker applies the log in small batches, one of them twice (a redelivery
    # after a crash), with a restarted worker (a fresh roster) halfway.
    for k, batch in enumerate(batches):
        if k == len(batches) // 2:
            worker = _model(live_cql)
        await worker.apply(batch)
        if k == len(batches) // 3:
            await worker.apply(batches[k - 1] + batch)

    # Rebuilt: the whole log in one pass into an empty keyspace, as replay applies it: both
    # read models' writes in one round, a group's rows (adds, removals, role changes, in any
    # order of their timestamps) in batches per partition.
    rebuilt = _model(rebuilt_cql)
    # Writes shadowed by a newer one of the same row within the pass are left out.
    statements, requests = rebuilt_cql.statements_sent, rebuilt_cql.requests_sent
    shadowed = rebuilt_cql.statements_shadowed
    await CombinedWrites(rebuilt_cql, [rebuilt.membership, rebuilt.receipts]).apply_at(
        [(0, offset, event) for offset, event in enumerate(events)]
    )
    statements, requests = rebuilt_cql.statements_sent - statements, rebuilt_cql.requests_sent - requests
    shadowed = rebuilt_cql.statements_shadowed - shadowed
    print(f"rebuilt with {statements} statements in {requests} requests; {shadowed} shadowed left out")
    assert requests * 4 < statements  # the writes went out batched
    assert shadowed > 0  # and the rows rewritten in the pass went once

    live_rows, rebuilt_rows = await _dump(live_cql, events), await _dump(rebuilt_cql, events)
    assert live_rows == rebuilt_rows
    # And both are right: they match the write side's own view of the final state.
    [(cid, final)] = oracle.members.items()
    model = CassandraMembership(rebuilt_cql)
    assert dict(await model.members_page(cid, after="", limit=100)) == final
    assert await model.encrypted(cid) == (seed % 2 == 1) == (oracle.encrypted_ids >= {cid})
    assert await model.encrypted(next(e.conversation_id for e in events if isinstance(e, EncryptionEnabled)))
    info = await model.conversation(cid)
    assert info is not None and info.member_count == len(final) == oracle.groups[cid].member_count
    assert info.title == oracle.groups[cid].title
    for uid in {u for e in events for u in _users(e)}:
        row = await model.inbox_row(uid, cid)
        assert (row is not None) == (uid in final), uid
    # Watermarks are the highest ever recorded (a send counts as read), never a later, lower one.
    expected: dict[str, list[int]] = {}
    for e in events:
        if e.conversation_id != cid:
            continue
        if isinstance(e, MessageSent):
            marks = expected.setdefault(e.sender_id, [0, 0])
            marks[0], marks[1] = max(marks[0], e.message_id), max(marks[1], e.message_id)
        elif isinstance(e, ReceiptRecorded):
            marks = expected.setdefault(e.user_id, [0, 0])
            marks[0] = max(marks[0], e.message_id)
            if e.status == "read":
                marks[1] = max(marks[1], e.message_id)
    stored = await CassandraReceipts(rebuilt_cql).page(cid, after="", limit=100)
    assert {r.user_id: [r.delivered or 0, r.read or 0] for r in stored} == expected


def media_scenario(seed: int) -> list[ChatEvent]:
    """Uploads, thumbnails, a deletion, and messages carrying media in two conversations."""
    rng = random.Random(seed)
    ids = Snowflake(rng.randrange(1024))
    events: list[ChatEvent] = []
    uploads: list[MediaStored] = []
    for i in range(12):
        stored = MediaStored(
            media_id=uuid.uuid4().hex,
            uploader_id=f"mu{i % 3}",
            object_key=f"o/{uuid.uuid4().hex}",
            content_type=rng.choice(["image/png", "image/jpeg", "application/pdf"]),
            size=rng.randrange(1, 10**6),
            sha256=f"{i:064x}",
            width=rng.choice([None, 640]),
            height=rng.choice([None, 480]),
            ts=1000 + i,
        )
        uploads.append(stored)
        events.append(stored)
        if stored.content_type.startswith("image/") and rng.random() < 0.7:
            events.append(
                ThumbnailMade(
                    media_id=stored.media_id,
                    thumbnail_key=f"t/{i}" if rng.random() < 0.8 else None,
                    shared_key=rng.choice([stored.object_key, f"s/{i}", None]),
                    location_removed=rng.random() < 0.5,
                    ts=2000 + i,
                )
            )
    for stored in rng.sample(uploads, 8):
        for cid in rng.sample([f"g:{seed}", direct_conversation_id(stored.uploader_id, "peer")], 2):
            mid = ids.next_id()
            ref = MediaRef(media_id=stored.media_id, content_type=stored.content_type, size=stored.size)
            events.append(
                message_sent(
                    mid, conversation_id=cid, sender_id=stored.uploader_id, kind="file", body="", media=ref
                )
            )
    sent = {e.media.media_id for e in events if isinstance(e, MessageSent) and e.media is not None}
    orphan = next(u for u in uploads if u.media_id not in sent)
    events.append(MediaDeleted(media_id=orphan.media_id, reason="orphan", ts=5000))
    return events


async def _media_dump(cql: Cql, events: list[ChatEvent]) -> dict[str, Any]:
    media_ids = sorted({e.media_id for e in events if isinstance(e, MediaStored)})
    out: dict[str, Any] = {}
    for media_id in media_ids:
        out[f"media {media_id}"] = [
            tuple(r) for r in await cql.execute("SELECT * FROM {ks}.media WHERE media_id = ?", (media_id,))
        ]
        out[f"access {media_id}"] = sorted(
            tuple(r)
            for r in await cql.execute("SELECT * FROM {ks}.media_access WHERE media_id = ?", (media_id,))
        )
    return out


@pytest.mark.parametrize("seed", range(1, 4))
async def test_media_incremental_equals_rebuilt(sessions: tuple[Cql, Cql], seed: int) -> None:
    live_cql, rebuilt_cql = sessions
    events = media_scenario(seed)
    rng = random.Random(seed)

    # Live: the gateway writes uploads and access rows through as they happen...
    gateway = CassandraMedia(live_cql)
    gateway.prepare()
    for event in events:
        if isinstance(event, MediaStored):
            await gateway.apply([event])
        elif isinstance(event, MessageSent) and event.media is not None:
            await gateway.grant(event.media.media_id, event.conversation_id, event.message_id)
    # ...and the worker applies the log in small batches, with redeliveries of earlier batches
    # (an upload applied again after its thumbnail must not undo it).
    worker = CassandraMedia(live_cql)
    worker.prepare()
    i = 0
    applied: list[ChatEvent] = []
    while i < len(events):
        batch = events[i : i + rng.randint(1, 4)]
        await worker.apply(batch)
        applied += batch
        if rng.random() < 0.3:
            await worker.apply(applied[: rng.randint(1, len(applied))])
        i += len(batch)

    # Rebuilt: the whole log in one pass into an empty keyspace, as replay applies it.
    rebuilt = CassandraMedia(rebuilt_cql)
    rebuilt.prepare()
    await CombinedWrites(rebuilt_cql, [rebuilt]).apply_at([(0, n, e) for n, e in enumerate(events)])

    live_rows, rebuilt_rows = await _media_dump(live_cql, events), await _media_dump(rebuilt_cql, events)
    assert live_rows == rebuilt_rows
    # And right: thumbnails and deletions as the events say, access where messages went.
    for event in events:
        if isinstance(event, ThumbnailMade):
            row = await rebuilt.get(event.media_id)
            assert row is not None and row.processed and row.thumbnail_key == event.thumbnail_key
        elif isinstance(event, MediaDeleted):
            row = await rebuilt.get(event.media_id)
            assert row is not None and row.deleted
        elif isinstance(event, MessageSent) and event.media is not None:
            assert event.conversation_id in await rebuilt.conversations_of(event.media.media_id)
