"""Metrics and traces of the running system: ``/metrics`` of the gateway and both workers after
real traffic, and one trace that crosses gateway -> Kafka -> workers.

This module starts a system of its own: two gateway workers (so the multiprocess metrics path
runs), tracing to a JSON-lines file, a short lag interval, and consumer groups of its own (a
shared worker group could take the partitions and leave the traced workers idle), and topics of
its own.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from events import Topics, direct_conversation_id
from tests.e2e.conftest import System, user, wait_until
from tidings.migrate import migrate
from tidings.settings import Settings

WAIT_S = 30.0


@pytest.fixture(scope="module")
def traced(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Path]]:
    logs = tmp_path_factory.mktemp("observed-system")
    spans = logs / "spans.jsonl"
    # Topics of its own too: the session's other system shares Redis, and its deliver worker
    # would push these messages (and hide an idle traced worker) if the topics were shared.
    settings = services.model_copy(update={"topic_prefix": f"{services.topic_prefix}obs."})
    asyncio.run(migrate(settings, echo=lambda _: None))
    system = System(
        settings,
        logs,
        env={
            "TIDINGS_TRACING": "file",
            "TIDINGS_TRACING_FILE": str(spans),
            "TIDINGS_GATEWAY_WORKERS": "2",
            "TIDINGS_LAG_INTERVAL_S": "0.5",
            "TIDINGS_WORKER_APP_ID": f"{services.worker_app_id}-observed",
            "TIDINGS_TOPIC_PREFIX": settings.topic_prefix,
        },
    )
    with system.running(System.COMMANDS):
        yield system, spans


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        text: str = r.read().decode()
        return text


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there are none)."""
    found = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found += float(match.group(2))
    return found


