"""The server settings the launcher writes for a 2-core box (tidings/services/cassandra.py,
kafka.py): the thread pools and wake-up intervals chosen in docs/operations.md ("Cassandra and
Kafka on 2 cores"), and that none of it touches durability — Cassandra's commit log stays
periodic every 10 s with the system tables' flag only on the development node, Kafka keeps its
default log flushing. Nothing is started here: ``launch`` runs with the process spawn captured.
tests/integration/test_server_settings.py starts a Cassandra and a Kafka with this config and
reads the values back from the servers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidings.services import _process
from tidings.services import cassandra as cassandra_module
from tidings.services import cluster as profile
from tidings.services.cassandra import Cassandra
from tidings.services.kafka import Kafka
from tidings.settings import Settings

CASSANDRA_THREADS = {
    "concurrent_reads": 4,
    "concurrent_writes": 4,
    "concurrent_counter_writes": 2,
    "concurrent_materialized_view_writes": 2,
    "native_transport_max_threads": 8,
    "memtable_flush_writers": 1,
    "concurrent_compactors": 1,
}
KAFKA_THREADS = {
    "num.network.threads": "1",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
}


def _properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")


def _launch_cassandra(node: Cassandra, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[str]]:
    """Run the real ``launch`` with jars and the spawn faked; return the yaml it wrote and argv."""
    spawned: list[list[str]] = []

    def spawn(argv: Sequence[str], **_: Any) -> int:
        spawned.append(list(argv))
        return 4242

    monkeypatch.setattr(cassandra_module, "ensure_jars", lambda *a, **k: node.dir / "lib")
    monkeypatch.setattr(cassandra_module, "find_jar", lambda lib, name: lib / f"{name}.jar")
    monkeypatch.setattr(_process, "spawn", spawn)
    assert node.launch(lambda _m: None) == 4242
    (argv,) = spawned
    config = yaml.safe_load((node.dir / "conf" / "cassandra.yaml").read_text())
    return config, argv


def test_cassandra_gets_small_thread_pools(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = _launch_cassandra(Cassandra(settings), monkeypatch)
    assert {key: config[key] for key in CASSANDRA_THREADS} == CASSANDRA_THREADS


def test_cassandra_durability_is_unchanged(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    config, argv = _launch_cassandra(Cassandra(settings), monkeypatch)
    assert config["commitlog_sync"] == "periodic"
    assert config["commitlog_sync_period"] == "10000ms"
    # No other commit-log or fsync key: the defaults of 5.0 stand.
    assert [k for k in config if "commitlog" in k or "fsync" in k] == [
        "commitlog_sync",
        "commitlog_sync_period",
    ]
    # The development node keeps its fast, non-durable system tables; nothing else is unsafe.
    assert [a for a in argv if "unsafe" in a] == ["-Dcassandra.unsafesystem=true"]


def test_cassandra_clock_ticks_every_10_ms(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _, argv = _launch_cassandra(Cassandra(settings), monkeypatch)
    assert "-Dcassandra.approximate_time_precision_ms=10" in argv
    # The JVM's own thread counts are left to its ergonomics (2 GC, 1 concurrent GC, 2 JIT
    # threads on 2 cores; docs/operations.md), so no flag pins them to this box.
    assert not [a for a in argv if a.startswith(("-XX:ActiveProcessorCount", "-XX:ParallelGCThreads"))]


MEMTABLES = {
    "memtable_allocation_type": "offheap_objects",
    "memtable": {
        "configurations": {
            "skiplist": {"class_name": "SkipListMemtable"},
            "trie": {"class_name": "TrieMemtable"},
            "default": {"inherits": "trie"},
        }
    },
}


def test_cassandra_memtables_are_tries_off_the_heap(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every table without a memtable option of its own (all of Tidings') takes the ``default``
    configuration: the trie memtable, its cells in the off-heap pool; the pools' sizes stay."""
    config, _ = _launch_cassandra(Cassandra(settings), monkeypatch)
    assert {key: config[key] for key in MEMTABLES} == MEMTABLES
    assert config["memtable_heap_space"] == "128MiB" and config["memtable_offheap_space"] == "128MiB"


