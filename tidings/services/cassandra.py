"""Single-node Cassandra 5.0.8 on JDK 17, from Maven jars, with every config file written here.

The JVM flags are upstream's ``jvm-server.options`` + ``jvm17-server.options`` minus what only
slows a development start (``-ea``, ``AlwaysPreTouch``, NUMA, GC logs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tidings.services import _probes, _process
from tidings.services._base import Service
from tidings.services._common import Echo, heap, java_executable
from tidings.services._jars import CASSANDRA, ensure_jars, find_jar

HEAP_ENV = "TIDINGS_CASSANDRA_HEAP"
_JVM17_ARGS = """\
-Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
-XX:G1HeapRegionSize=16m
-XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
-XX:+UseThreadPriorities -XX:+HeapDumpOnOutOfMemoryError -XX:+ExitOnOutOfMemoryError
-XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
-Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true -Djdk.attach.allowAttachSelf=true
--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED
--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
--add-exports=java.management/com.sun.jmx.remote.security=ALL-UNNAMED
--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED
--add-exports=java.sql/java.sql=ALL-UNNAMED
--add-exports=java.base/java.lang.ref=ALL-UNNAMED
--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED
--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED
--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
--add-opens=java.base/java.lang.module=ALL-UNNAMED
--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED
--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED
--add-opens=java.base/jdk.internal.math=ALL-UNNAMED
--add-opens=java.base/jdk.internal.module=ALL-UNNAMED
--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED
--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED
--add-opens=java.base/sun.nio.ch=ALL-UNNAMED
--add-opens=java.base/java.io=ALL-UNNAMED
--add-opens=java.base/java.lang.reflect=ALL-UNNAMED
--add-opens=java.base/java.lang=ALL-UNNAMED
--add-opens=java.base/java.util=ALL-UNNAMED
--add-opens=java.base/java.nio=ALL-UNNAMED
--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
-Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true
-Dio.netty.allocator.maxOrder=11
"""
# Thread pools for a 2-core box (docs/operations.md, "Cassandra and Kafka on 2 cores"). The
# defaults are sized for big servers (32 reads, 32 writes, 128 native-transport threads); on
# two cores more threads only queue for the CPU. Every key is a field of 5.0's Config.java.
SMALL_BOX_YAML = """\
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 2
concurrent_materialized_view_writes: 2
native_transport_max_threads: 8
memtable_flush_writers: 1
concurrent_compactors: 1
"""
# Memtables (docs/operations.md, docs/benchmarks.md session 11): 5.0's trie memtable with its
# cells off the heap, as upstream's cassandra_latest.yaml has it. The default (skip-list
# memtables on `heap_buffers`) keeps a 1 MiB on-heap slab per table written since its last
# flush; on the development node, where every test namespace leaves its keyspace of 22 tables
# (1,900 tables and counting), that filled the 1 GiB heap and kept G1's concurrent marking
# busy (a quarter of a core, half of Cassandra's CPU). With 35 keyspaces written once the live
# heap after a full GC was 646 MB before and 334 MB with these; the write path's CPU per event
# did not change. The commit log, the write path's durability, is the same: only where a
# memtable keeps its rows moves (the off-heap pool is `memtable_offheap_space`).
MEMTABLE_YAML = """\
memtable_allocation_type: offheap_objects
memtable:
  configurations:
    skiplist:
      class_name: SkipListMemtable
    trie:
      class_name: TrieMemtable
    default:
      inherits: trie
