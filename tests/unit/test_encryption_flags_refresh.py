"""The gateway's encryption flags read again off the send path (``refresh_ahead``,
projections/encryption.py): a send past half the trust interval keeps its answer and queues its
conversation; the queued ones are read together, 100 to a query; every answer still rests on a
read begun within the interval; a refresh across a forget is not kept; a failed one leaves the
send path to read."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from events import direct_conversation_id
from events.errors import Unavailable
from projections.adapters.cql import Cql
from projections.encryption import WATCHED_PLAIN_TTL_S, EncryptionFlags
from tests.unit.test_encryption_flags_outage import Clock, FlakyCql, Row

HALF = WATCHED_PLAIN_TTL_S / 2


class ManyCql(FlakyCql):
    """Also answers the ``IN`` query, and records each query's conversations; ``gate`` (when
    set) holds every query until it is set, so a test can act while one is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[list[str]] = []
        self.gate: asyncio.Event | None = None

    async def execute(self, cql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self.gate is not None:
            await self.gate.wait()
        (arg,) = params
        if not isinstance(arg, list):
            self.queries.append([arg])
            return await super().execute(cql, params)
        if self.down:
            raise Unavailable("Cassandra is not reachable")
        self.reads += 1
        self.queries.append(list(arg))
        return [Row(cid) for cid in arg if cid in self.encrypted]


def _cid(n: int) -> str:
    return direct_conversation_id("alice", f"user{n:03d}")


def _flags(cql: ManyCql, clock: Clock) -> EncryptionFlags:
    flags = EncryptionFlags(cast(Cql, cql), clock=clock, refresh_ahead=True, gather_s=0.0)
    flags.watch(True)
    return flags


async def _settled(flags: EncryptionFlags) -> None:
    for _ in range(100):
        if flags._refresher is None:
            return
        await asyncio.sleep(0)
    raise AssertionError("the refresh did not end")


async def test_a_conversation_in_use_is_read_again_off_the_path_and_stays_trusted() -> None:
    cql, clock = ManyCql(), Clock()
    flags = _flags(cql, clock)
    assert await flags.encrypted(_cid(1)) is False  # read on the path
    clock.now += HALF - 0.1
    assert await flags.encrypted(_cid(1)) is False
    await _settled(flags)
    assert cql.queries == [[_cid(1)]]  # under half the interval: nothing queued
    clock.now += 0.2  # past half: answered from the cache, read again off the path
    assert await flags.encrypted(_cid(1)) is False
    await _settled(flags)
    assert cql.queries == [[_cid(1)], [_cid(1)]] and flags.refreshes == 1
    clock.now += WATCHED_PLAIN_TTL_S - 0.5  # past the first read's interval, not the refresh's
    assert await flags.encrypted(_cid(1)) is False
    await _settled(flags)
    assert len(cql.queries) == 3 and flags.refreshes == 2  # due again: off the path again
    clock.now += WATCHED_PLAIN_TTL_S + 0.1  # nobody sent meanwhile: the send path reads
    assert await flags.encrypted(_cid(1)) is False
    assert cql.queries[-1] == [_cid(1)] and flags.refreshes == 2


async def test_the_due_conversations_are_read_together_a_hundred_to_a_query() -> None:
    cql, clock = ManyCql(), Clock()
    flags = _flags(cql, clock)
    cids = [_cid(n) for n in range(150)]
    for cid in cids:
        assert await flags.encrypted(cid) is False
    clock.now += HALF + 0.1
    cql.queries.clear()
    for cid in cids:
        assert await flags.encrypted(cid) is False
    assert cql.queries == []  # no read on the sends' path
    await _settled(flags)
    assert cql.queries == [cids[:100], cids[100:]]
    clock.now += HALF + 0.1  # 1.6 s before the refreshed entries run out: still trusted
    cql.queries.clear()
    cql.gate = asyncio.Event()  # the refresh these sends queue waits
    for cid in cids:
        assert await flags.encrypted(cid) is False
    assert cql.queries == []
    cql.gate.set()
    await _settled(flags)


async def test_a_refresh_finds_a_conversation_turned_encrypted_whose_broadcast_was_lost() -> None:
    cql, clock = ManyCql(), Clock()
    flags = _flags(cql, clock)
    assert await flags.encrypted(_cid(1)) is False
    cql.encrypted.add(_cid(1))  # turned on by another gateway; this one missed the broadcast
    clock.now += HALF + 0.1
    assert await flags.encrypted(_cid(1)) is False  # still within the trusted interval
    await _settled(flags)
    assert await flags.encrypted(_cid(1)) is True  # known from the refresh, before it ran out
    assert cql.reads == 2


async def test_a_refresh_in_flight_across_a_forget_is_not_kept() -> None:
    cql, clock = ManyCql(), Clock()
    flags = _flags(cql, clock)
    assert await flags.encrypted(_cid(1)) is False
    clock.now += HALF + 0.1
    cql.gate = asyncio.Event()
    assert await flags.encrypted(_cid(1)) is False
    for _ in range(5):
        await asyncio.sleep(0)  # the refresh's query is in flight
    assert flags._refresher is not None
    flags.watch(False)  # the broadcasts were lost: every "not encrypted" is forgotten
    flags.watch(True)
    cql.gate.set()
    await _settled(flags)
    assert cql.reads == 2
    assert await flags.encrypted(_cid(1)) is False
    assert cql.reads == 3  # the refresh's answer was not kept: the send path read


async def test_a_failed_refresh_leaves_the_entries_to_run_out_and_the_send_path_reads() -> None:
    cql, clock = ManyCql(), Clock()
    flags = _flags(cql, clock)
    assert await flags.encrypted(_cid(1)) is False
    clock.now += HALF + 0.1
    cql.down = True
    assert await flags.encrypted(_cid(1)) is False
    await _settled(flags)  # the failure is logged, not raised
    cql.down = False
    clock.now += HALF
    assert await flags.encrypted(_cid(1)) is False
    assert cql.reads == 2 and flags.refreshes == 1  # the first read, then one on the path


async def test_without_refresh_ahead_nothing_is_read_off_the_path() -> None:
    cql, clock = ManyCql(), Clock()
    flags = EncryptionFlags(cast(Cql, cql), clock=clock)
    flags.watch(True)
    assert await flags.encrypted(_cid(1)) is False
    clock.now += HALF + 0.1
    assert await flags.encrypted(_cid(1)) is False
    assert flags._refresher is None and cql.reads == 1


async def test_closing_stops_a_refresh_that_waits() -> None:
    cql, clock = ManyCql(), Clock()
    flags = EncryptionFlags(cast(Cql, cql), clock=clock, refresh_ahead=True)  # gathers 1 s
    flags.watch(True)
    assert await flags.encrypted(_cid(1)) is False
    clock.now += HALF + 0.1
    assert await flags.encrypted(_cid(1)) is False
    assert flags._refresher is not None
    await flags.aclose()
    assert flags._refresher is None and cql.reads == 1
