"""The cluster profile (``tidings up --cluster``, ``tidings services up --cluster``): three Kafka
brokers (KRaft, each broker and controller), three Cassandra nodes on 127.0.0.2-4, HAProxy in
front of the gateways, a Redis Cluster (six nodes: three masters with a replica each, on
127.0.0.1:7101-7106) and the S3 store of its own, all beside the single-node services (another
state folder, other ports), so both can run at once.

Replication: the namespace's topics are made with replication 3 and ``min.insync.replicas`` 2
(acks=all then survives one broker down; two down stop the sends rather than lose them), and so
are the brokers' own defaults and internal topics; the keyspace with NetworkTopologyStrategy
``datacenter1: 3``, read and written at LOCAL_QUORUM (2 of 3: one node may be down, and a read
always meets a replica of every acknowledged write).

The application reaches the Redis Cluster through ``TIDINGS_REDIS_CLUSTER_NODES`` (redis-py's
``RedisCluster`` client, hash-tagged keys, sharded pub/sub: docs/architecture.md); the cluster
has no database numbers, so every namespace on the profile uses database 0 (redis_cluster.py
says how the nodes are started and the cluster formed).

Measured on the development machine (2 cores, shared with other engineers' tests): see
docs/scaling.md.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tidings.services import _probes, _process, redis_cluster
from tidings.services._base import Service
from tidings.services._common import Echo, ServiceError, ServiceStatus
from tidings.services.cassandra import Cassandra
from tidings.services.haproxy import DRAIN_UNREADY_S, HAProxy
from tidings.services.kafka import SMALL_BOX_PROPERTIES, Kafka, new_cluster_id
from tidings.services.redis_cluster import RedisCluster
from tidings.services.versitygw import S3Store
from tidings.settings import Settings

NODES = 3
# Every port below 32768, out of Linux's ephemeral range (32768-60999): there an outgoing
# connection of any process can hold a port for a moment, and a node starting then fails to bind
# (seen once with 39292, docs/reliability.md).
KAFKA_BASE_PORT = 21092  # node i: 21092 + 100 i (clients), + 1 (controller)
CASSANDRA_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")  # each node keeps the standard ports
CASSANDRA_PORT = 9042
CASSANDRA_STORAGE_PORT = 7000
REDIS_CLUSTER_BASE_PORT = 7101  # six nodes: 7101-7106 (cluster bus: 17101-17106)
S3_PORT = 21070
HAPROXY_PORT = 21787
HAPROXY_STATS_PORT = 21404
GATEWAY_BASE_PORT = 21801  # gateway i: 21801 + i, behind HAProxy
WORKER_BASE_WEB_PORT = 21901  # each worker's /metrics

STATE_ENV = "TIDINGS_CLUSTER_STATE_DIR"


def cluster_settings(base: Settings) -> Settings:
    """``base`` (its namespace: keyspace, topic prefix, Redis db) on the cluster profile's
    services: their ports, replication and consistency."""
    default_state = Path.home() / ".local" / "share" / "tidings-cluster" / "state"
    state = Path(os.environ.get(STATE_ENV, str(default_state)))
    bootstrap = ",".join(f"127.0.0.1:{KAFKA_BASE_PORT + 100 * i}" for i in range(NODES))
    return Settings(
        **{
            **base.model_dump(),
            "state_dir": state,
            "kafka_bootstrap": bootstrap,
            "kafka_controller_port": KAFKA_BASE_PORT + 1,
            "kafka_replication": 3,
            "kafka_min_insync_replicas": 2,
            "cassandra_hosts": list(CASSANDRA_HOSTS),
            "cassandra_port": CASSANDRA_PORT,
            "cassandra_storage_port": CASSANDRA_STORAGE_PORT,
            "cassandra_replication": {"class": "NetworkTopologyStrategy", base.cassandra_local_dc: 3},
            "cassandra_consistency": "LOCAL_QUORUM",
            "redis_cluster_base_port": REDIS_CLUSTER_BASE_PORT,
            "redis_cluster_nodes": ",".join(
                f"127.0.0.1:{REDIS_CLUSTER_BASE_PORT + i}" for i in range(redis_cluster.NODES)
            ),
            "redis_db": 0,
            "s3_port": S3_PORT,
            "s3_endpoint": None,
            "http_port": HAPROXY_PORT,
        }
    )


def voters(settings: Settings) -> str:
    return ",".join(f"{i + 1}@127.0.0.1:{KAFKA_BASE_PORT + 100 * i + 1}" for i in range(NODES))


class KafkaNode(Kafka):
    """Broker and controller ``index`` (0-2) of three; the quorum is the three controllers."""

    default_heap = "384m"
    format_flags = ()  # the voters are in server.properties

    def __init__(self, settings: Settings, index: int) -> None:
        self.index = index
        self.name = f"kafka-{index + 1}"
        super().__init__(settings)

    @property
    def port(self) -> int:
        return KAFKA_BASE_PORT + 100 * self.index

    @property
    def controller_port(self) -> int:
        return self.port + 1

    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def ready(self) -> bool:
        # Topics of replication 3 can be made once all three brokers are registered.
        return self.answering() and _probes.kafka_metadata_brokers(self.host, self.port) >= NODES

    def cluster_id(self) -> str:
        """One id for the three: drawn by the first node to format, kept in the state folder."""
        path = self.dir.parent / "kafka-cluster.id"
        with _process.locked(self.dir.parent / ".kafka-cluster.lock"):
            if not path.exists():
                path.write_text(new_cluster_id())
            return path.read_text().strip()

    def server_properties(self) -> str:
        host, port, controller = self.host, self.port, self.controller_port
        return f"""\