"""
# Batches (projections/adapters/cql.py, docs/operations.md): the persist worker and replay put
# the rows of many partitions in one UNLOGGED batch, one request instead of one per ~10
# partitions (at 200 msgs/s a batch of ~12 events, ~60 partitions and ~17 KB, went as ~13
# requests, and every request wakes the node's request pool: docs/benchmarks.md, session 12).
# Upstream warns past 10 partitions and 5 KiB and refuses past 50 KiB, sized for clusters
# where a batch's coordinator forwards most partitions to other nodes; on one node (and on
# the cluster profile's 3 nodes at replication 3) every node holds every partition. The client
# reads these from system_views.settings and stays below them, so a node still on upstream's
# values gets small batches and no warnings.
BATCH_YAML = """\
unlogged_batch_across_partitions_warn_threshold: 100
batch_size_warn_threshold: 64KiB
batch_size_fail_threshold: 640KiB
"""
# Latency histograms (DecayingEstimatedHistogramReservoir) keep their buckets in this many
# stripes (upstream 2) so that threads on different cores rarely update the same counters. A
# table has dozens of them: with ~1,900 tables their long[] arrays were 298 MB of the heap.
# On 2 cores with 4 write and 4 read threads one stripe halves that; an update costs the same.
HISTOGRAM_STRIPES = 1
# The sampled clock behind request deadlines and queue-time metrics ticks every 2 ms by
# default: 500 wake-ups a second of the ScheduledFastTasks thread, idle or not. Deadlines are
# seconds long, so 10 ms of precision (the default before 4.0) costs nothing.
APPROXIMATE_TIME_PRECISION_MS = 10
# Timer slack of the JVM's threads (Linux prctl PR_SET_TIMERSLACK, inherited by every thread;
# 0 = the kernel's default of 50 µs). Cassandra's shared request pool (SEPWorker) keeps an idle
# worker "spinning" for 10 ms after each task, in parkNanos sleeps of 10 µs: with a request
# every few ms that is a wake-up every ~60 µs, all the time. With 1 ms of slack those sleeps
# last ~1 ms: 83 % fewer context switches and about half the CPU per write on this box; a
# request that comes while a worker spins waits up to that long (docs/operations.md,
# docs/benchmarks.md "servers"). Only timers are late: a thread woken by another is not.
TIMER_SLACK_ENV = "TIDINGS_CASSANDRA_TIMER_SLACK_NS"
TIMER_SLACK_NS = 1_000_000
# Sets the slack, then becomes the JVM (same pid, so the pid file and ownership check hold).
_WITH_TIMER_SLACK = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.prctl(29, int(sys.argv[1]), 0, 0, 0) != 0:\n"  # 29: PR_SET_TIMERSLACK
    "    sys.exit(f'prctl(PR_SET_TIMERSLACK) failed: errno {ctypes.get_errno()}')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
_LOGBACK = """<?xml version="1.0" encoding="UTF-8"?>
<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>${cassandra.logdir}/system.log.%i</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %logger{1} - %msg%n</pattern></encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter"><level>WARN</level></filter>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %logger{1} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG"/>
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"""


class Cassandra(Service):
    name = "cassandra"
    ready_timeout_s = 180.0
    default_heap = "1G"
    cluster_name = "tidings-dev"
    # The default role's set-up waits this long after start-up. One node: no reason to wait.
    # A cluster's node must not use 0: while a peer is down the set-up is retried after this
    # delay, and at 0 it spins (100,000 log lines in seconds, a core busy).
    superuser_setup_delay_ms = 0
    # Schema and system tables without their blocking flushes: much faster DDL, which the tests
    # make a lot of. A node killed -9 then forgets recent schema changes (a new keyspace), so a
    # cluster's nodes, which must survive that, keep them durable (tidings/services/cluster.py).
    unsafe_system = True
    timer_slack_ns = TIMER_SLACK_NS

    def seeds(self) -> str:
        """The seed list of cassandra.yaml: one node is its own seed."""
        return f"{self.host}:{self.settings.cassandra_storage_port}"

    def extra_yaml(self) -> str:
        """cassandra.yaml keys a subclass adds (a cluster's nodes)."""
        return ""

    @property
    def host(self) -> str:
        return self.settings.cassandra_hosts[0]

    @property
    def port(self) -> int:
        return self.settings.cassandra_port

    def ports(self) -> list[int]:
        return [self.port, self.settings.cassandra_storage_port]

    def answering(self) -> bool:
        return _probes.cql_supported(self.host, self.port)

    def ready(self) -> bool:
        # The native transport starts last, but a real query also proves the system keyspace
        # is readable with the protocol version the application uses.
        if not self.answering():
            return False
        version = _probes.cql_release_version(
            self.host,
            self.port,
            self.settings.cassandra_protocol_version,
            self.settings.cassandra_local_dc,
        )
        return version is not None

    def log_files(self) -> list[Path]:
        return [self.dir / "logs" / "cassandra.out", self.dir / "logs" / "system.log"]

    def cassandra_yaml(self) -> str:
        host, storage = self.host, self.settings.cassandra_storage_port
        # Only keys that exist in 5.0's Config.java: unknown keys are fatal. Directories come
        # from -Dcassandra.storagedir.
        return f"""\
cluster_name: '{self.cluster_name}'
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{self.seeds()}"
listen_address: {host}
rpc_address: {host}
storage_port: {storage}
native_transport_port: {self.port}
start_native_transport: true
commitlog_sync: periodic
commitlog_sync_period: 10000ms
# Every DROP/TRUNCATE would otherwise snapshot, and tests truncate a lot.
auto_snapshot: false
hinted_handoff_enabled: false
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
{MEMTABLE_YAML}{BATCH_YAML}key_cache_size: 16MiB
{SMALL_BOX_YAML}{self.extra_yaml()}"""

    def durability_flags(self) -> list[str]:
        """The JVM flags that trade the system tables' durability for speed (``unsafe_system``)."""
        return ["-Dcassandra.unsafesystem=true"] if self.unsafe_system else []

    def prepare(self, echo: Echo) -> None:
        super().prepare(echo)
        ensure_jars(CASSANDRA, self.settings.cache_dir, echo=echo)

    def launch(self, echo: Echo) -> int:
        lib = ensure_jars(CASSANDRA, self.settings.cache_dir, echo=echo)  # resolved by prepare()
        java = java_executable()
        conf, data, logs = self.dir / "conf", self.dir / "data", self.dir / "logs"
        jna_tmp = self.dir / "tmp"  # JNA unpacks a native library; /tmp may be noexec
        triggers = self.dir / "triggers"  # absent, it costs a warning every minute
        for folder in (conf, data, logs, jna_tmp, triggers):
            folder.mkdir(parents=True, exist_ok=True)
        (conf / "cassandra.yaml").write_text(self.cassandra_yaml())
        (conf / "logback.xml").write_text(_LOGBACK)
        (conf / "jvm17-server.args").write_text(_JVM17_ARGS)
        size = heap(HEAP_ENV, self.default_heap)
        argv = [
            java,
            f"@{conf / 'jvm17-server.args'}",
            f"-Xms{size}",
            f"-Xmx{size}",
            f"-javaagent:{find_jar(lib, 'jamm')}",
            f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
            f"-Dcassandra.storagedir={data}",
            f"-Dcassandra.logdir={logs}",
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            # Without it CassandraDaemon closes stdout/stderr and start-up errors vanish.
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            f"-Dcassandra.approximate_time_precision_ms={APPROXIMATE_TIME_PRECISION_MS}",
            f"-Dcassandra.dehr_stripe_count={HISTOGRAM_STRIPES}",
            f"-Dcassandra.superuser_setup_delay_ms={self.superuser_setup_delay_ms}",
            *self.durability_flags(),
            f"-Djna.tmpdir={jna_tmp}",
            f"-Dcassandra.triggers_dir={triggers}",
            "-cp",
            f"{conf}:{lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        slack_ns = int(os.environ.get(TIMER_SLACK_ENV, str(self.timer_slack_ns)))
        if slack_ns > 0:
            argv = [sys.executable, "-c", _WITH_TIMER_SLACK, str(slack_ns), *argv]
        echo(f"starting cassandra on {self.host}:{self.port} (heap {size})")
        pid = _process.spawn(argv, cwd=self.dir, log=logs / "cassandra.out", env={"MALLOC_ARENA_MAX": "4"})
        self.write_pid(self.pid_file, pid)
        return pid
