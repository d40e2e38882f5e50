"""Fixtures of the cluster tier: the cluster profile's services (three Kafka brokers, three
Cassandra nodes, HAProxy; ``tidings.services.cluster``) and, over them, two gateways behind
HAProxy with a deliver and a persist worker, in the test namespace.

Run by ``python3 -m tidings test --cluster`` (it sets ``TIDINGS_RUN_CLUSTER=1``; without it this
folder is not collected, see ``tests/conftest.py``): the cluster costs ~4 GB of memory and a
minute or two of start-up, too much for the default suite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import System
from tidings import processes
from tidings.services import cluster as profile
from tidings.services.haproxy import HAProxy
from tidings.settings import Settings

GATEWAYS = 2


class ClusterSystem(System):
    """Two gateways on the profile's gateway ports, reached through HAProxy (``self.http``,
    ``self.ws``), and a deliver and a persist worker."""

    STARTED: tuple[str, ...] = ("deliver", "persist", "gateway", "gateway2")

    def __init__(self, settings: Settings, logs: Path) -> None:
        super().__init__(settings, logs)
        self.env.update(profile.cluster_env(settings))
        self.env["TIDINGS_AUTH_SECRET"] = settings.resolved_auth_secret()
        self.apps = profile.app_processes(GATEWAYS, workers_per_role=1)
        self.http = f"http://{settings.http_host}:{settings.http_port}"
        self.ws = f"ws://{settings.http_host}:{settings.http_port}/v1/ws"

    def start(self, name: str) -> None:
        env = {**self.env, **self.apps[name]}
        self.procs[name] = processes.spawn(name, env, log=self.logs / f"{name}.log")

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Until HAProxy's health checks have both gateways UP (a /readyz through HAProxy
        answers as soon as one is)."""
        super().wait_ready(timeout_s)
        haproxy = HAProxy(self.settings, profile.gateway_ports(GATEWAYS))
        deadline = time.monotonic() + timeout_s
        while not self._all_up(haproxy):
            assert time.monotonic() < deadline, haproxy.admin("show stat")
            time.sleep(0.5)

    @staticmethod
    def _all_up(haproxy: HAProxy) -> bool:
        lines = haproxy.admin("show stat").lstrip("# ").splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        gateways = [r for r in rows if r["pxname"] == "gateways_ws" and r["svname"].startswith("gw")]
        return len(gateways) == GATEWAYS and all(r["status"] == "UP" for r in gateways)


@pytest.fixture(scope="session")
def cluster(settings: Settings) -> Iterator[Settings]:
    """The cluster's services, up (started here when not running) and migrated."""
    from tidings.migrate import migrate

    cluster_settings = profile.cluster_settings(settings)
    started = time.monotonic()
    statuses = profile.up(cluster_settings, gateways=GATEWAYS)
    print(f"cluster services up in {time.monotonic() - started:.1f} s")
    ours = [s.name for s in statuses if s.started_by_us]
    try:
        asyncio.run(migrate(cluster_settings, echo=lambda _: None))
        yield cluster_settings
    finally:
        everything = {s.name for s in profile.all_services(cluster_settings)}
        if set(ours) != everything:
            # Partly somebody else's cluster: bring back the nodes the tests killed.
            profile.up(cluster_settings, gateways=GATEWAYS)
        if ours:
            profile.down(cluster_settings, only=ours)


@pytest.fixture(scope="session")
def cluster_system(cluster: Settings) -> Iterator[ClusterSystem]:
    logs = cluster.state_dir.parent / "logs" / time.strftime("%Y%m%d-%H%M%S")
    logs.mkdir(parents=True, exist_ok=True)
    print(f"cluster tier process logs: {logs}")
    system = ClusterSystem(cluster, logs)
    with system.running(ClusterSystem.STARTED):
        yield system
