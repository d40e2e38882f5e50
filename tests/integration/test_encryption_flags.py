"""The encryption read model on the real Cassandra, as the gateway reads it on every send: a
conversation seen encrypted stays so for the process; "not encrypted" is trusted for the
documented second only; the gateway that wrote the change through knows at once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from events import EncryptionEnabled, direct_conversation_id
from projections.adapters.cql import Cql, connect_to
from projections.encryption import PLAIN_TTL_S, EncryptionFlags
from projections.membership import CassandraMembership
from tidings.settings import Settings


@pytest.fixture(scope="module")
def cql(services: Settings) -> Iterator[Cql]:
    cluster, session = connect_to(services)
    yield Cql(session, services.cassandra_keyspace)
    cluster.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _enabled(cid: str) -> EncryptionEnabled:
    return EncryptionEnabled(conversation_id=cid, event_id=1, actor_id="a", ts=1)


async def test_other_processes_see_a_direct_chat_encrypted_within_the_plain_ttl(cql: Cql) -> None:
    cid = direct_conversation_id(f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}")
    clock = Clock()
    other = EncryptionFlags(cql, clock=clock)  # another gateway
    other.prepare()
    writer = CassandraMembership(cql)  # the gateway that turns it on, writing through
    writer.prepare()
    assert await other.encrypted(cid) is False
    await writer.apply([_enabled(cid)])
    assert await writer.encrypted(cid) is True  # the writer at once
    assert await other.encrypted(cid) is False  # still trusting its read, within the second
    clock.now += PLAIN_TTL_S + 0.01
    assert await other.encrypted(cid) is True
    assert await other.encrypted_of([cid, "dm:x:y"]) == {cid}
    # A fresh process reads it from the table; applying the event again changes nothing.
    await writer.apply([_enabled(cid)])
    fresh = EncryptionFlags(cql)
    fresh.prepare()
    assert await fresh.encrypted(cid) is True
    rows: list[Any] = await cql.execute(
        "SELECT * FROM {ks}.conversation_encryption WHERE conversation_id = ?", (cid,)
    )
    assert [tuple(r) for r in rows] == [(cid, True)]
