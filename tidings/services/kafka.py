"""Single-node Kafka 4.2.1 in KRaft mode (combined broker and controller), from Maven jars.

Storage is formatted once (``--standalone``) with a cluster id drawn in Python; afterwards the
data folder, and so every topic and offset, survives restarts.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from tidings.services import _probes, _process
from tidings.services._base import Service
from tidings.services._common import Echo, ServiceError, heap, java_executable
from tidings.services._jars import KAFKA, ensure_jars

HEAP_ENV = "TIDINGS_KAFKA_HEAP"
_JVM_FLAGS = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]
# Threads for a 2-core box (docs/operations.md, "Cassandra and Kafka on 2 cores"): one network
# thread reads and writes every connection, two request handlers and two scheduler threads
# (defaults 3, 8 and 10, sized for big brokers). Each idle handler polls its queue every 300 ms.
# A node of the cluster profile takes the same (tidings/services/cluster.py).
SMALL_BOX_PROPERTIES = """\
num.network.threads=1
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
"""
METADATA_MAX_IDLE_INTERVAL_MS = 5000
_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Root level="WARN"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def new_cluster_id() -> str:
    """What ``kafka-storage.sh random-uuid`` prints, without starting a JVM for it."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # it would read as a command-line flag
            return cluster_id


class Kafka(Service):
    name = "kafka"
    ready_timeout_s = 120.0
    default_heap = "512m"
    # One combined broker+controller is its own quorum; a node of a cluster formats with the
    # voters named in its server.properties instead (kafka.tools.StorageTool's rules).
    format_flags: tuple[str, ...] = ("--standalone",)

    def cluster_id(self) -> str:
        """The id its storage is formatted with: a new one for a single broker."""
        return new_cluster_id()

    @property
    def host(self) -> str:
        return self.settings.kafka_host

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    def ports(self) -> list[int]:
        return [self.port, self.settings.kafka_controller_port]

    def answering(self) -> bool:
        return _probes.kafka_api_versions(self.host, self.port)

    def ready(self) -> bool:
        # ApiVersions answers once requests are processed; the broker is usable for clients
        # once Metadata lists it (it has registered and been unfenced).
        return self.answering() and _probes.kafka_metadata_brokers(self.host, self.port) >= 1

    def log_files(self) -> list[Path]:
        return [self.dir / "logs" / "kafka.out"]

    def server_properties(self) -> str:
        host, port, controller = self.host, self.port, self.settings.kafka_controller_port
        return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{controller}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}
advertised.listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={self.dir / "data"}
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
# Defaults of 50 partitions make the first consumer-group join slow on a small machine.
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# The default 3 s delay is paid on every group join.
group.initial.rebalance.delay.ms=0
# The default 128 MiB would come out of a 512 MiB heap; must stay above 1 MiB.
log.cleaner.dedupe.buffer.size=4194304
{SMALL_BOX_PROPERTIES}# The controller appends a no-op record to the metadata log every 500 ms by default
# (KIP-835: brokers tell a live controller from a stalled one by it); one node has no one to tell.
metadata.max.idle.interval.ms={METADATA_MAX_IDLE_INTERVAL_MS}
"""

    def prepare(self, echo: Echo) -> None:
        super().prepare(echo)
        ensure_jars(KAFKA, self.settings.cache_dir, echo=echo)

    def launch(self, echo: Echo) -> int:
        lib = ensure_jars(KAFKA, self.settings.cache_dir, echo=echo)  # resolved by prepare()
        java = java_executable()
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        properties = self.dir / "server.properties"
        properties.write_text(self.server_properties())
        log4j2 = self.dir / "log4j2.xml"
        log4j2.write_text(_LOG4J2)
        base = [java, f"-Dlog4j2.configurationFile={log4j2}", "-cp", f"{lib}/*"]
        if not (self.dir / "data" / "meta.properties").is_file():
            self._format(base, properties, echo)
        size = heap(HEAP_ENV, self.default_heap)
        argv = [base[0], f"-Xms{size}", f"-Xmx{size}", *_JVM_FLAGS, *base[1:], "kafka.Kafka", str(properties)]
        echo(f"starting kafka on {self.host}:{self.port} (heap {size})")
        pid = _process.spawn(argv, cwd=self.dir, log=self.log_files()[0])
        self.write_pid(self.pid_file, pid)
        return pid

    def _format(self, base: list[str], properties: Path, echo: Echo) -> None:
        cluster_id = self.cluster_id()
        echo(f"formatting kafka storage in {self.dir / 'data'} (cluster id {cluster_id})")
        argv = [
            *base,
            "kafka.tools.StorageTool",
            "format",
            *self.format_flags,
            "--cluster-id",
            cluster_id,
            "--config",
            str(properties),
            "--ignore-formatted",
        ]
        try:
            result = subprocess.run(
                argv, cwd=self.dir, capture_output=True, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"kafka storage format timed out: {' '.join(argv)}") from exc
        if result.returncode != 0:
            raise ServiceError(
                f"kafka storage format failed (exit {result.returncode}): "
                f"{' '.join(argv)}\n{(result.stdout + result.stderr)[-4000:]}"
            )
