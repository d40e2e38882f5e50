"""The cluster profile's generated configuration (tidings/services/cluster.py, haproxy.py),
without starting anything: the three Kafka nodes form one quorum with replication 3 and min ISR
2, the Cassandra nodes listen on 127.0.0.2-4 with one seed, the application settings replicate
and read at LOCAL_QUORUM, and none of it shares a port or a folder with the single-node
services. The cluster itself runs in tests/cluster (``python3 -m tidings test --cluster``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tidings.services import cluster as profile
from tidings.services.cassandra import Cassandra
from tidings.services.haproxy import CHECK_FALL, CHECK_INTER_S, CHECK_TIMEOUT_S, HAProxy
from tidings.services.kafka import Kafka
from tidings.settings import Settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv(profile.STATE_ENV, str(tmp_path / "cluster"))
    return profile.cluster_settings(Settings(state_dir=tmp_path / "single"))


def _properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_three_kafka_nodes_are_one_quorum_with_replication_three(settings: Settings) -> None:
    nodes = [_properties(node.server_properties()) for node in profile.kafka_nodes(settings)]
    assert [n["node.id"] for n in nodes] == ["1", "2", "3"]
    voters = {n["controller.quorum.voters"] for n in nodes}
    assert voters == {"1@127.0.0.1:21093,2@127.0.0.1:21193,3@127.0.0.1:21293"}
    for node in nodes:
        assert node["default.replication.factor"] == node["offsets.topic.replication.factor"] == "3"
        assert node["min.insync.replicas"] == node["transaction.state.log.min.isr"] == "2"
        assert "controller.quorum.bootstrap.servers" not in node
    assert all(not n.format_flags for n in profile.kafka_nodes(settings))  # voters, not --standalone
    assert Kafka.format_flags == ("--standalone",)


def test_kafka_nodes_share_one_cluster_id(settings: Settings) -> None:
    nodes = profile.kafka_nodes(settings)
    for node in nodes:
        node.dir.mkdir(parents=True)
    ids = {node.cluster_id() for node in nodes}
    assert len(ids) == 1 and len(ids.pop()) == 22


def test_cassandra_nodes_listen_on_their_own_addresses_with_one_seed(settings: Settings) -> None:
    for node, host in zip(
        profile.cassandra_nodes(settings), ("127.0.0.2", "127.0.0.3", "127.0.0.4"), strict=True
    ):
        yaml = node.cassandra_yaml()
        assert f"listen_address: {host}\n" in yaml and f"rpc_address: {host}\n" in yaml
        assert 'seeds: "127.0.0.2:7000"' in yaml and "native_transport_port: 9042" in yaml
        assert "cluster_name: 'tidings-cluster'" in yaml and "auto_bootstrap: false" in yaml
        assert node.superuser_setup_delay_ms > 0  # 0 spins while a peer is down
    assert Cassandra.cluster_name == "tidings-dev"


def test_the_application_replicates_and_reads_at_quorum(settings: Settings) -> None:
    assert settings.kafka_bootstrap == "127.0.0.1:21092,127.0.0.1:21192,127.0.0.1:21292"
    assert (settings.kafka_replication, settings.kafka_min_insync_replicas) == (3, 2)
    assert settings.cassandra_replication_map() == {"class": "NetworkTopologyStrategy", "datacenter1": 3}
    assert settings.cassandra_consistency == "LOCAL_QUORUM"
    assert Settings().cassandra_consistency == "LOCAL_ONE"
    env = profile.cluster_env(settings)
    for key, value in env.items():
        assert key.removeprefix("TIDINGS_").lower() in Settings.model_fields, key
        assert value, key


def test_nothing_is_shared_with_the_single_node_services(settings: Settings, tmp_path: Path) -> None:
    single = Settings(state_dir=tmp_path / "single")
    from tidings.services import _select

    single_services = _select(single, None)
    cluster_services = profile.all_services(settings)
    single_ports = {(s.host, p) for s in single_services for p in s.ports()}
    cluster_ports = {(s.host, p) for s in cluster_services for p in s.ports()}
    assert single_ports.isdisjoint(cluster_ports)
    assert len(cluster_ports) == sum(len(s.ports()) for s in cluster_services)  # none twice
    assert all(not s.dir.is_relative_to(single.state_dir) for s in cluster_services)


def test_haproxy_checks_readyz_and_hashes_websockets_by_user(settings: Settings) -> None:
    cfg = HAProxy(settings, profile.gateway_ports(3)).haproxy_cfg()
    ws = cfg.split("\nbackend gateways_ws\n", 1)[1].split("\nbackend gateways_http\n", 1)[0]
    assert "balance hash var(txn.user)" in ws and "hash-type consistent" in ws
    assert "option httpchk GET /readyz" in ws
    assert re.findall(r"server (gw\d) 127\.0\.0\.1:(\d+)", ws) == [
        ("gw1", "21801"),
        ("gw2", "21802"),
        ("gw3", "21803"),
    ]
    assert f"maxconn {settings.gateway_max_connections}\n" in cfg
    assert f"bind 127.0.0.1:{profile.HAPROXY_PORT}\n" in cfg


def test_two_workers_per_role_and_a_port_each() -> None:
    apps = profile.app_processes(3)
    assert sorted(n for n in apps if n.startswith("gateway")) == ["gateway", "gateway2", "gateway3"]
    for role in ("deliver", "persist", "notify", "push", "search"):
        assert role in apps and f"{role}2" in apps
    ports = [env.get("TIDINGS_WORKER_WEB_PORT") or env["TIDINGS_HTTP_PORT"] for env in apps.values()]
    assert len(ports) == len(set(ports)) == len(apps)
    # A stopping gateway stays unready until HAProxy's checks have taken it out.
    for name in ("gateway", "gateway2", "gateway3"):
        # Even when every check runs into its timeout.
        slowest = CHECK_INTER_S + CHECK_FALL * (CHECK_TIMEOUT_S + CHECK_INTER_S)
        assert float(apps[name]["TIDINGS_DRAIN_UNREADY_S"]) >= slowest


def test_redis_is_a_cluster_of_six_nodes_on_7101_and_the_application_uses_it(settings: Settings) -> None:
    from tidings.services.redis_cluster import RedisCluster

    assert settings.redis_cluster == [("127.0.0.1", 7101 + i) for i in range(6)]
    assert settings.redis_db == 0  # a Redis Cluster has database 0 only
    env = profile.cluster_env(settings)
    assert env["TIDINGS_REDIS_CLUSTER_NODES"] == RedisCluster(settings).seeds == settings.redis_cluster_nodes
    nodes = RedisCluster(settings).nodes
    assert [n.ports() for n in nodes] == [[7101 + i, 17101 + i] for i in range(6)]
    for node in nodes:
        args = node.extra_args()
        assert args[args.index("--cluster-enabled") + 1] == "yes"
        assert args[args.index("--cluster-config-file") + 1] == "nodes.conf"  # kept in node.dir
        assert node.dir.parent == settings.state_dir
    assert {n.name for n in nodes} <= {s.name for s in profile.all_services(settings)}


def test_a_namespace_with_a_redis_database_gets_database_0_on_the_cluster(tmp_path: Path) -> None:
    cluster = profile.cluster_settings(Settings(state_dir=tmp_path / "single", redis_db=5))
    assert cluster.redis_db == 0
    with pytest.raises(ValueError, match="only database 0"):
        Settings(redis_cluster_nodes="127.0.0.1:7101", redis_db=5)
    with pytest.raises(ValueError, match="not host:port"):
        Settings(redis_cluster_nodes="127.0.0.1")


def test_the_cluster_nodes_keep_their_schema_durable_the_development_node_does_not() -> None:
    """A cluster node killed -9 must come back knowing every keyspace made before the kill."""
    settings = profile.cluster_settings(Settings())
    assert profile.CassandraNode(settings, 0).durability_flags() == []
    assert Cassandra(Settings()).durability_flags() == ["-Dcassandra.unsafesystem=true"]
