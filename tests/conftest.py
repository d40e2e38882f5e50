"""Shared fixtures. Tiers are marked by folder: ``unit`` (fakes), ``integration`` (one adapter
against its real service), ``e2e`` (the running system over the client protocol).

Integration and e2e tests use the real Kafka, Cassandra and Redis of ``tidings services``
(started here when they are not running), in a keyspace and topics of their own.
"""

from __future__ import annotations

import os
import secrets
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
