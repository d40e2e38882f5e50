"""The persist worker's round of writes on the real Cassandra (issue #19): small partitions share
UNLOGGED batches across partition keys, which Cassandra checks (it warns past 10 partitions or
5 KiB, and the driver logs each warning); every row still lands."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from bench.persist_path import direct_messages
from events import MessageSent, decode_event
from projections.adapters.cql import Cql, connect_to
from projections.adapters.migrate import migrate_cassandra
from projections.membership import CassandraMembership
from projections.messages import CassandraMessages
from projections.roster import Roster
from projections.sync_log import CassandraSyncLog
from streams.combined import CombinedWrites
from tidings.settings import Settings
from tidings.worker import persist_stages


@pytest.fixture(scope="module")
def cql(services: Settings) -> Iterator[Cql]:
    """A keyspace of this module's own: its rows sit at partition 3 offsets 9,000,000,000 and up,
    and in the shared test keyspace that watermark sent every later sync's cursor past the real
    log of partition 3 (the e2e tier's sync tests then never caught up)."""
    cluster, session = connect_to(services)
    keyspace = services.cassandra_keyspace + "_persist_round"
    replication = services.cassandra_replication_map()
    migrate_cassandra(session, keyspace, replication=replication, echo=lambda _: None)
    yield Cql(session, keyspace)
    cluster.shutdown()


@pytest.mark.parametrize("body", ["short", "y" * 200, "x" * 2000])
async def test_a_round_of_1to1_messages_lands_whole_with_few_requests_and_no_server_warning(
    cql: Cql, services: Settings, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    roster = Roster(CassandraMembership(cql).load_roster, threshold=services.fanout_threshold)
    combined = CombinedWrites(cql, persist_stages(cql, services, roster), name="persist")
    events = direct_messages(150, 40, body)
    positioned = [(3, 9_000_000_000 + n, e) for n, e in enumerate(events)]
    requests, statements = cql.requests_sent, cql.statements_sent
    with caplog.at_level(logging.WARNING, logger="cassandra"):
        for start in range(0, len(positioned), 50):
            await combined.apply_at(positioned[start : start + 50])
        # a redelivered batch (a restarted worker's first) writes the same rows again
        await combined.apply_at(positioned[:50])
    requests, statements = cql.requests_sent - requests, cql.statements_sent - statements
    assert [r.getMessage() for r in caplog.records if "warning" in r.getMessage().lower()] == []
    if len(body) <= 200:
        # fewer requests than messages applied (a 1:1 message's five partitions were five
        # requests when each went alone)
        assert requests < len(events) + 50, (requests, statements)

    messages = CassandraMessages(cql, services.message_bucket_ms)
    members = CassandraMembership(cql)
    log = CassandraSyncLog(cql)
    by_conversation: dict[str, list[tuple[int, MessageSent]]] = {}
    for _, offset, event in positioned:
        by_conversation.setdefault(event.conversation_id, []).append((offset, event))
    heads = await log.heads(sorted(by_conversation))
    for cid, sent in by_conversation.items():
        page = await messages.page(cid, before=None, after=None, limit=100)
        assert [int(m["message_id"]) for m in page] == [e.message_id for _, e in sent]
        assert all(m["body"] == body for m in page)
        assert heads[cid] == sent[-1][0]
        logged = await log.between(cid, 0, 10_000_000_000, 100)
        assert [(o, decode_event(raw)) for o, raw in logged] == sent
        last = sent[-1][1]
        recipient = next(u for u in cid.split(":")[1:] if u != last.sender_id)
        row = await members.inbox_row(recipient, cid)
        assert row is not None and row.last_message_id == last.message_id
    assert (await log.watermarks())[3] == positioned[-1][1]
