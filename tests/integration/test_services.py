"""The local services launcher against the real servers.

Kafka and Cassandra are started if needed (idempotent) but never stopped here: restarting them
costs tens of seconds. Redis is cheap, so it is stopped and started again.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tidings.services import SERVICES, ServiceError, _probes, down, status, up
from tidings.settings import Settings

pytestmark = pytest.mark.integration


def _quiet(_message: str) -> None:
    pass


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def settings() -> Settings:
    settings = Settings()
    up(settings, echo=_quiet)
    return settings


def test_status_shows_all_three_running_and_answering(settings: Settings) -> None:
    statuses = {s.name: s for s in status(settings)}

    assert tuple(statuses) == SERVICES
    for item in statuses.values():
        assert item.running, item
        assert item.pid is not None and _alive(item.pid), item
        assert item.detail == "ready", item
    assert (statuses["kafka"].host, statuses["kafka"].port) == (settings.kafka_host, settings.kafka_port)
    assert statuses["cassandra"].port == settings.cassandra_port
    assert statuses["redis"].port == settings.redis_port
    # Answering, asked by other means than the probe `status` used.
    assert _probes.kafka_metadata_brokers(settings.kafka_host, settings.kafka_port) == 1
    release = _probes.cql_release_version(
        settings.cassandra_hosts[0],
        settings.cassandra_port,
        settings.cassandra_protocol_version,
        settings.cassandra_local_dc,
    )
    assert release is not None and release.startswith("5.0.")
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_second_up_reuses_running_services(settings: Settings) -> None:
    pids = {s.name: s.pid for s in status(settings)}

    started = time.monotonic()
    again = up(settings, echo=_quiet)
    elapsed = time.monotonic() - started

    assert [s.name for s in again] == list(SERVICES)
    assert not any(s.started_by_us for s in again)
    assert {s.name: s.pid for s in again} == pids
    assert elapsed < 5


def test_down_redis_stops_exactly_redis_and_up_brings_it_back(settings: Settings) -> None:
    pids = {s.name: s.pid for s in status(settings)}
    assert all(pid is not None for pid in pids.values())
    redis_pid, kafka_pid, cassandra_pid = pids["redis"], pids["kafka"], pids["cassandra"]
    assert redis_pid is not None and kafka_pid is not None and cassandra_pid is not None

    stopped = down(settings, only=["redis"], echo=_quiet)

    assert [(s.name, s.running) for s in stopped] == [("redis", False)]
    assert not _alive(redis_pid)
    assert _alive(kafka_pid) and _alive(cassandra_pid)
    after = {s.name: s for s in status(settings)}
    assert not after["redis"].running and after["redis"].pid is None
    assert after["kafka"].pid == kafka_pid and after["cassandra"].pid == cassandra_pid

    back = up(settings, only=["redis"], echo=_quiet)

    assert [(s.name, s.running, s.started_by_us) for s in back] == [("redis", True, True)]
    assert back[0].pid is not None and back[0].pid != redis_pid
    assert _probes.redis_ping(settings.redis_host, settings.redis_port)


@pytest.fixture
def scratch_redis(tmp_path: Path) -> Iterator[Settings]:
    """Settings with a private state folder and Redis port, torn down afterwards."""
    settings = Settings(state_dir=tmp_path / "state", redis_port=_free_port())
    yield settings
    down(settings, only=["redis"], echo=_quiet)


def test_pid_file_of_a_foreign_process_is_ignored_not_signalled(scratch_redis: Settings) -> None:
    pid_file = scratch_redis.state_dir / "redis" / "redis.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text("1\n")  # alive, but not ours: must be neither reused nor killed

    (started,) = up(scratch_redis, only=["redis"], echo=_quiet)
    (stopped,) = down(scratch_redis, only=["redis"], echo=_quiet)

    assert started.started_by_us and started.pid not in (None, 1)
    assert not stopped.running
    assert _alive(1)


def test_pid_file_of_a_dead_process_is_cleaned_and_redis_started(
    scratch_redis: Settings,
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file = scratch_redis.state_dir / "redis" / "redis.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{dead.pid}\n")

    (started,) = up(scratch_redis, only=["redis"], echo=_quiet)

    assert started.started_by_us and started.pid != dead.pid
    assert pid_file.read_text().strip() == str(started.pid)


def test_s3_store_starts_on_loopback_answers_s3_and_stops(tmp_path: Path) -> None:
    from tidings.services.versitygw import s3_answering

    settings = Settings(state_dir=tmp_path / "state", s3_port=_free_port())
    try:
        (started,) = up(settings, only=["s3"], echo=_quiet)
        assert started.started_by_us and started.pid is not None
        assert s3_answering("127.0.0.1", settings.s3_port)
        assert (settings.state_dir / "s3" / "data").is_dir()
    finally:
        (stopped,) = down(settings, only=["s3"], echo=_quiet)
    assert not stopped.running and not _alive(started.pid)
    assert not s3_answering("127.0.0.1", settings.s3_port)


def test_port_taken_by_a_stranger_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = int(stranger.getsockname()[1])
        settings = Settings(state_dir=tmp_path / "state", redis_port=port)

        with pytest.raises(ServiceError, match=f"port {port} is taken .* tidings did not start"):
            up(settings, only=["redis"], echo=_quiet)
        (item,) = [s for s in status(settings) if s.name == "redis"]
        assert not item.running and "did not start" in item.detail
