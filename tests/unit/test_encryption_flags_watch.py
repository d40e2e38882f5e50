"""The encryption flags' trust in "not encrypted" while the process hears the gateways'
broadcasts (projections/encryption.py, docs/e2ee.md): the longer interval applies only while
watching; starting or stopping to watch forgets every cached "not encrypted"; a read in flight
across a broadcast of its conversation, or across a forget, is not kept."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from events import direct_conversation_id
from projections.adapters.cql import Cql
from projections.encryption import PLAIN_TTL_S, WATCHED_PLAIN_TTL_S, EncryptionFlags
from tests.unit.test_encryption_flags_outage import Clock, FlakyCql

CID = direct_conversation_id("alice", "bob")


class GatedCql(FlakyCql):
    """Reads wait for ``gate`` when it is set: a read in flight the test can act during."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def execute(self, cql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self.gate is not None:
            self.started.set()
            await self.gate.wait()
        return await super().execute(cql, params)


def _flags(cql: FlakyCql, clock: Clock) -> EncryptionFlags:
    return EncryptionFlags(cast(Cql, cql), clock=clock)


async def test_not_encrypted_is_trusted_longer_only_while_watching() -> None:
    cql, clock = FlakyCql(), Clock()
    flags = _flags(cql, clock)
    assert await flags.encrypted(CID) is False
    clock.now += PLAIN_TTL_S + 0.01
    assert await flags.encrypted(CID) is False
    assert cql.reads == 2  # not watching: one read a second
    flags.watch(True)
    assert await flags.encrypted(CID) is False
    assert cql.reads == 3  # starting to watch forgot the earlier read
    clock.now += WATCHED_PLAIN_TTL_S - 0.5
    assert await flags.encrypted(CID) is False
    assert cql.reads == 3  # trusted for the watched interval
    cql.encrypted.add(CID)  # turned on elsewhere, its broadcast lost: found by the next read
    clock.now += 0.51
    assert await flags.encrypted(CID) is True
    assert cql.reads == 4


async def test_a_broadcast_makes_a_cached_not_encrypted_encrypted_at_once() -> None:
    cql, clock = FlakyCql(), Clock()
    flags = _flags(cql, clock)
    flags.watch(True)
    assert await flags.encrypted(CID) is False
    flags.heard(CID)
    assert await flags.encrypted(CID) is True
    assert cql.reads == 1


async def test_losing_the_broadcasts_forgets_not_encrypted_and_shortens_the_trust() -> None:
    cql, clock = FlakyCql(), Clock()
    flags = _flags(cql, clock)
    flags.watch(True)
    assert await flags.encrypted(CID) is False
    flags.watch(False)  # the pub/sub connection went: what was broadcast meanwhile is lost
    cql.encrypted.add(CID)
    assert await flags.encrypted(CID) is True
    other = direct_conversation_id("carol", "dave")
    assert await flags.encrypted(other) is False
    clock.now += PLAIN_TTL_S + 0.01
    assert await flags.encrypted(other) is False
    assert cql.reads == 4  # CID twice (forgotten), other twice (one read a second again)


async def test_a_read_in_flight_across_a_broadcast_of_its_conversation_is_not_kept() -> None:
    cql, clock = GatedCql(), Clock()
    flags = _flags(cql, clock)
    flags.watch(True)
    cql.gate = asyncio.Event()
    read = asyncio.create_task(flags.encrypted(CID))
    await cql.started.wait()  # the read saw no row (the writer had not written it yet) ...
    flags.heard(CID)  # ... and the broadcast arrives before its answer
    cql.gate.set()
    assert await read is True
    cql.gate = None
    assert await flags.encrypted(CID) is True


async def test_a_read_in_flight_across_a_reconnect_is_not_kept() -> None:
    cql, clock = GatedCql(), Clock()
    flags = _flags(cql, clock)
    flags.watch(True)
    cql.gate = asyncio.Event()
    read = asyncio.create_task(flags.encrypted(CID))
    await cql.started.wait()
    flags.watch(False)  # reconnecting: a broadcast of CID may have been missed
    flags.watch(True)
    cql.gate.set()
    assert await read is False  # its own answer stands ...
    cql.gate = None
    assert await flags.encrypted(CID) is False
    assert cql.reads == 2  # ... but is not trusted for the next send