BATCHES = {
    "unlogged_batch_across_partitions_warn_threshold": 100,
    "batch_size_warn_threshold": "64KiB",
    "batch_size_fail_threshold": "640KiB",
}


def test_cassandra_takes_a_persist_rounds_partitions_in_one_batch(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thresholds the client reads back (projections/adapters/cql.py): a 200 msgs/s round
    (~60 partitions, ~17 KB) fits below the warnings, and the refusal is 10 times the warning."""
    config, _ = _launch_cassandra(Cassandra(settings), monkeypatch)
    assert {key: config[key] for key in BATCHES} == BATCHES


def test_cassandra_histograms_keep_one_stripe(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _, argv = _launch_cassandra(Cassandra(settings), monkeypatch)
    assert "-Dcassandra.dehr_stripe_count=1" in argv


def test_a_cluster_node_takes_the_same_pools_and_stays_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(profile.STATE_ENV, str(tmp_path / "cluster"))
    settings = profile.cluster_settings(Settings(state_dir=tmp_path / "single"))
    config, argv = _launch_cassandra(profile.CassandraNode(settings, 1), monkeypatch)
    assert {key: config[key] for key in CASSANDRA_THREADS} == CASSANDRA_THREADS
    assert {key: config[key] for key in MEMTABLES} == MEMTABLES
    # every node holds every partition at replication 3: a coordinator forwards no extra hop
    assert {key: config[key] for key in BATCHES} == BATCHES
    assert config["commitlog_sync"] == "periodic" and config["commitlog_sync_period"] == "10000ms"
    assert not [a for a in argv if "unsafe" in a]


def test_kafka_gets_small_thread_pools_and_a_quiet_controller(settings: Settings) -> None:
    props = _properties(Kafka(settings).server_properties())
    assert {key: props[key] for key in KAFKA_THREADS} == KAFKA_THREADS
    assert props["metadata.max.idle.interval.ms"] == "5000"


def test_kafka_durability_is_unchanged(settings: Settings) -> None:
    """Log flushing stays Kafka's default (the OS writes back; acks=all means in the log of
    every in-sync replica), so no flush key is written."""
    props = _properties(Kafka(settings).server_properties())
    assert not [key for key in props if key.startswith(("log.flush", "unclean", "min.insync"))]


def test_a_cluster_kafka_node_takes_the_same_threads_and_keeps_its_no_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(profile.STATE_ENV, str(tmp_path / "cluster"))
    settings = profile.cluster_settings(Settings(state_dir=tmp_path / "single"))
    props = _properties(profile.kafka_nodes(settings)[0].server_properties())
    assert {key: props[key] for key in KAFKA_THREADS} == KAFKA_THREADS
    # Three voters: the no-op records let a broker tell a live controller from a stalled one.
    assert "metadata.max.idle.interval.ms" not in props
    assert props["min.insync.replicas"] == "2"


def test_cassandra_starts_with_1_ms_of_timer_slack(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JVM is exec'd by a Python that first sets PR_SET_TIMERSLACK (same pid, inherited)."""
    monkeypatch.delenv(cassandra_module.TIMER_SLACK_ENV, raising=False)
    _, argv = _launch_cassandra(Cassandra(settings), monkeypatch)
    assert argv[1] == "-c" and "prctl(29," in argv[2]
    assert argv[3] == "1000000"
    assert argv[4].endswith("java") and argv[5].startswith("@")


def test_the_timer_slack_can_be_left_to_the_kernel(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cassandra_module.TIMER_SLACK_ENV, "0")
    _, argv = _launch_cassandra(Cassandra(settings), monkeypatch)
    assert argv[0].endswith("java") and not [a for a in argv if "prctl" in a]
