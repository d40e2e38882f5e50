"""A synthetic event log for the archive and replay benchmarks (and their tests): direct chats
and groups, messages with receipts, spread over a time span in the past, appended to Kafka the
way the gateway appends them (raw conversation id as the key)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from aiokafka import AIOKafkaProducer

from events import (
    ChatEvent,
    GroupCreated,
    Member,
    MembersAdded,
    MessageSent,
    ReceiptRecorded,
    direct_conversation_id,
    encode_event,
    partition_key,
)
from events.ids import EPOCH_MS, SEQUENCE_BITS, WORKER_BITS
from events.topics import entity_key


def snowflake_at(ms: int, worker: int, seq: int) -> int:
    return ((ms - EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS)) | (worker << SEQUENCE_BITS) | (seq & 0xFFF)


def synthetic_events(
    n: int, *, start_ms: int, span_ms: int, conversations: int = 1000, seed: int = 1, body_chars: int = 60
) -> Iterator[ChatEvent]:
    """``n`` events in time order between ``start_ms`` and ``start_ms + span_ms``: ~90 %
    messages, ~8 % receipts, the rest group changes. Every group is created before use."""
    rng = random.Random(seed)
    users = [f"u{i:05d}" for i in range(max(4, conversations))]
    convs: list[tuple[str, list[str]]] = []
    step = span_ms / max(n, 1)
    last_message: dict[str, int] = {}
    seq = 0
    for i in range(n):
        ms = start_ms + int(i * step)
        seq += 1
        eid = snowflake_at(ms, 7, seq)
        if len(convs) < conversations and (not convs or rng.random() < 0.05):
            if rng.random() < 0.7:
                a, b = rng.sample(users, 2)
                cid = direct_conversation_id(a, b)
                convs.append((cid, sorted({a, b})))
                yield MessageSent(
                    conversation_id=cid,
                    message_id=eid,
                    sender_id=a,
                    sender_device="d1",
                    client_msg_id=f"c{eid}",
                    kind="text",
                    body="x" * body_chars,
                    ts=ms,
                )
                last_message[cid] = eid
            else:
                owner, *others = rng.sample(users, 4)
                cid = f"g:{eid}"
                created = (
                    Member(user_id=owner, role="owner"),
                    *(Member(user_id=u, role="member") for u in others),
                )
                convs.append((cid, [owner, *others]))
                yield GroupCreated(
                    conversation_id=cid,
                    event_id=eid,
                    actor_id=owner,
                    ts=ms,
                    title=f"group {len(convs)}",
                    members=created,
                    member_count=len(created),
                )
            continue
        cid, members = convs[rng.randrange(len(convs))]
        roll = rng.random()
        if roll < 0.08 and cid in last_message:
            yield ReceiptRecorded(
                conversation_id=cid,
                user_id=rng.choice(members),
                device_id="d1",
                message_id=last_message[cid],
                status=rng.choice(("delivered", "read")),
                ts=ms,
            )
        elif roll < 0.09 and cid.startswith("g:"):
            new = f"n{eid}"
            members.append(new)
            yield MembersAdded(
                conversation_id=cid,
                event_id=eid,
                actor_id=members[0],
                ts=ms,
                members=(Member(user_id=new, role="member"),),
                member_count=len(members),
            )
        else:
            sender = rng.choice(members)
            yield MessageSent(
                conversation_id=cid,
                message_id=eid,
                sender_id=sender,
                sender_device="d1",
                client_msg_id=f"c{eid}",
                kind="text",
                body=f"{i} " + "y" * rng.randrange(body_chars // 2, body_chars * 2),
                ts=ms,
            )
            last_message[cid] = eid


async def produce(bootstrap: str, topic: str, events: Iterator[ChatEvent] | list[ChatEvent]) -> int:
    """Append ``events`` to ``topic`` keyed by conversation; returns how many."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    count = 0
    try:
        pending = []
        for event in events:
            pending.append(
                await producer.send(topic, value=encode_event(event), key=partition_key(entity_key(event)))
            )
            count += 1
            if len(pending) >= 20_000:
                for fut in pending:
                    await fut
                pending.clear()
        for fut in pending:
            await fut
    finally:
        await producer.stop()
    return count
