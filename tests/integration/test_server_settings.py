"""The 2-core server settings (tidings/services/cassandra.py, kafka.py) start, and the servers
run with them: a Cassandra and a Kafka of their own (a temporary state folder, free ports; the
shared development servers are not touched), asked for their effective settings.

Cassandra refuses to start on a yaml key its Config.java does not have, so the start alone
proves every key exists in the version the launcher runs (5.0.8); ``system_views.settings``
then shows the values in force. Kafka logs unknown keys and goes on, so its broker config is
read back with DescribeConfigs. Both servers are stopped at the end. About 30-60 s on the
shared 2-core box, most of it Cassandra's start.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench.persist_path import direct_messages
from events import decode_event
from projections.adapters.cql import BatchLimits, Cql, connect_to
from projections.adapters.migrate import migrate_cassandra
from projections.membership import CassandraMembership
from projections.messages import CassandraMessages
from projections.roster import Roster
from projections.sync_log import CassandraSyncLog
from streams.combined import CombinedWrites
from tidings.services import down, up
from tidings.settings import Settings
from tidings.worker import persist_stages

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    state: Path = tmp_path_factory.mktemp("server-settings")
    settings = Settings(
        state_dir=state,
        cassandra_port=_free_port(),
        cassandra_storage_port=_free_port(),
        kafka_bootstrap=f"127.0.0.1:{_free_port()}",
        kafka_controller_port=_free_port(),
    )
    try:
        up(settings, only=["kafka", "cassandra"], echo=_quiet)
        yield settings
    finally:
        down(settings, only=["kafka", "cassandra"], echo=_quiet)


def test_cassandra_runs_with_the_small_pools_and_the_same_durability(servers: Settings) -> None:
    names = (
        "concurrent_reads",
        "concurrent_writes",
        "concurrent_counter_writes",
        "concurrent_materialized_view_writes",
        "native_transport_max_threads",
        "memtable_flush_writers",
        "concurrent_compactors",
        "commitlog_sync",
        "commitlog_sync_period",
        "memtable_allocation_type",
        "memtable.configurations",
        "unlogged_batch_across_partitions_warn_threshold",
        "batch_size_warn_threshold",
        "batch_size_fail_threshold",
    )
    cluster, session = connect_to(servers)
    try:
        rows = session.execute("SELECT name, value FROM system_views.settings")
        got = {row.name: row.value for row in rows if row.name in names}
    finally:
        cluster.shutdown()
    assert got == {
        "concurrent_reads": "4",
        "concurrent_writes": "4",
        "concurrent_counter_writes": "2",
        "concurrent_materialized_view_writes": "2",
        "native_transport_max_threads": "8",
        "memtable_flush_writers": "1",
        "concurrent_compactors": "1",
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "memtable_allocation_type": "offheap_objects",
        # The default configuration inherits the trie one ("trie+"); tables use the default.
        "memtable.configurations": "{default=trie+, skiplist=SkipListMemtable, trie=TrieMemtable}",
        # a persist round's partitions in one batch (projections/adapters/cql.py)
        "unlogged_batch_across_partitions_warn_threshold": "100",
        "batch_size_warn_threshold": "64KiB",
        "batch_size_fail_threshold": "640KiB",
    }
    log = (servers.state_dir / "cassandra" / "logs" / "system.log").read_text()
    assert "approximate time-check task with a precision of 10 milliseconds" in log
    # The JVM runs with 1 ms of timer slack (set before exec, so the pid is the JVM's).
    pid = int((servers.state_dir / "cassandra" / "cassandra.pid").read_text())
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "java"
    assert Path(f"/proc/{pid}/timerslack_ns").read_text().strip() == "1000000"
    # Latency histograms in one stripe (the property is read when the class loads).
    assert "-Dcassandra.dehr_stripe_count=1" in Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def test_cassandra_rows_round_trip_through_the_trie_memtables_and_a_restart(servers: Settings) -> None:
    """Rows with clustering and static columns written to the off-heap trie memtables read
    back, updated and deleted as written, and again after the node restarts (its memtables
    flushed or replayed from the commit log)."""
    keyspace = "memtable_check"

    def rows() -> list[tuple[str, int, str, str]]:
        cluster, session = connect_to(servers)
        try:
            got = session.execute(f"SELECT pk, ck, s, v FROM {keyspace}.t")
            return sorted((r.pk, r.ck, r.s, r.v) for r in got)
        finally:
            cluster.shutdown()

    cluster, session = connect_to(servers)
    try:
        session.execute(
            f"CREATE KEYSPACE {keyspace} "
            "WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            timeout=60,
        )
        session.execute(
            f"CREATE TABLE {keyspace}.t (pk text, ck int, s text static, v text, PRIMARY KEY (pk, ck))",
            timeout=60,
        )
        insert = session.prepare(f"INSERT INTO {keyspace}.t (pk, ck, s, v) VALUES (?, ?, ?, ?)")
        for i in range(300):
            session.execute(insert, (f"p{i % 7}", i, f"s{i % 7}", "x" * (i % 50)))
        session.execute(f"UPDATE {keyspace}.t SET v = 'new' WHERE pk = 'p0' AND ck = 0")
        session.execute(f"DELETE FROM {keyspace}.t WHERE pk = 'p1' AND ck = 1")
    finally:
        cluster.shutdown()
    want = sorted(
        (f"p{i % 7}", i, f"s{i % 7}", "new" if i == 0 else "x" * (i % 50)) for i in range(300) if i != 1
    )
    assert rows() == want
    down(servers, only=["cassandra"], echo=_quiet)
    up(servers, only=["cassandra"], echo=_quiet)
    assert rows() == want


async def test_a_persist_round_goes_as_one_batch_within_the_nodes_thresholds(
    servers: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """On this node (thresholds raised) the rows of a 200 msgs/s persist round (12 1:1 messages,
    ~60 partitions) go as one request and its watermarks (12 log partitions) as one more, where
    upstream's thresholds took ~13 and 12; the node warns about none, and every row lands."""
    cluster, session = connect_to(servers)
    try:
        keyspace = "tidings_batches"
        migrate_cassandra(session, keyspace, replication=servers.cassandra_replication_map(), echo=_quiet)
        cql = Cql(session, keyspace)
        assert await cql.batch_limits() == BatchLimits(100, 64 * 1024, 640 * 1024)
        roster = Roster(CassandraMembership(cql).load_roster, threshold=servers.fanout_threshold)
        combined = CombinedWrites(
            cql,
            persist_stages(cql, servers, roster),
            name="persist",
            partitions_per_batch=servers.cassandra_batch_partitions,
        )
        events = direct_messages(12, 12, "y" * 100)
        positioned = [(n, 1_000 + n, e) for n, e in enumerate(events)]  # log partitions 0-11
        requests = cql.requests_sent
        with caplog.at_level(logging.WARNING, logger="cassandra"):
            await combined.apply_at(positioned)
        assert [r.getMessage() for r in caplog.records if "warning" in r.getMessage().lower()] == []
        assert cql.requests_sent - requests == 2  # the round, then the watermarks

        messages, members, log = (
            CassandraMessages(cql, servers.message_bucket_ms),
            CassandraMembership(cql),
            CassandraSyncLog(cql),
        )
        heads = await log.heads([e.conversation_id for e in events])
        for _, offset, event in positioned:
            page = await messages.page(event.conversation_id, before=None, after=None, limit=10)
            assert [int(m["message_id"]) for m in page] == [event.message_id]
            assert heads[event.conversation_id] == offset
            logged = await log.between(event.conversation_id, 0, 10_000, 10)
            assert [(o, decode_event(raw)) for o, raw in logged] == [(offset, event)]
            recipient = next(u for u in event.conversation_id.split(":")[1:] if u != event.sender_id)
            row = await members.inbox_row(recipient, event.conversation_id)
            assert row is not None and row.last_message_id == event.message_id
        assert await log.watermarks() == {p: offset for p, offset, _ in positioned}
    finally:
        cluster.shutdown()


