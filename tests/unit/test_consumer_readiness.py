"""A worker's readiness (``tidings_consumer_ready``): 1 only once the rebalance is over and every
partition held has a read position, 0 during a rebalance; ``tidings up`` waits for it on each
worker's metrics page."""

from __future__ import annotations

import asyncio
import http.server
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from prometheus_client import REGISTRY

from streams.adapters import faust_ready
from streams.adapters.push_sender import _Revocations
from tidings import processes


def _ready(group: str) -> float | None:
    return REGISTRY.get_sample_value("tidings_consumer_ready", {"group": group})


class _Signal:
    def __init__(self) -> None:
        self.receivers: list[Callable[..., Any]] = []

    def connect(self, fun: Callable[..., Any]) -> None:
        self.receivers.append(fun)

    async def send(self, *args: Any) -> None:
        for fun in self.receivers:
            await fun(self, *args, signal=self)


class _Consumer:
    """Positions answer when the test says so (aiokafka's wait for a reset or a seek)."""

    def __init__(self, tps: set[TopicPartition]) -> None:
        self.tps = tps
        self.positions: dict[TopicPartition, asyncio.Future[int]] = {}

    def assignment(self) -> set[TopicPartition]:
        return self.tps

    async def position(self, tp: TopicPartition) -> int:
        return await self.positions.setdefault(tp, asyncio.get_running_loop().create_future())


class _App:
    def __init__(self, group: str, tps: set[TopicPartition]) -> None:
        self.conf = type("Conf", (), {"id": group})()
        self.consumer = _Consumer(tps)
        self.rebalancing = True
        self.consumer_generation_id = 1
        self.on_partitions_revoked = _Signal()
        self.on_rebalance_complete = _Signal()


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_ready_only_after_the_rebalance_and_every_position() -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    tps = {TopicPartition("t", 0), TopicPartition("t", 1)}
    app = _App(group, tps)
    faust_ready.report_readiness(app)  # type: ignore[arg-type]
    assert _ready(group) == 0

    await app.on_rebalance_complete.send()
    await asyncio.sleep(faust_ready._POLL_S * 2)
    assert _ready(group) == 0  # still seeking: app.rebalancing

    app.rebalancing = False
    await asyncio.sleep(faust_ready._POLL_S * 2)
    assert _ready(group) == 0  # no position yet (a new group's reset to the log's end)
    first, second = sorted(tps)
    app.consumer.positions[first].set_result(0)
    await _turns()
    assert _ready(group) == 0
    app.consumer.positions[second].set_result(7)
    await _turns()
    assert _ready(group) == 1
    assert REGISTRY.get_sample_value("tidings_consumer_assigned_partitions", {"group": group}) == 2

    await app.on_partitions_revoked.send(tps)
    assert _ready(group) == 0


async def test_not_ready_while_faust_still_seeks_even_with_positions() -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition("t", 0)
    app = _App(group, {tp})
    app.consumer.positions[tp] = asyncio.get_running_loop().create_future()
    app.consumer.positions[tp].set_result(3)
    faust_ready.report_readiness(app)  # type: ignore[arg-type]
    await app.on_rebalance_complete.send()
    await asyncio.sleep(faust_ready._POLL_S * 3)
    assert _ready(group) == 0
    app.rebalancing = False
    await asyncio.sleep(faust_ready._POLL_S * 2)
    assert _ready(group) == 1


async def test_a_rebalance_that_started_again_reports_nothing() -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    app = _App(group, {TopicPartition("t", 0)})
    faust_ready.report_readiness(app)  # type: ignore[arg-type]
    await app.on_rebalance_complete.send()
    app.consumer_generation_id = 2  # a new generation meanwhile; its own completion reports
    app.rebalancing = False
    await asyncio.sleep(faust_ready._POLL_S * 2)
    assert app.consumer.positions == {}
    assert _ready(group) == 0


async def test_a_partition_revoked_while_waiting_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=faust_ready.__name__)
    group = f"g-{uuid.uuid4().hex[:8]}"
    app = _App(group, {TopicPartition("t", 0)})
    faust_ready.report_readiness(app)  # type: ignore[arg-type]
    app.rebalancing = False
    await app.on_rebalance_complete.send()
    await _turns()
    app.consumer.positions[TopicPartition("t", 0)].set_exception(IllegalStateError("not assigned"))
    await _turns()
    assert _ready(group) == 0
    assert "not reported" in caplog.text


class _Sender:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.committed: list[set[int]] = []

    def spawn(self, work: Any) -> None:
        self.tasks.append(asyncio.ensure_future(work))

    async def commit(self, consumer: Any, partitions: set[int]) -> None:
        self.committed.append(partitions)

    def forget(self, partitions: set[int]) -> None:
        pass


async def test_push_sender_ready_after_its_positions_and_not_while_revoked() -> None:
    group = f"push-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition("notifications", 3)
    sender, consumer = _Sender(), _Consumer({tp})
    listener = _Revocations(sender, consumer, group)  # type: ignore[arg-type]
    await listener.on_partitions_assigned([tp])  # returns at once: aiokafka resets after it
    await _turns()
    assert _ready(group) is None
    consumer.positions[tp].set_result(12)
    await asyncio.gather(*sender.tasks)
    assert _ready(group) == 1
    await listener.on_partitions_revoked([tp])
    assert _ready(group) == 0 and sender.committed == [{3}]


class _Page(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def page() -> Iterator[tuple[type[_Page], int]]:
    handler = type("Page", (_Page,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield handler, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _metrics(*ready: float) -> bytes:
    lines = ["# TYPE tidings_consumer_ready gauge"]
    lines += [f'tidings_consumer_ready{{group="g{i}"}} {value}' for i, value in enumerate(ready)]
    return ("\n".join(["# TYPE tidings_other gauge", "tidings_other 1.0", *lines]) + "\n").encode()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        yield proc
    finally:
        processes.stop([proc], timeout_s=5)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        # no group reported yet, or another process on the port
        (b"# TYPE tidings_other gauge\ntidings_other 1.0\n", "no tidings_consumer_ready"),
        (_metrics(1.0, 0.0), "rebalancing"),  # one group of two still rebalancing
    ],
)
def test_waiting_for_workers_to_read_waits_for_every_group(
    page: tuple[type[_Page], int], child: subprocess.Popen[bytes], body: bytes, why: str
) -> None:
    handler, port = page
    handler.body = body
    with pytest.raises(TimeoutError, match=f"deliver \\({why} on 127.0.0.1:{port}/metrics\\)"):
        processes.wait_reading({"deliver": port}, {"deliver": child}, timeout_s=0.6)
    handler.body = _metrics(1.0, 1.0)
    processes.wait_reading({"deliver": port}, {"deliver": child}, timeout_s=5)


def test_waiting_for_workers_to_read_stops_when_one_exits(page: tuple[type[_Page], int]) -> None:
    _, port = page
    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"])
    with pytest.raises(processes.Exited) as raised:
        processes.wait_reading({"persist": port}, {"persist": gone}, timeout_s=30)
    assert raised.value.returncode == 4


def test_waiting_for_a_worker_whose_metrics_do_not_answer_says_so(child: subprocess.Popen[bytes]) -> None:
    with pytest.raises(TimeoutError, match=r"search \(no answer on 127\.0\.0\.1:9/metrics\)"):
        processes.wait_reading({"search": 9}, {"search": child}, timeout_s=0.4)  # the discard port
