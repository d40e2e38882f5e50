"""The worker's Faust app alone on the real Kafka: CPU and context switches per event with
its aiokafka consumer in Faust's consumer thread against in the agents' loop
(``streams.adapters.faust_sameloop``), alternating in one process, on uvloop as the workers run.

    .venv/bin/python -m bench.faust_consumer --rate 200 --duration 15 --rounds 2
    .venv/bin/python -m bench.faust_consumer --rate 200 --fetch-wait-ms 50   # a background group

Each run starts the app of ``streams.app.create_app`` (one agent, a stage that only counts,
the deliver role's 2 ms batch window and a fetch that answers at the first record, or
``--fetch-wait-ms`` for persist's sizing) in a new consumer group on a topic of its own, waits
until it consumes, then a child process produces ``--rate`` events a second for
``--duration`` seconds, one send each (acks=all, idempotent, as the gateway sends). Measured
over that window, for this process only (all its threads; the producer is the child's):
CPU µs per event (``getrusage``), context switches per event (voluntary + involuntary, all
threads) and batches per second. Its topics are removed at the end (a group's committed
offsets expire as Kafka's retention says). The summary takes each mode's minimum CPU (the run
least disturbed by the machine's other load).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import machine_line, run_loop
from events import ChatEvent, MessageSent, Snowflake, Topics, encode_event, snowflake_ts
from streams.adapters import faust_fetch
from streams.app import create_app
from tidings.settings import Settings

PARTITIONS = 4


def _event(mid: int, i: int) -> bytes:
    return encode_event(
        MessageSent(
            conversation_id=f"dm:a{i % 50}:b",
            message_id=mid,
            sender_id="a",
            sender_device="d",
            client_msg_id=f"c{i}",
            kind="text",
            body="x" * 200,
            ts=snowflake_ts(mid),
        )
    )


async def produce(bootstrap: str, topic: str, rate: float, count: int) -> None:
    """``count`` events at ``rate`` a second, one send each, paced on a clock."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    ids = Snowflake(2)
    try:
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(topic, _event(ids.next_id(), i), key=f"dm:a{i % 50}:b".encode())
        await producer.flush()
    finally:
        await producer.stop()


class _Count:
    name = "count"

    def __init__(self) -> None:
        self.events = 0
        self.batches = 0
        self.target = 0
        self.first = asyncio.Event()  # the first event once armed
        self.reached = asyncio.Event()  # ``target`` events counted

    def arm(self, target: int) -> None:
        self.target = target
        self.first.clear()
        self.reached.clear()

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        self.events += len(events)
        self.batches += 1
        self.first.set()
        if self.target and self.events >= self.target:
            self.reached.set()


def _switches() -> int:
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        n += int(line.split()[1])
        except OSError:
            continue
    return n


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime + r.ru_stime


async def one_run(in_loop: bool, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"{settings.topic_prefix}bcons{run}.")
    group = f"{settings.worker_app_id}-bcons-{run}"
    bootstrap = settings.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    names = [topics.conversation_events, topics.dead_letters]
    await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    count = _Count()
    app = create_app(
        app_id=group,
        bootstrap=bootstrap,
        topics=topics,
        partitions=PARTITIONS,
        stages=[count],
        batch_size=500,
        batch_window_s=0.002,
        session_timeout_s=10.0,
        fetch_wait_ms=args.fetch_wait_ms,
    )
    app.consumer_in_loop = in_loop  # type: ignore[attr-defined]
    total = int(args.rate * args.duration)
    try:
        await app.start()
        # One event first: the group has joined and the agent consumes.
        await produce(bootstrap, topics.conversation_events, 1000, 1)
        count.arm(1)
        await asyncio.wait_for(count.first.wait(), 60)
        await asyncio.sleep(1.0)
        threads = len(os.listdir("/proc/self/task"))
        count.arm(count.events + total)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.faust_consumer", "--produce", topics.conversation_events,
            "--rate", f"{args.rate:g}", "--count", str(total), "--bootstrap", bootstrap,
        )  # fmt: skip
        # The window opens at the first event of the load (the child's start-up is not in it)
        # and closes at the last; nothing polls in between.
        await asyncio.wait_for(count.first.wait(), 60)
        events0, batches0 = count.events, count.batches
        cpu0, sw0, t0 = _cpu_s(), _switches(), time.monotonic()
        await asyncio.wait_for(count.reached.wait(), args.duration + 60)
        cpu1, sw1, t1 = _cpu_s(), _switches(), time.monotonic()
        got, batches = count.events - events0, count.batches - batches0
        if await child.wait() != 0:
            raise RuntimeError("the producer failed")
    finally:
        await app.stop()
        await admin.delete_topics(names)
        await admin.close()
    return {
        "mode": "in-loop" if in_loop else "thread",
        "cpu_us_per_event": (cpu1 - cpu0) / got * 1e6,
        "switches_per_event": (sw1 - sw0) / got,
        "batches_per_s": batches / (t1 - t0),
        "events_per_batch": got / max(1, batches),
        "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
        "threads": threads,
    }


async def main_async(args: argparse.Namespace) -> None:
    settings = Settings()
    print(
        f"faust_consumer: {args.rate:g} events/s for {args.duration:g} s, fetch wait "
        f"{args.fetch_wait_ms} ms, {args.rounds} rounds; {machine_line()}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for in_loop in (False, True):
            if args.only and args.only != ("in-loop" if in_loop else "thread"):
                continue
            r = await one_run(in_loop, settings, args)
            results.append(r)
            print(
                f"  {r['mode']:>8}: {r['cpu_us_per_event']:7.1f} µs CPU/event  "
                f"{r['switches_per_event']:5.2f} switches/event  {r['batches_per_s']:6.1f} batches/s "
                f"of {r['events_per_batch']:.2f}  {r['cpu_pct']:.1f}% of a core  {r['threads']} threads  "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    for mode in ("thread", "in-loop"):
        mine = [r for r in results if r["mode"] == mode]
        if not mine:
            continue
        best = min(mine, key=lambda r: r["cpu_us_per_event"])
        print(
            f"{mode:>8} min: {best['cpu_us_per_event']:.1f} µs CPU/event, "
            f"{min(r['switches_per_event'] for r in mine):.2f} switches/event"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fetch-wait-ms", type=int, default=0, help="0: the deliver group's fetch")
    ap.add_argument("--only", choices=("thread", "in-loop"), help="one mode (e.g. to profile it)")
    ap.add_argument("--produce", default="", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.produce:
        run_loop(produce(args.bootstrap, args.produce, args.rate, args.count))
        return 0
    assert faust_fetch.App.consumer_in_loop  # the default the workers run with
    run_loop(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
