"""Replication is configuration: the Kafka topics' replication factor and min.insync.replicas,
and the Cassandra keyspace's replication map, come from settings (defaults: one node)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError
from cassandra import InvalidRequest, ReadFailure
from pydantic import ValidationError

from projections.adapters.migrate import migrate_cassandra
from projections.schema import replication_literal, same_replication
from tidings.migrate import create_log_topics, new_topic
from tidings.settings import Settings

NTS = '{"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 2}'


def test_defaults_are_what_one_node_needs() -> None:
    settings = Settings()
    assert (settings.kafka_replication, settings.kafka_min_insync_replicas) == (1, 1)
    assert settings.cassandra_replication_map() == {"class": "SimpleStrategy", "replication_factor": 1}


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_KAFKA_REPLICATION", "3")
    monkeypatch.setenv("TIDINGS_KAFKA_MIN_INSYNC_REPLICAS", "2")
    monkeypatch.setenv("TIDINGS_CASSANDRA_REPLICATION", NTS)
    settings = Settings()
    assert (settings.kafka_replication, settings.kafka_min_insync_replicas) == (3, 2)
    assert settings.cassandra_replication_map() == {"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 2}


def test_the_replication_factor_setting_still_works() -> None:
    assert Settings(cassandra_replication_factor=3).cassandra_replication_map() == {
        "class": "SimpleStrategy",
        "replication_factor": 3,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"class": "LocalStrategy"},
        {"class": "NetworkTopologyStrategy"},
        {"class": "NetworkTopologyStrategy", "dc1": 0},
        {"class": "NetworkTopologyStrategy", "dc1": "three"},
        {"class": "SimpleStrategy", "replication_factor": 1, "dc1": 3},
        {"class": "NetworkTopologyStrategy", "dc1': 1}; DROP KEYSPACE tidings; --": 1},
        {"replication_factor": 1},
    ],
)
def test_a_replication_map_cassandra_would_refuse_is_refused_at_start(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(cassandra_replication=bad)


def test_min_insync_above_the_replication_is_refused() -> None:
    with pytest.raises(ValidationError, match="no acks=all write"):
        Settings(kafka_replication=1, kafka_min_insync_replicas=2)


def test_topics_are_made_as_the_settings_say() -> None:
    topic = new_topic(Settings(kafka_replication=3, kafka_min_insync_replicas=2), "p.conversation-events")
    assert (topic.name, topic.num_partitions, topic.replication_factor) == ("p.conversation-events", 12, 3)
    assert topic.topic_configs == {
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "min.insync.replicas": "2",
    }
    assert new_topic(Settings(), "t", 3).replication_factor == 1
    assert new_topic(Settings(), "t", 3).topic_configs["min.insync.replicas"] == "1"


class _Admin:
    def __init__(self, *errors: tuple[str, int, str]) -> None:
        self.errors = list(errors)
        self.created: list[Any] = []

    async def create_topics(self, topics: list[Any]) -> Any:
        self.created += topics
        return SimpleNamespace(topic_errors=self.errors)


async def test_a_topic_the_broker_refuses_is_an_error_not_silence() -> None:
    # aiokafka returns the broker's per-topic errors; e.g. 3 replicas on a one-broker cluster.
    refused = _Admin(("t", InvalidReplicationFactorError.errno, "larger than available brokers: 1"))
    with pytest.raises(InvalidReplicationFactorError, match="cannot create topic t"):
        await create_log_topics(refused, [new_topic(Settings(), "t")])
    # One that a concurrent migrate created first is fine.
    await create_log_topics(_Admin(("t", TopicAlreadyExistsError.errno, "")), [new_topic(Settings(), "t")])


def test_cql_of_a_replication_map() -> None:
    assert replication_literal(Settings().cassandra_replication_map()) == (
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    nts = Settings(cassandra_replication={"class": "NetworkTopologyStrategy", "dc1": "3", "dc2": 2})
    assert replication_literal(nts.cassandra_replication_map()) == (
        "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
    )
    # As system_schema.keyspaces shows one: full class name, text values.
    shown = {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "dc1": "3", "dc2": "2"}
    assert same_replication(shown, nts.cassandra_replication_map())
    assert not same_replication(shown, {"class": "NetworkTopologyStrategy", "dc1": 3})


class _Session:
    """Records statements; the keyspace shows ``replication`` and has every migration applied."""

    def __init__(self, replication: dict[str, str], *, agreed: bool = True) -> None:
        self.statements: list[str] = []
        self.replication = replication
        self.agreement_waits = 0
        self.cluster = SimpleNamespace(
            control_connection=SimpleNamespace(wait_for_schema_agreement=self._agree)
        )
        self._agreed = agreed

    def _agree(self, wait_time: float) -> bool:
        self.agreement_waits += 1
        return self._agreed

    def execute(self, cql: str, params: Any = None, timeout: float = 0) -> Any:
        from projections.schema import MIGRATIONS

        self.statements.append(cql)
        if "system_schema.keyspaces" in cql:
            return SimpleNamespace(one=lambda: SimpleNamespace(replication=self.replication))
        if "schema_migrations" in cql and cql.startswith("SELECT"):
            return [SimpleNamespace(version=m.version) for m in MIGRATIONS]
        return []


def test_the_keyspace_is_created_with_the_settings_map_and_a_different_one_is_reported() -> None:
    wanted = Settings(cassandra_replication={"class": "NetworkTopologyStrategy", "datacenter1": 3})
    same = _Session({"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "datacenter1": "3"})
    said: list[str] = []
    migrate_cassandra(same, "ks", replication=wanted.cassandra_replication_map(), echo=said.append)
    assert same.statements[0] == (
        "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = "
        "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}"
    )
    assert said == []
    other = _Session({"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "1"})
    migrate_cassandra(other, "ks", replication=wanted.cassandra_replication_map(), echo=said.append)
    assert len(said) == 1 and "WARNING keyspace ks" in said[0] and "ALTER KEYSPACE ks" in said[0]
    assert not any(s.startswith("ALTER") for s in other.statements)  # an operator's step


def test_each_schema_change_waits_for_every_node_and_a_disagreement_stops_the_migration() -> None:
    """The driver's own 10 s wait went on regardless: on a just-started cluster the next statement
    met a node without the new keyspace."""
    wanted = Settings().cassandra_replication_map()
    agreeing = _Session({"class": "SimpleStrategy", "replication_factor": "1"})
    migrate_cassandra(agreeing, "ks", replication=wanted, echo=lambda _: None)
    ddl = [s for s in agreeing.statements if s.startswith("CREATE")]
    assert agreeing.agreement_waits == len(ddl) > 0
    split = _Session({"class": "SimpleStrategy", "replication_factor": "1"}, agreed=False)
    with pytest.raises(RuntimeError, match="did not agree"):
        migrate_cassandra(split, "ks", replication=wanted, echo=lambda _: None)
    assert len(split.statements) == 1  # nothing after the keyspace went to a node without it


class _LateSchema(_Session):
    """A cluster that does not know the newest schema yet for the first ``misses`` statements
    naming ``names``: each of them fails with ``error()``, as a node or replica that has not
    learned it says so."""

    def __init__(self, misses: int, names: str, error: Callable[[], Exception]) -> None:
        super().__init__({"class": "SimpleStrategy", "replication_factor": "1"})
        self.misses = misses
        self.names = names
        self.error = error

    def execute(self, cql: str, params: Any = None, timeout: float = 0) -> Any:
        if self.names in cql and self.misses > 0:
            self.misses -= 1
            self.statements.append(cql)
            raise self.error()
        return super().execute(cql, params, timeout)


def _late_node(misses: int) -> _LateSchema:
    """A coordinator that does not know the new keyspace."""
    return _LateSchema(
        misses,
        "schema_migrations",
        lambda: InvalidRequest(
            "Error from server: code=2200 [Invalid query] message=\"Keyspace 'ks' doesn't exist\""
        ),
    )


def _late_replica(misses: int, reason: str = "INCOMPATIBLE_SCHEMA") -> _LateSchema:
    """A replica that does not know the new table: the coordinator knows it, so the read fails
    there, not as an invalid request."""
    return _LateSchema(
        misses,
        "SELECT version FROM ks.schema_migrations",
        lambda: ReadFailure(
            'Error from server: code=1300 [Replica(s) failed to execute read] message="Operation '
            f'failed - received 0 responses and 1 failures: {reason} from /127.0.0.3:7000"',
            consistency=None,
            required_responses=2,
            received_responses=0,
            failures=1,
        ),
    )


def _migrate(session: _Session, slept: list[float]) -> None:
    """Migrate ``session`` to the default replication, its retries' sleeps kept in ``slept``."""
    wanted = Settings().cassandra_replication_map()
    migrate_cassandra(session, "ks", replication=wanted, echo=lambda _: None, sleep=slept.append)


