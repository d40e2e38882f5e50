"""Fixtures of the cluster fault suite: the cluster profile's services (``tests.cluster``'s
``cluster`` fixture: started here when not running, stopped afterwards if started here) and,
over them, the profile's application: 2 gateways behind HAProxy and 2 workers per role, each a
process that a scenario may kill and start again. Clients reach the system only through HAProxy.

Run by ``python3 -m tidings faults --cluster`` (it sets ``TIDINGS_RUN_CLUSTER_FAULTS=1``; without
it this folder is not collected, see ``tests/conftest.py``).
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import ClusterSystem, cluster  # noqa: F401 - the services' fixture
from tests.faults.load import Report, recorder, summarize
from tidings import processes
from tidings.services import cluster as profile
from tidings.services.haproxy import HAProxy
from tidings.settings import Settings

GATEWAYS = 2
WORKERS_PER_ROLE = 2
FANOUT_THRESHOLD = 4  # as the single-node fault suite: the load's groups take both paths
REPORTS: list[Report] = []
REPORT_ENV = "TIDINGS_CLUSTER_FAULTS_REPORT"


class ClusterFaultSystem(ClusterSystem):
    """The cluster profile's processes (``profile.app_processes``: ``gateway``, ``gateway2``,
    ``deliver``, ``deliver2``, ... on the profile's ports), reached through HAProxy."""

    STARTED = tuple(profile.app_processes(GATEWAYS, WORKERS_PER_ROLE))

    def __init__(self, settings: Settings, logs: Path) -> None:
        super().__init__(settings, logs)
        self.apps = profile.app_processes(GATEWAYS, WORKERS_PER_ROLE)
        self.env["TIDINGS_FANOUT_THRESHOLD"] = str(FANOUT_THRESHOLD)
        # The production default, not the e2e tiers' 8 s: with three brokers, three Cassandra
        # nodes and twelve processes on 2 cores, 8 s of silence measures the machine's event-loop
        # lag (the load's clients ping every 2 s), and each such close is a reconnect and three
        # syncs more for the machine to do.
        self.env["TIDINGS_IDLE_CLOSE_S"] = "90"

    def ws_urls(self) -> list[str]:
        return [self.ws]  # HAProxy only: clients never see a gateway's own port

    def gateways(self) -> list[str]:
        return [name for name in self.apps if processes.role_of(name) == "gateway"]

    def workers(self, role: str) -> list[str]:
        return [name for name in self.apps if processes.role_of(name) == role]

    def haproxy_server(self, gateway: str) -> str:
        """HAProxy's name (``gw1``...) of gateway process ``gateway``."""
        return f"gw{self.gateways().index(gateway) + 1}"

    def haproxy_stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the WebSocket backend, by server name."""
        text = HAProxy(self.settings, profile.gateway_ports(GATEWAYS)).admin("show stat").lstrip("# ")
        return {r["svname"]: r for r in csv.DictReader(io.StringIO(text)) if r["pxname"] == "gateways_ws"}

    def interrupt(self, name: str, timeout_s: float = 30) -> None:
        """A clean stop (SIGTERM): a gateway drains, a worker leaves its group."""
        processes.stop([self.procs.pop(name)], timeout_s=timeout_s)

    def wait_gateway(self, name: str, timeout_s: float = 120) -> None:
        """Until gateway ``name`` answers /readyz on its own port and HAProxy has every
        gateway UP again."""
        self.wait_http(f"http://127.0.0.1:{self.apps[name]['TIDINGS_HTTP_PORT']}/readyz", timeout_s)
        self.wait_ready(timeout_s)


@pytest.fixture(scope="session")
def cluster_fault_system(cluster: Settings) -> Iterator[ClusterFaultSystem]:  # noqa: F811
    logs = cluster.state_dir.parent / "logs" / f"faults-{time.strftime('%Y%m%d-%H%M%S')}"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"cluster fault suite process logs: {logs}")
    system = ClusterFaultSystem(cluster, logs)
    started = time.monotonic()
    with system.running(ClusterFaultSystem.STARTED):
        print(f"{len(ClusterFaultSystem.STARTED)} processes up in {time.monotonic() - started:.1f} s")
        yield system


@pytest.fixture
def record() -> Callable[[Report], None]:
    return recorder(REPORTS)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    path = os.environ.get(REPORT_ENV)
    summarize(terminalreporter, "cluster fault suite figures", REPORTS, Path(path) if path else None)
