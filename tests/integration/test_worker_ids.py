"""The Snowflake worker-id lease (``commands/adapters/worker_ids.py``) against real Redis servers of the
test's own (never the shared one: they are restarted and paused here): two gateway-like lease
owners, each a process (``lease_holder.py``), must never issue ids with the same worker id at
the same time: side by side, across a Redis restart (persistent, and one that comes back
empty), and when a holder is paused past its lease's TTL while another takes the id."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from events import keys
from events.ids import MAX_WORKER, SEQUENCE_BITS, WORKER_BITS, snowflake_ts
from tidings.services import down, up
from tidings.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TTL_S = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quiet(_: str) -> None:
    pass


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[Settings]:
    """A Redis of the test's own as the launcher runs it (append-only file, fsync every second)."""
    settings = Settings(state_dir=tmp_path / "state", redis_port=_free_port())
    up(settings, only=["redis"], echo=_quiet)
    yield settings
    down(settings, only=["redis"], echo=_quiet)


class Holder:
    """One ``lease_holder`` process and what it wrote."""

    def __init__(self, port: int, out: Path, *, retry_s: float = 0.0) -> None:
        self.out = out
        command = [sys.executable, "-m", "tests.integration.lease_holder", "--port", str(port)]
        command += ["--ttl", str(TTL_S), "--out", str(out), "--retry", str(retry_s)]
        self.process = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ))

    def events(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.endswith("}")]

    def wait_for(self, what: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not what(self.events()):
            assert self.process.poll() is None or what(self.events()), (
                self.process.returncode,
                self.events(),
            )
            assert time.monotonic() < deadline, f"timed out; wrote {self.events()[-5:]}"
            time.sleep(0.05)

    def acquired(self) -> int:
        self.wait_for(lambda es: any(e["e"] in ("acquired", "failed") for e in es))
        event = next(e for e in self.events() if e["e"] in ("acquired", "failed"))
        assert event["e"] == "acquired", event
        return int(event["w"])

    def ids(self) -> list[int]:
        return [e["id"] for e in self.events() if e["e"] == "id"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[Callable[..., Holder]]:
    started: list[Holder] = []

    def start(port: int, *, retry_s: float = 0.0) -> Holder:
        holder = Holder(port, tmp_path / f"holder{len(started)}.jsonl", retry_s=retry_s)
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.stop()


def _worker_of(snowflake: int) -> int:
    return (snowflake >> SEQUENCE_BITS) & ((1 << WORKER_BITS) - 1)


def _fill_all_but(client: redis.Redis, free: set[int]) -> None:
    """Every worker id but ``free`` leased by a stranger for an hour."""
    with client.pipeline(transaction=False) as pipe:
        for worker in range(MAX_WORKER + 1):
            if worker not in free:
                pipe.set(keys.snowflake_lease(worker), "stranger", px=3_600_000)
        pipe.execute()


def test_two_holders_lease_different_ids_and_a_third_finds_none(
    persistent_redis: Settings, holders: Callable[..., Holder]
) -> None:
    port = persistent_redis.redis_port
    _fill_all_but(redis.Redis(port=port), {7, 8})
    first, second = holders(port), holders(port)
    assert {first.acquired(), second.acquired()} == {7, 8}
    third = holders(port)
    third.wait_for(lambda es: bool(es))
    assert third.events() == [{"e": "failed", "msg": "all Snowflake worker ids are leased"}]
    assert third.process.wait(timeout=15) == 3
    first.wait_for(lambda es: len([e for e in es if e["e"] == "id"]) > 50)
    second.wait_for(lambda es: len([e for e in es if e["e"] == "id"]) > 50)
    assert {_worker_of(i) for i in first.ids()} == {first.acquired()}
    assert {_worker_of(i) for i in second.ids()} == {second.acquired()}
    assert not set(first.ids()) & set(second.ids())


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_leases_survive_a_redis_restart(
    persistent_redis: Settings, holders: Callable[..., Holder], how: str
) -> None:
    """The leases are in the append-only file: after a restart (clean, or killed a second after
    the last renewal) the holders keep their ids and a newcomer cannot take one of them."""
    port = persistent_redis.redis_port
    client = redis.Redis(port=port)
    first, second = holders(port), holders(port)
    held = {first.acquired(), second.acquired()}
    tokens = {w: client.get(keys.snowflake_lease(w)) for w in held}
    if how == "stop":
        down(persistent_redis, only=["redis"], echo=_quiet)
    else:
        time.sleep(1.2)  # appendfsync everysec: what was written more than a second ago is on disk
        pid = int((persistent_redis.state_dir / "redis" / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    _start_again(persistent_redis)
    client = redis.Redis(port=port)
    assert {w: client.get(keys.snowflake_lease(w)) for w in held} == tokens
    restarted = time.time()
    for holder in (first, second):
        holder.wait_for(
            lambda es: any(
                e["e"] == "id" and snowflake_ts(e["id"]) > (restarted + 2 * TTL_S) * 1000 for e in es
            )
        )
        assert not any(e["e"] == "refused" and e["lost"] for e in holder.events())
    _fill_all_but(client, held)
    newcomer = holders(port)
    newcomer.wait_for(lambda es: bool(es))
    assert newcomer.events() == [{"e": "failed", "msg": "all Snowflake worker ids are leased"}]


def _start_again(settings: Settings) -> None:
    """``up`` on the same port and folder. Right after a kill -9 (the old server reaped, its
    port closed when ``ss`` looked) the launcher's probe at times still found the port answering
    (about one run in five here; the cause was not found), so ``up`` is asked again a few times
    on that one error."""
    from tidings.services import ServiceError

    deadline = time.monotonic() + 15
    while True:
        try:
            up(settings, only=["redis"], echo=_quiet)
            return
        except ServiceError as exc:
            if "is taken" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


class VolatileRedis:
    """A redis-server without persistence (as compose ran it before): a restart loses every key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            server,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.process = subprocess.Popen(command, cwd=self.folder, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[VolatileRedis]:
    server = VolatileRedis(tmp_path / "volatile")
    server.start()
    yield server
    server.kill()


def test_a_redis_that_comes_back_empty_never_gives_a_used_id_to_a_second_holder(
    volatile_redis: VolatileRedis, holders: Callable[..., Holder]
) -> None:
    """The holder still relies on its id (within its own deadline) when the restarted Redis
    hands that id to a newcomer: the newcomer must not issue ids before the holder has found
    out and stopped.

    The holder is paused from the Redis restart until the newcomer holds the id: left running,
    its renewal (every TTL/3) takes the free id back first whenever the newcomer's process is
    slow to start, and the scenario never happens."""
    port = volatile_redis.port
    _fill_all_but(redis.Redis(port=port), {5})
    holder = holders(port)
    assert holder.acquired() == 5
    holder.wait_for(lambda es: len([e for e in es if e["e"] == "id"]) > 20)
    holder.process.send_signal(signal.SIGSTOP)
    volatile_redis.kill()
    volatile_redis.start()
    _fill_all_but(redis.Redis(port=port), {5})  # the newcomer can only get the holder's id
    newcomer = holders(port, retry_s=30)
    assert newcomer.acquired() == 5
    holder.process.send_signal(signal.SIGCONT)
    newcomer.wait_for(lambda es: len([e for e in es if e["e"] == "id"]) > 20)
    holder.wait_for(lambda es: any(e["e"] == "refused" and e["lost"] for e in es))
    last_of_holder = max(snowflake_ts(i) for i in holder.ids())
    first_of_newcomer = min(snowflake_ts(i) for i in newcomer.ids())
    assert last_of_holder < first_of_newcomer, (last_of_holder, first_of_newcomer)


def test_a_holder_paused_past_its_ttl_issues_nothing_once_another_took_its_id(
    persistent_redis: Settings, holders: Callable[..., Holder]
) -> None:
    """SIGSTOP the holder longer than the TTL; its key expires and a newcomer leases the id.
    On SIGCONT the paused holder must not issue a single id with it (its own deadline passed)
    and must find out it lost the id."""
    port = persistent_redis.redis_port
    _fill_all_but(redis.Redis(port=port), {3})
    holder = holders(port)
    assert holder.acquired() == 3
    holder.wait_for(lambda es: len([e for e in es if e["e"] == "id"]) > 20)
    holder.process.send_signal(signal.SIGSTOP)
    paused_at = time.time()
    newcomer = holders(port, retry_s=30)
    assert newcomer.acquired() == 3
    taken_at = next(e["t"] for e in newcomer.events() if e["e"] == "acquired")
    assert taken_at - paused_at > TTL_S * 0.9
    newcomer.wait_for(lambda es: len([e for e in es if e["e"] == "id"]) > 20)
    holder.process.send_signal(signal.SIGCONT)
    holder.wait_for(lambda es: any(e["e"] == "refused" and e["lost"] for e in es))
    late = [i for i in holder.ids() if snowflake_ts(i) >= paused_at * 1000]
    assert late == [], f"the paused holder issued {len(late)} ids with worker id 3 after its lease lapsed"
    newcomer_ids = set(newcomer.ids())
    assert newcomer_ids and not newcomer_ids & set(holder.ids())