async def test_a_batch_the_node_refuses_as_too_large_makes_the_client_ask_again(servers: Settings) -> None:
    """A client holding thresholds above the node's (a node restarted with lower ones) sends a
    batch the node refuses; the error reaches the caller (the projector then applies the batch
    event by event), and the next round reads the node's thresholds again and fits them."""
    from cassandra import InvalidRequest

    cluster, session = connect_to(servers)
    try:
        keyspace = "tidings_batches"
        migrate_cassandra(session, keyspace, replication=servers.cassandra_replication_map(), echo=_quiet)
        cql = Cql(session, keyspace)
        cql._limits = BatchLimits(1_000, 4 * 1024**2, 4 * 1024**2)  # believed; the node says 640 KiB
        insert = "INSERT INTO {ks}.batch_refusal_test (k, v) VALUES (?, ?)"
        session.execute(
            f"CREATE TABLE IF NOT EXISTS {keyspace}.batch_refusal_test (k int PRIMARY KEY, v text)"
        )
        rows = [(insert, (k, "z" * 4_000)) for k in range(250)]  # ~1 MB over 250 partitions
        with pytest.raises(InvalidRequest, match=r"(?i)batch too large"):
            await cql.execute_all(rows, partitions_per_batch=1_000)
        await cql.execute_all(rows, partitions_per_batch=1_000)
        assert await cql.batch_limits() == BatchLimits(100, 64 * 1024, 640 * 1024)
        count = session.execute(f"SELECT count(*) FROM {keyspace}.batch_refusal_test").one()[0]
        assert count == 250
    finally:
        cluster.shutdown()


async def _broker_config(bootstrap: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "1")])
    finally:
        await admin.close()
    ((code, message, _type, _name, entries, *_),) = response.resources
    assert code == 0, message
    return {name: value for name, value, *_ in entries}


def test_kafka_runs_with_the_small_pools_and_default_flushing(servers: Settings) -> None:
    config = asyncio.run(_broker_config(servers.kafka_bootstrap))
    assert {key: config[key] for key in ("num.network.threads", "num.io.threads", "background.threads")} == {
        "num.network.threads": "1",
        "num.io.threads": "2",
        "background.threads": "2",
    }
    assert config["metadata.max.idle.interval.ms"] == "5000"
    assert config["log.flush.interval.messages"] == str(2**63 - 1)  # Kafka's default: no forced flush
