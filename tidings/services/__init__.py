"""Local Kafka, Cassandra, Redis and the S3 media store for development and tests, without Docker.

Kafka 4.2.1 (KRaft) and Cassandra 5.0.8 run from Maven Central jars on OpenJDK 17; Redis is
Debian's ``redis-server``; the S3 store is versitygw, built with ``go install`` into the cache
(``versitygw.py``). Everything a server writes (data, logs, generated configs, pid files)
lives under ``settings.state_dir / <service>``; jars are cached in ``settings.cache_dir / "jars"``.
``down`` stops only processes whose pid file is ours and whose /proc entry still names our
state folder; nothing is ever killed by name.

Measured on the development machine (2 cores, 23 GiB, Debian 12, OpenJDK 17.0.15, Maven 3.8.7,
Redis 7.0.15):

- Jars: 46 for Kafka 4.2.1, 100 for Cassandra 5.0.8 (Maven with a warm ~/.m2: 3.5 s and
  5.5 s, once; afterwards the marker file makes it a no-op).
- Cold start (fresh state dir, jars cached, all three in parallel on 2 cores): Redis 0.0 s,
  Kafka 13.3 s (3.5 s storage format + 9.8 s broker), Cassandra 14.8 s; 14.8 s in all.
  Kafka alone before Cassandra's JVM competed for the cores: 2.7 s format + 6.8 s broker.
- Warm restart (data kept): Kafka 9.9-10.0 s, Cassandra 13.6-14.6 s, 14 s in all. Topics,
  records and Cassandra tables survive a ``down`` + ``up``.
- ``up`` when everything runs: under 0.1 s (0.5 s for a whole Python process).
- ``down``: Redis 0.1 s, Kafka 0.6-0.9 s, Cassandra 4.8-5.2 s (SIGTERM suffices, no SIGKILL).
- RSS after start: Kafka ~220-230 MB (heap 512m), Cassandra ~1.48-1.51 GB (heap 1G),
  Redis ~7 MB.

Where reality differs from the research notes (shared/notes/kafka-cassandra-redis.md):

- Cassandra's closure (with the cassandra-parent import) has logback 1.5.18 + slf4j-api 2.0.17,
  netty 4.1.130 and the shaded driver-core 3.12.1, not logback 1.2.12 / slf4j 1.7.36 /
  netty 4.1.96. The logback.xml in cassandra.py works with 1.5; the 5.0.2 JVM argument file and
  yaml keys are accepted by 5.0.8 as they are.
- Kafka's RSS is far below the estimated 0.6-0.8 GB.
- Kafka's readiness (ApiVersions error 0, then Metadata v1 listing the broker) coincides with
  the ``Kafka Server started`` log line. On SIGTERM it logs a harmless "Unable to register
  Log4j shutdown hook because JVM is shutting down".
- Cassandra warns, besides what the notes list, about ``read_ahead_kb`` and, once a minute, a
  missing trigger directory (fixed here with ``-Dcassandra.triggers_dir``). SIGAR is only INFO.
- Redis rewrites its process title by default, hiding ``--dir`` from /proc/<pid>/cmdline;
  ``--set-proc-title no`` keeps it so the ownership check (and ``ps``) can see it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tidings.services._base import Service
from tidings.services._common import Echo, ServiceError, ServiceStatus
from tidings.services._system import ensure_system_packages
from tidings.services.cassandra import Cassandra
from tidings.services.kafka import Kafka
from tidings.services.redis import Redis
from tidings.services.versitygw import S3Store
from tidings.settings import Settings

__all__ = ["SERVICES", "ServiceError", "ServiceStatus", "down", "ensure_system_packages", "status", "up"]

SERVICES = ("kafka", "cassandra", "redis", "s3")
_TYPES: dict[str, type[Service]] = {"kafka": Kafka, "cassandra": Cassandra, "redis": Redis, "s3": S3Store}


def _select(settings: Settings, only: Sequence[str] | None) -> list[Service]:
    names = SERVICES if only is None else tuple(only)
    unknown = sorted(set(names) - set(SERVICES))
    if unknown:
        raise ServiceError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    return [_TYPES[name](settings) for name in SERVICES if name in names]


def _run_all(services: list[Service], action: str, echo: Echo) -> list[ServiceStatus]:
    """Run ``up`` or ``down`` on every service at once; report every failure together."""
    if not services:
        return []
    lock = threading.Lock()

    def one_line_at_a_time(message: str) -> None:
        with lock:
            echo(message)

    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        futures = [pool.submit(getattr(service, action), one_line_at_a_time) for service in services]
    results: list[ServiceStatus] = []
    errors: list[str] = []
    for service, future in zip(services, futures, strict=True):
        try:
            results.append(future.result())
        except ServiceError as exc:
            errors.append(f"[{service.name}] {exc}")
    if errors:
        raise ServiceError("\n\n".join(errors))
    return results


def up(settings: Settings, *, only: Sequence[str] | None = None, echo: Echo = print) -> list[ServiceStatus]:
    """Start the selected services (all by default), or reuse them when already running.

    Servers start in parallel and each is waited for at the protocol level (Kafka ApiVersions
    and Metadata, a CQL query, a Redis PING). Raises ``ServiceError`` with the tail of the
    server's log when one fails to start, and when a port is taken by a process that is not ours.
    """
    started = time.monotonic()
    statuses = _run_all(_select(settings, only), "up", echo)
    fresh = [s.name for s in statuses if s.started_by_us]
    what = f"started {', '.join(fresh)}" if fresh else "all already running"
    echo(f"services up in {time.monotonic() - started:.1f} s ({what})")
    return statuses


def down(settings: Settings, *, only: Sequence[str] | None = None, echo: Echo = print) -> list[ServiceStatus]:
    """Stop the selected services that we started (SIGTERM, then SIGKILL after 30 s)."""
    return _run_all(_select(settings, only), "down", echo)


def status(settings: Settings) -> list[ServiceStatus]:
    """Whether each service runs from our pid file, and whether it answers its protocol."""
    return [service.status() for service in _select(settings, None)]