def eventually(url: str, check: Callable[[str], bool]) -> str:
    """Scrape ``url`` until ``check`` holds (metrics are updated right after the socket write, and
    worker metrics after the batch); fails with the last scrape after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        text = scrape(url)
        if check(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


async def test_metrics_after_traffic(traced: tuple[System, Path]) -> None:
    system, _ = traced
    gateway = f"{system.http}/metrics"
    deliver = f"http://127.0.0.1:{system.metrics_ports['deliver']}/metrics"
    persist = f"http://127.0.0.1:{system.metrics_ports['persist']}/metrics"
    before = scrape(gateway)
    before_deliver = scrape(deliver)
    a, b = user(), user()
    cid = direct_conversation_id(a, b)
    async with system.connect(b) as receiver, system.connect(a) as sender:
        await sender.send_message(cid, "measured")
        await receiver.expect("message")
        # Both pushes (the receiver's socket and the sender's own) in the delivery histogram
        # and in the push counter: a scrape reads the processes' counter, histogram and gauge
        # files one after the other, so a push written while it reads can be in one and not
        # yet in the other (CI once read the histogram's +2 with the counter's +1).
        during = eventually(
            gateway,
            lambda t: (
                total(t, "tidings_delivery_seconds_count")
                >= total(before, "tidings_delivery_seconds_count") + 2
                and total(t, "tidings_ws_frames_out_total", type="push")
                >= total(before, "tidings_ws_frames_out_total", type="push") + 2
            ),
        )
        # One connection gauge per gateway process (pid label), summed over the processes.
        assert total(during, "tidings_ws_connections") >= 2
        assert len(set(re.findall(r'^tidings_ws_connections\{pid="(\d+)"\}', during, re.M))) == 2
    # send -> ack, and the ack
    assert (
        total(during, "tidings_sends_total", outcome="ok")
        == total(before, "tidings_sends_total", outcome="ok") + 1
    )
    assert (
        total(during, "tidings_send_ack_seconds_count") == total(before, "tidings_send_ack_seconds_count") + 1
    )
    # send -> deliver: the receiver's socket and the sender's own (every device of every member)
    delivered = total(during, "tidings_delivery_seconds_count") - total(
        before, "tidings_delivery_seconds_count"
    )
    assert delivered >= 2
    assert total(during, "tidings_delivery_seconds_bucket", le="10.0") >= delivered
    assert total(during, "tidings_ws_frames_in_total", type="send") >= 1
    pushed = total(during, "tidings_ws_frames_out_total", type="push") - total(
        before, "tidings_ws_frames_out_total", type="push"
    )
    assert pushed >= 2

    # The deliver worker applied the event to the hot cache (and pushed it); the persist worker
    # wrote it to Cassandra; both export their group's lag per partition.
    applied = eventually(
        deliver,
        lambda t: (
            total(t, "tidings_projection_events_total", projection="recent")
            > total(before_deliver, "tidings_projection_events_total", projection="recent")
            and "tidings_consumer_lag{" in t
        ),
    )
    assert total(applied, "tidings_projection_batch_seconds_count", projection="recent") >= 1
    group = f"{system.settings.worker_app_id}-observed-deliver"
    topic = Topics(system.settings.topic_prefix).conversation_events
    partitions = re.findall(
        rf'^tidings_consumer_lag\{{group="{re.escape(group)}",partition="(\d+)",topic="{re.escape(topic)}"\}}',
        applied,
        re.M,
    )
    assert sorted(map(int, partitions)) == list(range(system.settings.topic_partitions))
    persisted = eventually(
        persist,
        lambda t: (
            total(t, "tidings_projection_events_total", projection="persist") >= 1
            and "tidings_consumer_lag{" in t
        ),
    )
    assert total(persisted, "tidings_projection_events_total", projection="persist") >= 1
    assert "tidings_consumer_lag{" in persisted


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def test_one_trace_crosses_gateway_kafka_and_workers(traced: tuple[System, Path]) -> None:
    system, path = traced
    a, b = user(), user()
    cid = direct_conversation_id(a, b)
    async with system.connect(b) as receiver, system.connect(a) as sender:
        await sender.send_message(cid, "traced")
        frame = await receiver.expect("message")
    # the trace context rides in the pub/sub envelope only: the client's frame is the protocol's
    assert set(frame) == {"type", "message"}
    assert set(frame["message"]) == {
        "message_id",
        "conversation_id",
        "sender_id",
        "client_msg_id",
        "kind",
        "body",
        "media",
        "ts",
    }

    def trace_of_send() -> tuple[str, list[dict[str, Any]]] | None:
        spans = read_spans(path)
        sends = [
            s
            for s in spans
            if s["name"] == "gateway.send" and s["attributes"].get("tidings.conversation_id") == cid
        ]
        if not sends:
            return None
        trace_id = sends[0]["context"]["trace_id"]
        return trace_id, [s for s in spans if s["context"]["trace_id"] == trace_id]

    wanted = {
        "gateway.send",
        "kafka.append",
        "worker.consume",
        "deliver.push",
        "project.persist",
        "project.search",
        "gateway.deliver",
    }

    def complete(found: tuple[str, list[dict[str, Any]]] | None) -> bool:
        # A parent span is written when it ends, after its children: wait for the three consumes
        # (deliver, persist and search workers).
        if found is None:
            return False
        consumes = [s for s in found[1] if s["name"] == "worker.consume"]
        recipients = {
            s["attributes"].get("tidings.recipient") for s in found[1] if s["name"] == "gateway.deliver"
        }
        return wanted <= {s["name"] for s in found[1]} and len(consumes) >= 3 and b in recipients

    found = trace_of_send()

    def all_spans_written() -> bool:
        nonlocal found
        found = trace_of_send()
        return complete(found)

    await wait_until(all_spans_written, timeout=WAIT_S, interval=0.2)
    assert found is not None, "no gateway.send span for the conversation"
    _, spans = found
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    assert wanted <= set(by_name), sorted(by_name)
    services = {s["resource"]["attributes"]["service.name"] for s in spans}
    assert {"tidings-gateway", "tidings-worker-deliver", "tidings-worker-persist"} <= services
    # The chain: gateway.send -> kafka.append -> (Kafka headers) -> worker.consume -> stage spans
    (send,) = by_name["gateway.send"]
    (append,) = by_name["kafka.append"]
    assert append["parent_id"] == send["context"]["span_id"]
    consumes = by_name["worker.consume"]
    assert {c["parent_id"] for c in consumes} == {append["context"]["span_id"]}
    assert {c["resource"]["attributes"]["service.name"] for c in consumes} == {
        "tidings-worker-deliver",
        "tidings-worker-persist",
        "tidings-worker-search",
    }
    (push,) = by_name["deliver.push"]
    assert push["parent_id"] in {c["context"]["span_id"] for c in consumes}
    # ... -> (the pub/sub envelope) -> the recipient's gateway: its socket write, in the same trace
    delivers = {s["attributes"]["tidings.recipient"]: s for s in by_name["gateway.deliver"]}
    assert b in delivers and set(delivers) <= {a, b}  # the receiver, and the sender's own devices
    for deliver in delivers.values():
        assert deliver["parent_id"] == push["context"]["span_id"]
        assert deliver["resource"]["attributes"]["service.name"] == "tidings-gateway"
        assert deliver["start_time"] >= push["start_time"] >= send["start_time"]
    assert delivers[b]["attributes"]["tidings.sockets"] == 1  # written to the receiver's socket