process.roles=broker,controller
node.id={self.index + 1}
controller.quorum.voters={voters(self.settings)}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}
advertised.listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={self.dir / "data"}
num.partitions=1
# Topics `tidings migrate` makes carry their own replication and min.insync.replicas; these
# defaults cover the others (Faust's changelogs, auto-created ones) and the internal topics.
default.replication.factor=3
min.insync.replicas=2
auto.create.topics.enable=true
offsets.topic.replication.factor=3
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=4194304
{SMALL_BOX_PROPERTIES}# A killed broker's partitions get new leaders within this (default 9 s / 18 s).
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
"""


class CassandraNode(Cassandra):
    """Node ``index`` (0-2) on 127.0.0.``index + 2``, with the standard ports; the first is the
    seed. The cluster is new and empty, so a node joins without bootstrap streaming."""

    default_heap = "768M"  # below ~768M Cassandra 5.0 struggles; three of them fit 24 GiB
    cluster_name = "tidings-cluster"
    superuser_setup_delay_ms = 5000
    # Durable schema: with unsafesystem, a node killed -9 minutes after the keyspace was made
    # came back without it and answered "keyspace does not exist" (the cluster fault suite on
    # a freshly formed cluster).
    unsafe_system = False

    def __init__(self, settings: Settings, index: int) -> None:
        self.index = index
        self.name = f"cassandra-{index + 1}"
        super().__init__(settings)

    @property
    def host(self) -> str:
        return CASSANDRA_HOSTS[self.index]

    def seeds(self) -> str:
        return f"{CASSANDRA_HOSTS[0]}:{self.settings.cassandra_storage_port}"

    def extra_yaml(self) -> str:
        # A fresh cluster has no data to stream to a joining node; without this each of the
        # second and third nodes would wait out ring delay and stream nothing.
        return "auto_bootstrap: false\n"


def kafka_nodes(settings: Settings) -> list[KafkaNode]:
    return [KafkaNode(settings, i) for i in range(NODES)]


def cassandra_nodes(settings: Settings) -> list[CassandraNode]:
    return [CassandraNode(settings, i) for i in range(NODES)]


def gateway_ports(count: int) -> list[int]:
    return [GATEWAY_BASE_PORT + i for i in range(count)]


def check_loopback_addresses() -> None:
    """Cassandra's nodes need 127.0.0.2-4; Linux routes all of 127/8 to lo, other systems may not."""
    import socket

    for host in CASSANDRA_HOSTS:
        with socket.socket() as sock:
            try:
                sock.bind((host, 0))
            except OSError as exc:
                raise ServiceError(
                    f"cannot bind {host}: the cluster's Cassandra nodes need 127.0.0.2-4 on the "
                    f"loopback interface (e.g. `ip addr add {host}/8 dev lo`): {exc}"
                ) from exc


def up(settings: Settings, *, gateways: int = 2, echo: Echo = print) -> list[ServiceStatus]:
    """Start the cluster's services (reusing running ones): Kafka's three nodes, the Redis
    Cluster and the S3 store at once (the controllers need each other for a quorum), the
    Cassandra nodes one after another (concurrent joins are refused), and HAProxy, configured
    for ``gateways`` gateways."""
    check_loopback_addresses()
    started = time.monotonic()
    parallel: list[Service] = [*kafka_nodes(settings), S3Store(settings)]
    statuses: list[ServiceStatus] = []
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=len(parallel) + 2) as pool:
        futures = [pool.submit(service.up, echo) for service in parallel]
        # Cassandra nodes start one at a time, while the others come up.
        sequential = pool.submit(_one_after_another, cassandra_nodes(settings), echo)
        redis = pool.submit(RedisCluster(settings).up, echo)
        for service, future in zip(parallel, futures, strict=True):
            try:
                statuses.append(future.result())
            except ServiceError as exc:
                errors.append(f"[{service.name}] {exc}")
        for name, group in (("cassandra", sequential), ("redis-cluster", redis)):
            try:
                statuses += group.result()
            except ServiceError as exc:
                errors.append(f"[{name}] {exc}")
    if errors:
        raise ServiceError("\n\n".join(errors))
    haproxy = HAProxy(settings, gateway_ports(gateways))
    statuses.append(haproxy.up(echo))
    if not statuses[-1].started_by_us and haproxy.config.read_text() != haproxy.haproxy_cfg():
        haproxy.reload(haproxy.gateway_ports, echo)  # another gateway count: reloaded, drained
    echo(f"cluster services up in {time.monotonic() - started:.1f} s")
    return statuses