def test_a_statement_that_meets_a_node_without_the_new_keyspace_is_tried_again() -> None:
    """CI once: "Keyspace ... doesn't exist" on CREATE TABLE right after CREATE KEYSPACE, on a
    3-node cluster just started, although the driver had said the nodes agreed."""
    slept: list[float] = []
    late = _late_node(misses=2)
    _migrate(late, slept)
    creates = [s for s in late.statements if s.startswith("CREATE TABLE IF NOT EXISTS ks.schema_migrations")]
    assert len(creates) == 3 and slept == [0.5, 1.0]
    # It asks for agreement again before each retry.
    assert late.agreement_waits == 2 + 2
    # A node that never learns it: the error, after the retries.
    never = _late_node(misses=100)
    with pytest.raises(InvalidRequest, match="doesn't exist"):
        _migrate(never, slept)
    assert never.misses == 100 - 9


def test_a_read_that_meets_a_replica_without_the_new_table_is_tried_again() -> None:
    """CI once: the first read of ``schema_migrations`` on a 3-node cluster just started failed
    with INCOMPATIBLE_SCHEMA from a replica that learned the table 1.5 s later."""
    slept: list[float] = []
    late = _late_replica(misses=2)
    _migrate(late, slept)
    reads = [s for s in late.statements if s.startswith("SELECT version FROM ks.schema_migrations")]
    assert len(reads) == 3 and slept == [0.5, 1.0]
    # Another failure of a replica is the caller's at once.
    other = _late_replica(misses=1, reason="READ_TOO_MANY_TOMBSTONES")
    with pytest.raises(ReadFailure, match="TOMBSTONES"):
        _migrate(other, slept)
    assert slept == [0.5, 1.0]


def test_other_invalid_requests_are_not_retried() -> None:
    class Broken(_Session):
        def execute(self, cql: str, params: Any = None, timeout: float = 0) -> Any:
            self.statements.append(cql)
            raise InvalidRequest("line 1:7 no viable alternative")

    broken = Broken({"class": "SimpleStrategy", "replication_factor": "1"})
    slept: list[float] = []
    with pytest.raises(InvalidRequest, match="no viable"):
        migrate_cassandra(
            broken, "ks", replication=Settings().cassandra_replication_map(), sleep=slept.append
        )
    assert len(broken.statements) == 1 and slept == []
