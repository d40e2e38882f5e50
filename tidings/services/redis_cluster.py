"""A Redis Cluster from Debian's ``redis-server`` 7.0: six nodes, three masters with a replica
each, on ports ``redis_cluster_base_port`` to ``+5`` (each node's cluster bus on its port
``+10000``), each node a ``Redis`` service of its own (append-only file, pid file, state folder
``redis-cluster-<n>``).

``up`` starts the six nodes at once, then forms the cluster once: ``redis-cli --cluster create
... --cluster-replicas 1 --cluster-yes`` when every node is still alone and owns no slot. Each
node keeps what it knows of the cluster in ``nodes.conf`` in its folder, so a later ``up`` (of
all the nodes, or of one that was killed) finds the cluster formed and only waits, as it does
after forming it, until every node reports ``cluster_state:ok``. A half-formed cluster (some
slots assigned, or nodes that know only part of the others) is an error to resolve by hand:
``down``, delete the ``redis-cluster-*`` folders, ``up``.

Measured here (2 cores, shared): six nodes start in ~0.1 s; ``--cluster create`` reaches
``cluster_state:ok`` on every node in ~2 s. ``cluster-node-timeout`` is 5 s (Redis's default is
15 s): a killed master's replica is promoted a few seconds after the timeout instead of ~20 s
later, while a node busy for a moment on a loaded machine is not yet declared failed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from tidings.services import _probes, _process
from tidings.services._common import Echo, ServiceError, ServiceStatus
from tidings.services.redis import Redis
from tidings.settings import Settings

MASTERS = 3
REPLICAS_PER_MASTER = 1
NODES = MASTERS * (1 + REPLICAS_PER_MASTER)
BUS_PORT_OFFSET = 10_000  # Redis's fixed offset of the cluster bus port
SLOTS = 16_384
NODE_TIMEOUT_MS = 5_000
READY_TIMEOUT_S = 60.0


class RedisClusterNode(Redis):
    """Node ``index`` (0-5) of the cluster; which are masters is decided when it is formed."""

    def __init__(self, settings: Settings, index: int) -> None:
        self.index = index
        self.name = f"redis-cluster-{index + 1}"
        super().__init__(settings)

    @property
    def port(self) -> int:
        return self.settings.redis_cluster_base_port + self.index

    def ports(self) -> list[int]:
        return [self.port, self.port + BUS_PORT_OFFSET]

    def extra_args(self) -> list[str]:
        return [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",  # in --dir: this node's folder
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
        ]

    def info(self) -> dict[str, str] | None:
        return _probes.redis_cluster_info(self.host, self.port)


class RedisCluster:
    """The six nodes as one service: ``up`` (start, form once, wait for ``cluster_state:ok``),
    ``down``, ``status``. ``seeds`` is what ``TIDINGS_REDIS_CLUSTER_NODES`` takes."""

    name = "redis-cluster"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nodes = [RedisClusterNode(settings, i) for i in range(NODES)]

    @property
    def seeds(self) -> str:
        return ",".join(f"{node.host}:{node.port}" for node in self.nodes)

    def up(self, echo: Echo = print) -> list[ServiceStatus]:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=NODES) as pool:
            futures = [pool.submit(node.up, echo) for node in self.nodes]
            errors, statuses = [], []
            for node, future in zip(self.nodes, futures, strict=True):
                try:
                    statuses.append(future.result())
                except ServiceError as exc:
                    errors.append(f"[{node.name}] {exc}")
        if errors:
            raise ServiceError("\n\n".join(errors))
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        with _process.locked(self.settings.state_dir / ".redis-cluster.lock"):
            self._form(echo)
        self.wait_ok()
        echo(f"{self.name} ok on {self.seeds} in {time.monotonic() - started:.1f} s")
        return statuses

    def down(self, echo: Echo = print) -> list[ServiceStatus]:
        with ThreadPoolExecutor(max_workers=NODES) as pool:
            return list(pool.map(lambda node: node.down(echo), self.nodes))

    def status(self) -> list[ServiceStatus]:
        statuses = []
        for node in self.nodes:
            status = node.status()
            if status.running:
                info = node.info() or {}
                role = f"cluster_state:{info.get('cluster_state', '?')}"
                status = ServiceStatus(
                    status.name, status.host, status.port, True, status.pid, False, f"{status.detail}, {role}"
                )
            statuses.append(status)
        return statuses

    def infos(self) -> list[dict[str, str]]:
        return [node.info() or {} for node in self.nodes]

    def _form(self, echo: Echo) -> None:
        infos = self.infos()
        assigned = [int(info.get("cluster_slots_assigned", -1)) for info in infos]
        known = [int(info.get("cluster_known_nodes", -1)) for info in infos]
        if all(a == SLOTS for a in assigned):
            return  # formed before (nodes.conf brought it back); gossip completes the rest
        if not (all(a == 0 for a in assigned) and all(k == 1 for k in known)):
            raise ServiceError(
                f"the Redis Cluster on {self.seeds} is half-formed (slots assigned per node "
                f"{assigned}, nodes known {known}): stop it (`down`) and delete the "
                f"redis-cluster-* folders in {self.settings.state_dir}"
            )
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ServiceError("redis-cli not found: apt-get install redis-tools")
        echo(f"forming the Redis Cluster on {self.seeds}: {MASTERS} masters, a replica each")
        argv = [
            cli,
            "--cluster",
            "create",
            *(f"{node.host}:{node.port}" for node in self.nodes),
            "--cluster-replicas",
            str(REPLICAS_PER_MASTER),
            "--cluster-yes",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise ServiceError(
                f"redis-cli --cluster create failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def wait_ok(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every node reports ``cluster_state:ok`` and knows all six nodes, and three are
        replicas in sync with their master. Each node has its own view of the cluster: right
        after forming, gossip may not have told every node of every other yet, and a replica
        is still loading its master's data."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.states()
            if all(states):
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"the Redis Cluster on {self.seeds} is not ok after {timeout_s:.0f} s")
            time.sleep(0.25)

    def states(self) -> list[bool]:
        """Per node: ok, knows every node, and (a replica) its link to its master is up."""
        out = []
        for node in self.nodes:
            info = node.info() or {}
            replication = _probes.redis_replication(node.host, node.port) or {}
            out.append(
                info.get("cluster_state") == "ok"
                and info.get("cluster_known_nodes") == str(NODES)
                and (replication.get("role") == "master" or replication.get("master_link_status") == "up")
            )
        replicas = sum(
            (_probes.redis_replication(n.host, n.port) or {}).get("role") == "slave" for n in self.nodes
        )
        return out if replicas == MASTERS * REPLICAS_PER_MASTER else [False] * NODES
