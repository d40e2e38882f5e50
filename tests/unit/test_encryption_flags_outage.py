"""The encryption flags through a Cassandra outage: a conversation last read as "not encrypted"
keeps that answer (direct chats stay writable), one never read is ``Unavailable``, one known
encrypted stays encrypted, and the process that turns encryption on knows it even when its
write-through fails."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest

from events import EncryptionEnabled, direct_conversation_id
from events.errors import Unavailable
from projections.adapters.cql import Cql
from projections.encryption import EncryptionFlags
from projections.membership import CassandraMembership


class Row:
    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id


class FlakyCql:
    """The table ``conversation_encryption`` as a set, and a switch that makes every call fail."""

    def __init__(self) -> None:
        self.encrypted: set[str] = set()
        self.down = False
        self.reads = 0

    def prepare(self, cql: str) -> None:
        pass

    async def execute(self, cql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self.down:
            raise Unavailable("Cassandra is not reachable")
        self.reads += 1
        (cid,) = params
        return [Row(cid)] if cid in self.encrypted else []

    async def execute_all(self, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        if self.down:
            raise Unavailable("Cassandra is not reachable")
        for _, (cid,) in statements:
            self.encrypted.add(cid)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CID = direct_conversation_id("alice", "bob")


async def test_a_chat_last_read_plain_stays_writable_through_an_outage() -> None:
    cql, clock = FlakyCql(), Clock()
    flags = EncryptionFlags(cast(Cql, cql), clock=clock)
    assert await flags.encrypted(CID) is False
    cql.down = True
    clock.now += 60  # long past the 1 s of trust: a read is due, and fails
    assert await flags.encrypted(CID) is False
    assert flags.stale_answers == 1
    with pytest.raises(Unavailable):
        await flags.encrypted(direct_conversation_id("carol", "dave"))  # never read: no answer
    cql.down = False
    cql.encrypted.add(CID)  # turned on elsewhere during the outage
    assert await flags.encrypted(CID) is True
    cql.down = True
    clock.now += 60
    assert await flags.encrypted(CID) is True  # known encrypted needs no read, ever
    assert flags.stale_answers == 1


async def test_the_last_known_answer_follows_the_newest_read() -> None:
    cql, clock = FlakyCql(), Clock()
    flags = EncryptionFlags(cast(Cql, cql), clock=clock)
    assert await flags.encrypted(CID) is False
    cql.encrypted.add(CID)
    clock.now += 2
    assert await flags.encrypted(CID) is True
    cql.down = True
    clock.now += 2
    assert await flags.encrypted(CID) is True


async def test_the_gateway_that_turns_encryption_on_knows_it_when_the_write_through_fails() -> None:
    cql = FlakyCql()
    membership = CassandraMembership(cast(Cql, cql))
    assert await membership.encrypted(CID) is False
    cql.down = True
    event = EncryptionEnabled(conversation_id=CID, event_id=7, actor_id="alice", ts=7)
    with pytest.raises(Unavailable):
        await membership.apply([event])
    assert await membership.encrypted(CID) is True
    assert CID not in cql.encrypted  # the worker writes it from the log when Cassandra is back