def _one_after_another(nodes: list[CassandraNode], echo: Echo) -> list[ServiceStatus]:
    statuses = [node.up(echo) for node in nodes]
    if any(s.started_by_us for s in statuses):
        wait_schema_agreement(nodes[0].settings, echo)
    return statuses


def wait_schema_agreement(settings: Settings, echo: Echo, timeout_s: float = 120.0) -> None:
    """Until every live node reports one schema version. A node that comes back may answer
    CQL before it has pulled the schema its peers changed meanwhile; a statement it then
    coordinates fails with "table ... does not exist" (seen once on a restart of the cluster)."""
    from projections.adapters.cql import connect_to

    started = time.monotonic()
    cluster, _ = connect_to(settings)
    try:
        agreed = cluster.control_connection.wait_for_schema_agreement(wait_time=timeout_s)
    finally:
        cluster.shutdown()
    if not agreed:
        raise ServiceError(f"cassandra nodes disagree on the schema after {timeout_s:.0f} s")
    echo(f"cassandra schema agreed in {time.monotonic() - started:.1f} s")


def all_services(settings: Settings, gateways: int = 2) -> list[Service]:
    return [
        HAProxy(settings, gateway_ports(gateways)),
        *kafka_nodes(settings),
        *cassandra_nodes(settings),
        *RedisCluster(settings).nodes,
        S3Store(settings),
    ]


def down(settings: Settings, *, only: list[str] | None = None, echo: Echo = print) -> list[ServiceStatus]:
    """Stop the cluster's services that we started (all, or those named in ``only``)."""
    chosen = [s for s in all_services(settings) if only is None or s.name in only]
    with ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
        return list(pool.map(lambda s: s.down(echo), chosen))


def status(settings: Settings) -> list[ServiceStatus]:
    """Each service's status; the Redis Cluster's nodes' with their ``cluster_state``."""
    nodes = {node.name for node in RedisCluster(settings).nodes}
    others = [service.status() for service in all_services(settings) if service.name not in nodes]
    return [*others, *RedisCluster(settings).status()]


def cluster_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a Tidings process (gateway, worker, migrate) use the cluster
    ``settings`` describe."""
    return {
        "TIDINGS_STATE_DIR": str(settings.state_dir),
        "TIDINGS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TIDINGS_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "TIDINGS_KAFKA_REPLICATION": str(settings.kafka_replication),
        "TIDINGS_KAFKA_MIN_INSYNC_REPLICAS": str(settings.kafka_min_insync_replicas),
        "TIDINGS_CASSANDRA_HOSTS": json.dumps(settings.cassandra_hosts),
        "TIDINGS_CASSANDRA_PORT": str(settings.cassandra_port),
        "TIDINGS_CASSANDRA_STORAGE_PORT": str(settings.cassandra_storage_port),
        "TIDINGS_CASSANDRA_REPLICATION": json.dumps(settings.cassandra_replication_map()),
        "TIDINGS_CASSANDRA_CONSISTENCY": settings.cassandra_consistency,
        "TIDINGS_REDIS_CLUSTER_NODES": settings.redis_cluster_nodes,
        "TIDINGS_REDIS_DB": str(settings.redis_db),
        "TIDINGS_S3_PORT": str(settings.s3_port),
    }


def app_processes(gateways: int, workers_per_role: int = 2) -> dict[str, dict[str, str]]:
    """The gateways and workers of the profile, by process name (``gateway2``, ``persist2``:
    ``tidings.processes.role_of``), each with the environment that sets its ports. Two search
    workers on one host share the index folder (docs/search.md)."""
    names: dict[str, dict[str, str]] = {}
    web_port = WORKER_BASE_WEB_PORT
    for role in ("deliver", "persist", "notify", "push", "search"):
        for i in range(workers_per_role):
            names[role if i == 0 else f"{role}{i + 1}"] = {"TIDINGS_WORKER_WEB_PORT": str(web_port)}
            web_port += 1
    for i, port in enumerate(gateway_ports(gateways)):
        # A stopping gateway stays unready long enough for HAProxy to take it out first.
        names["gateway" if i == 0 else f"gateway{i + 1}"] = {
            "TIDINGS_HTTP_PORT": str(port),
            "TIDINGS_DRAIN_UNREADY_S": str(DRAIN_UNREADY_S),
        }
    return names
