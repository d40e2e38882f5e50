"""Shared fixtures. Tiers are marked by folder: ``unit`` (fakes), ``integration`` (one adapter
against its real service), ``e2e`` (the running system over the client protocol).

Integration and e2e tests use the real Kafka, Cassandra and Redis of ``tidings services``
(started here when they are not running), in a keyspace and topics of their own.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

# Test isolation from a developer's running `tidings up`: own keyspace, topics, group and Redis
# database. TIDINGS_TEST_NAMESPACE lets two checkouts run their tests against one set of services.
NAMESPACE = os.environ.get("TIDINGS_TEST_NAMESPACE", "test")
TEST_ENV = {
    "TIDINGS_CASSANDRA_KEYSPACE": f"tidings_{NAMESPACE}",
    "TIDINGS_TOPIC_PREFIX": f"{NAMESPACE}.",
    "TIDINGS_WORKER_APP_ID": f"tidings-{NAMESPACE}-projector",
    "TIDINGS_REDIS_DB": os.environ.get("TIDINGS_TEST_REDIS_DB", "1"),
    "TIDINGS_AUTH_SECRET": os.environ.get("TIDINGS_TEST_AUTH_SECRET", secrets.token_urlsafe(32)),
    # S3 bucket names: lowercase letters, digits and hyphens.
    "TIDINGS_S3_BUCKET": "tidings-test-" + "".join(c if c.isalnum() else "-" for c in NAMESPACE.lower()),
}
os.environ.update(TEST_ENV)

from tidings.settings import Settings  # noqa: E402 - after the environment is set

TIERS = ("unit", "integration", "e2e", "faults", "cluster", "cluster_faults")

# The fault suite stops and restarts service instances of its own and takes minutes: it runs by
# `python3 -m tidings faults` (which sets TIDINGS_RUN_FAULTS=1), not with the rest. The cluster
# tier (three brokers, three Cassandra nodes, HAProxy) likewise, by `python3 -m tidings test
# --cluster` (TIDINGS_RUN_CLUSTER=1); and the fault suite on the cluster profile by `python3 -m
# tidings faults --cluster` (TIDINGS_RUN_CLUSTER_FAULTS=1).
collect_ignore = [
    *([] if os.environ.get("TIDINGS_RUN_FAULTS") else ["faults"]),
    *([] if os.environ.get("TIDINGS_RUN_CLUSTER") else ["cluster"]),
    *([] if os.environ.get("TIDINGS_RUN_CLUSTER_FAULTS") else ["cluster_faults"]),
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def services(settings: Settings) -> Settings:
    """The real services, up and migrated for the test keyspace and topics."""
    import asyncio

    from tidings import services as launcher
    from tidings.migrate import migrate

    launcher.up(settings)
    asyncio.run(migrate(settings, echo=lambda _: None))
    return settings


def _redis_cluster_base_port() -> int:
    """Six free ports (and their cluster bus ports, +10000) for this namespace's test Redis
    Cluster: a start derived from the namespace, so two checkouts' runs do not collide, moved
    on while any is taken. 7200-7999: above the cluster profile's 7101-7106 and Cassandra's
    7000, 7001 and 7199."""
    import zlib

    from tidings.services import _process

    start = 7200 + (zlib.crc32(NAMESPACE.encode()) % 80) * 10
    for base in [*range(start, 8000, 10), *range(7200, start, 10)]:
        ports = [p + offset for p in range(base, base + 6) for offset in (0, 10_000)]
        if not any(_process.port_open("127.0.0.1", p) for p in ports):
            return base
    raise RuntimeError("no six free ports in 7200-7999 for a test Redis Cluster")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A Redis Cluster of this test run's own (six nodes, three masters; the launcher's
    ``RedisCluster``), stopped at the end: settings that point every Redis client at it."""
    from tidings.services.redis_cluster import RedisCluster

    state = tmp_path_factory.mktemp("redis-cluster")
    base = Settings(state_dir=state, redis_cluster_base_port=_redis_cluster_base_port())
    cluster = RedisCluster(base)
    cluster.up(echo=lambda _: None)
    try:
        yield base.model_copy(update={"redis_cluster_nodes": cluster.seeds, "redis_db": 0})
    finally:
        cluster.down(echo=lambda _: None)
