"""The worker's Faust app alone on the real Kafka: CPU and context switches per event with
its aiokafka consumer in Faust's consumer thread against in the agents' loop
(``streams.adapters.faust_sameloop``), alternating in one process, on uvloop as the workers run.

    .venv/bin/python -m bench.faust_consumer --rate 200 --duration 15 --rounds 2
    .venv/bin/python -m bench.faust_consumer --rate 200 --fetch-wait-ms 50   # a background group
    .venv/bin/python -m bench.faust_consumer --compare raw --rate 1000 --fetch-wait-ms 50

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

``--compare raw`` alternates the worker's Faust app with ``no-faust``: a plain
``AIOKafkaConsumer`` in the same group settings and fetch sizing (stock aiokafka's fetcher, not
the workers' ``LeanFetcher``), handing each fetch's records straight to the same ``Projector``
and committing every 2.8 s as Faust does. No rebalance handling, flow control or dead letters
worth the name: the floor a batch path past Faust's per-record machinery could approach, not a
worker. Since the batch agents (``streams.adapters.faust_batches``, session 15), the worker's
app itself takes that path; the comparison shows what is left of Faust's share.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import machine_line, run_loop
from events import ChatEvent, MessageSent, Snowflake, Topics, encode_event, snowflake_ts
from streams.adapters import faust_fetch
from streams.app import FaustDeadLetters, create_app
from streams.projector import Projector, Record
from tidings.settings import Settings

PARTITIONS = 4  # --partitions; the system's topic has 12 (settings.topic_partitions)


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


async def produce(bootstrap: str, topic: str, rate: float, count: int, poisson: bool = False) -> None:
    """``count`` events at ``rate`` a second, one send each, paced on a clock: evenly, or with
    ``poisson`` at exponentially distributed gaps (many independent senders, as the e2e
    benchmark's pairs)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    ids = Snowflake(2)
    try:
        start = time.monotonic()
        due = 0.0
        gaps = random.Random(count)
        for i in range(count):
            due = due + gaps.expovariate(rate) if poisson else i / rate
            delay = start + due - time.monotonic()
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
        self.latencies_ms: list[float] = []  # from the event's ts (its id's clock) to here
        self.first = asyncio.Event()  # the first event once armed
        self.reached = asyncio.Event()  # ``target`` events counted

    def arm(self, target: int) -> None:
        self.target = target
        self.first.clear()
        self.reached.clear()

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        self.events += len(events)
        self.batches += 1
        now_ms = time.time() * 1000
        self.latencies_ms.extend(now_ms - e.ts for e in events if isinstance(e, MessageSent))
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


def _threads(pid: int) -> dict[str, tuple[str, int, int]]:
    """Per thread of ``pid``: (name, CPU clock ticks, context switches), from /proc."""
    out: dict[str, tuple[str, int, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2 :].split()
            switches = 0
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
            out[tid] = (st[st.index("(") + 1 : st.rindex(")")], int(fields[11]) + int(fields[12]), switches)
        except OSError:
            continue
    return out


Snapshot = dict[str, tuple[str, int, int]]


def _java_names(pid: int) -> dict[str, str]:
    """tid -> a JVM's full thread name (``jcmd Thread.print``: ``"name" ... nid=0x<tid>``);
    /proc's names stop at 15 characters (``data-plane-kafk`` is the network thread and the
    request handlers alike). Empty if ``pid`` is no JVM or jcmd is missing."""
    # The JVM's own jcmd (the launcher's JDK is not on PATH).
    jcmd = os.path.join(os.path.dirname(os.path.realpath(f"/proc/{pid}/exe")), "jcmd")
    try:
        out = subprocess.run(
            [jcmd, str(pid), "Thread.print"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names = {}
    for m in re.finditer(r'^"([^"]+)".*? nid=(0x[0-9a-f]+)', out, re.M):
        names[str(int(m.group(2), 16))] = m.group(1)
    return names


def _by_name(a: Snapshot, b: Snapshot, names: dict[str, str]) -> dict[str, list[float]]:
    """CPU seconds and switches between two ``_threads`` snapshots, summed by thread name
    (digits at the end dropped: ``data-plane-kafka-request-handler-0`` and ``-1`` are one)."""
    hz = os.sysconf("SC_CLK_TCK")
    agg: dict[str, list[float]] = {}
    for tid, (name, cpu, sw) in b.items():
        cpu0, sw0 = (a[tid][1], a[tid][2]) if tid in a else (0, 0)
        name = names.get(tid, name)
        g = agg.setdefault(re.sub(r"[-:#]?\d+$", "", name), [0.0, 0.0])
        g[0] += (cpu - cpu0) / hz
        g[1] += sw - sw0
    return agg


def _quantiles(values: list[float]) -> str:
    """Mean, P50 and P99 (ms, from whole-ms event timestamps: the mean is good to ~0.1 ms)."""
    if not values:
        return "-"
    v = sorted(values)
    p99 = v[min(len(v) - 1, len(v) * 99 // 100)]
    return f"mean {sum(v) / len(v):.2f} P50 {v[len(v) // 2]:.1f} P99 {p99:.1f}"


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime + r.ru_stime


# What --compare alternates: the modes, each (consumer in the agents' loop, LeanFetcher for the
# delivery group, KIP-227 fetch sessions). (Session 11 also compared a delivery fetch linger,
# commit b721001; withdrawn.)
MODES: dict[str, dict[str, tuple[bool, bool, bool]]] = {
    "thread": {"thread": (False, True, True), "in-loop": (True, True, True)},
    "lean": {"aiokafka": (True, False, False), "lean": (True, True, False)},
    "session": {"no-session": (True, True, False), "session": (True, True, True)},
    "raw": {"faust": (True, True, True), "no-faust": (True, True, True)},
}
NO_FAUST = "no-faust"
COMMIT_EVERY_S = 2.8  # Faust's broker_commit_interval


class _Raw:
    """The ``no-faust`` mode's consumer (see the module's docstring): ``start``, ``stop`` and
    the aiokafka consumer, as the run uses an app's."""

    def __init__(self, group: str, bootstrap: str, topic: str, projector: Projector, wait_ms: int) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # the workers' sizing (streams.adapters.faust_fetch): at the first record, or gathered
            fetch_min_bytes=faust_fetch.FETCH_MIN_BYTES if wait_ms else 1,
            fetch_max_wait_ms=wait_ms or 1500,
            max_poll_records=500,
        )
        self.projector = projector
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        consumer, handle = self.consumer, self.projector.handle
        committed = time.monotonic()
        while True:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=500)
            records = [
                Record(m.topic, m.partition, m.offset, m.key, m.value, dict(m.headers))
                for messages in fetched.values()
                for m in messages
            ]
            if records:
                await handle(records)
            if time.monotonic() - committed >= COMMIT_EVERY_S:
                await consumer.commit()
                committed = time.monotonic()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.consumer.stop()


async def one_run(mode: str, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    in_loop, lean, sessions = MODES[args.compare][mode]
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"{settings.topic_prefix}bcons{run}.")
    group = f"{settings.worker_app_id}-bcons-{run}"
    bootstrap = settings.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    names = [topics.conversation_events, topics.dead_letters]
    await admin.create_topics([NewTopic(n, args.partitions, 1) for n in names])
    count = _Count()
    app: Any
    if mode == NO_FAUST:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)  # dead letters (none are sent)
        await producer.start()
        dead = FaustDeadLetters(cast(Any, _RawTopic(producer, topics.dead_letters)), group)
        app = _Raw(group, bootstrap, topics.conversation_events, Projector([count], dead), args.fetch_wait_ms)
    else:
        producer = None
        app = create_app(
            app_id=group,
            bootstrap=bootstrap,
            topics=topics,
            partitions=args.partitions,
            stages=[count],
            batch_size=500,
            batch_window_s=0.002,
            session_timeout_s=10.0,
            fetch_wait_ms=args.fetch_wait_ms,
        )
        app.consumer_in_loop = in_loop
        app.lean_fetch = lean
        app.fetch_sessions = sessions
    total = int(args.rate * args.duration)
    fetches = [0]
    try:
        await app.start()
        _count_fetches(app, fetches)
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
            *(["--poisson"] if args.poisson else []),
        )  # fmt: skip
        # The window opens at the first event of the load (the child's start-up is not in it)
        # and closes at the last; nothing polls in between.
        await asyncio.wait_for(count.first.wait(), 60)
        events0, batches0, fetches0 = count.events, count.batches, fetches[0]
        count.latencies_ms.clear()
        server0 = _threads(args.server_pid) if args.server_pid else {}
        cpu0, sw0, t0 = _cpu_s(), _switches(), time.monotonic()
        await asyncio.wait_for(count.reached.wait(), args.duration + 60)
        cpu1, sw1, t1 = _cpu_s(), _switches(), time.monotonic()
        server = {}
        if args.server_pid:
            server = _by_name(server0, _threads(args.server_pid), _java_names(args.server_pid))
        n_fetches = fetches[0] - fetches0
        got, batches = count.events - events0, count.batches - batches0
        if await child.wait() != 0:
            raise RuntimeError("the producer failed")
    finally:
        await app.stop()
        if producer is not None:
            await producer.stop()
        await admin.delete_topics(names)
        await admin.close()
    return {
        "mode": mode,
        "latency_ms": _quantiles(count.latencies_ms),
        "cpu_us_per_event": (cpu1 - cpu0) / got * 1e6,
        "switches_per_event": (sw1 - sw0) / got,
        "batches_per_s": batches / (t1 - t0),
        "events_per_batch": got / max(1, batches),
        "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
        "threads": threads,
        "fetches_per_s": n_fetches / (t1 - t0),
        "cpu_us_per_fetch": (cpu1 - cpu0) / max(1, n_fetches) * 1e6,
        "server": {name: (cpu / got * 1e6, sw / got) for name, (cpu, sw) in server.items()},
        "server_cpu_us_per_fetch": sum(c for c, _ in server.values()) / max(1, n_fetches) * 1e6,
        "server_switches_per_fetch": sum(w for _, w in server.values()) / max(1, n_fetches),
    }


class _RawTopic:
    """The ``send`` of a Faust topic that ``FaustDeadLetters`` uses, over a plain producer."""

    def __init__(self, producer: AIOKafkaProducer, name: str) -> None:
        self._producer, self._name = producer, name

    async def send(self, *, key: bytes | None, value: bytes, headers: dict[str, bytes]) -> None:
        await self._producer.send_and_wait(self._name, value, key=key, headers=list(headers.items()))


def _count_fetches(app: Any, into: list[int]) -> None:
    """Count the fetch requests of the app's aiokafka consumer (its Fetcher's per-request
    coroutine, looked up on the instance per fetch by aiokafka's fetch routine)."""
    consumer = app.consumer if isinstance(app, _Raw) else app.consumer._thread._consumer
    fetcher = consumer._fetcher
    inner = fetcher._proc_fetch_request

    async def counted(*a: Any, **kw: Any) -> Any:
        into[0] += 1
        return await inner(*a, **kw)

    fetcher._proc_fetch_request = counted


async def main_async(args: argparse.Namespace) -> None:
    settings = Settings()
    print(
        f"faust_consumer: {args.rate:g} events/s for {args.duration:g} s, fetch wait "
        f"{args.fetch_wait_ms} ms, {args.rounds} rounds; {machine_line()}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for mode in MODES[args.compare]:
            if args.only and args.only != mode:
                continue
            r = await one_run(mode, settings, args)
            results.append(r)
            print(
                f"  {r['mode']:>9}: {r['cpu_us_per_event']:7.1f} µs CPU/event  "
                f"{r['switches_per_event']:5.2f} switches/event  {r['batches_per_s']:6.1f} batches/s "
                f"of {r['events_per_batch']:.2f}  {r['cpu_pct']:.1f}% of a core  {r['threads']} threads  "
                f"load {os.getloadavg()[0]:.1f}\n"
                f"            event ts -> stage ms: {r['latency_ms']}; "
                f"{r['fetches_per_s']:.1f} fetches/s, "
                f"{r['cpu_us_per_fetch']:.0f} µs CPU per fetch here",
                flush=True,
            )
            if r["server"]:
                print(
                    f"            server pid {args.server_pid}: "
                    f"{r['server_cpu_us_per_fetch']:.0f} µs CPU and "
                    f"{r['server_switches_per_fetch']:.2f} switches per fetch; per event by thread:",
                    flush=True,
                )
                for name, (cpu, sw) in sorted(r["server"].items(), key=lambda kv: -kv[1][0]):
                    if cpu >= 1 or sw >= 0.01:
                        print(f"              {name:44s} {cpu:7.1f} µs {sw:6.2f} switches", flush=True)
    for mode in MODES[args.compare]:
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
    ap.add_argument("--poisson", action="store_true", help="exponential gaps between sends, not even")
    ap.add_argument("--compare", choices=tuple(MODES), default="thread", help="what the modes alternate")
    ap.add_argument("--partitions", type=int, default=PARTITIONS, help="of the topic (the system's: 12)")
    ap.add_argument(
        "--server-pid", type=int, default=0, help="also per-thread CPU and switches of this process (Kafka's)"
    )
    ap.add_argument(
        "--only", choices=[m for modes in MODES.values() for m in modes], help="one mode (e.g. to profile it)"
    )
    ap.add_argument("--produce", default="", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.produce:
        run_loop(produce(args.bootstrap, args.produce, args.rate, args.count, args.poisson))
        return 0
    assert faust_fetch.App.consumer_in_loop  # the default the workers run with
    run_loop(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
