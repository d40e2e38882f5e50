"""The gateway's send command alone, without the WebSocket: rate-limit check, idempotency claim,
Kafka append (acks=all), idempotency mark, through the same ``Dependencies`` the gateway builds,
against the real Redis, Kafka and Cassandra.

    .venv/bin/python -m tidings migrate         # topics and tables of the settings in the env
    .venv/bin/python -m bench.send_path --sends 3000 --concurrency 20

``--receive N`` measures the other end instead: the gateway's pub/sub listener (``Hub.listen``)
routing N pushes, published at ``--rate`` by a separate process over ``--pairs`` users with a
socket each here, to those sockets (which count the frames, without a WebSocket). It prints
this process's CPU per push: what a delivered message costs the recipient's gateway up to the
socket write.

Prints sends/s and the process's CPU per send (its event loop plus the drivers' threads), the
figure that the gateway's share of the 1:1 path is made of besides the WebSocket frames.
Closed-loop on purpose (a fixed number in flight): it measures cost, not latency.

``--rate R`` paces the sends instead (send i at ``i / R`` s, at most ``--concurrency`` in
flight), over ``--pairs`` conversations: what depends on time (the encryption flags' trust in
"not encrypted") then costs what it costs in a run of the 1:1 benchmark at that rate. It also
prints the Cassandra and Kafka servers' CPU per send over the window (shared servers: other
users' load counts too), this process's context switches per send, the send's P50/P99 from
its call to its return (the ack) and, where the tree counts them, the encryption-flag reads per send.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import uuid

from bench.common import machine_line, run_loop
from projections.wire import SendFrame
from tidings.gateway_root import build_dependencies
from tidings.settings import Settings

PAIRS = 200
WARMUP = 50


def _server_ticks(role: str) -> int:
    """CPU ticks so far of the ``role`` server (``cassandra``, ``kafka``) of the settings (0 when
    not found here)."""
    from bench.common import pid_ticks
    from bench.sweep import service_pids

    pids = {pid for pid, r in service_pids().items() if r == role}
    return sum(pid_ticks(pids).values()) if pids else 0


def _cassandra_ticks() -> int:
    """CPU ticks so far of the Cassandra server (``bench.persist_path`` uses it too)."""
    return _server_ticks("cassandra")


def _own_switches() -> int:
    """Context switches (voluntary + not) of this process's threads so far."""
    from bench.sweep import switches

    return sum(switches({os.getpid(): "self"}).values())


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))] if sorted_ms else 0.0


async def main(sends: int, concurrency: int, rate: float = 0.0, pairs: int = PAIRS) -> dict[str, float]:
    deps = await build_dependencies(Settings())
    run = uuid.uuid4().hex[:6]
    frames = [
        SendFrame(
            type="send",
            client_msg_id=uuid.uuid4().hex,
            conversation_id=f"dm:sa{run}{i % pairs:03d}:sb{run}{i % pairs:03d}",
            body="x" * 200,
        )
        for i in range(sends + WARMUP)
    ]

    acks_ms: list[float] = []

    async def one(i: int) -> None:
        frame = frames[i]
        t = time.perf_counter()
        await deps.messaging.send(f"sa{run}{i % pairs:03d}", "bench", frame.conversation_id, frame)
        acks_ms.append((time.perf_counter() - t) * 1000)

    try:
        for i in range(WARMUP):
            await one(i)
        gate = asyncio.Semaphore(concurrency)
        flags = getattr(getattr(deps.directory, "encryption_flags", None), "reads", None)
        start = time.perf_counter()

        async def limited(i: int) -> None:
            if rate > 0:
                await asyncio.sleep(max(0.0, start + (i - WARMUP) / rate - time.perf_counter()))
            async with gate:
                await one(i)

        acks_ms.clear()
        cpu, wall, ticks = time.process_time(), time.perf_counter(), _server_ticks("cassandra")
        kticks, woke = _server_ticks("kafka"), _own_switches()
        reads = deps.directory.encryption_flags.reads if flags is not None else 0  # type: ignore[attr-defined]
        await asyncio.gather(*(limited(i) for i in range(WARMUP, WARMUP + sends)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        ticks, kticks = _server_ticks("cassandra") - ticks, _server_ticks("kafka") - kticks
        woke = _own_switches() - woke
        acks_ms.sort()
        out = {
            "sends_per_s": sends / wall,
            "cpu_us_per_send": cpu / sends * 1e6,
            "switches_per_send": woke / sends,
            "ack_p50_ms": _pct(acks_ms, 0.50),
            "ack_p99_ms": _pct(acks_ms, 0.99),
            "cassandra_cpu_us_per_send": ticks / os.sysconf("SC_CLK_TCK") / sends * 1e6,
            "kafka_cpu_us_per_send": kticks / os.sysconf("SC_CLK_TCK") / sends * 1e6,
        }
        if flags is not None:
            out["flag_reads_per_send"] = (deps.directory.encryption_flags.reads - reads) / sends  # type: ignore[attr-defined]
    finally:
        await deps.close()
    return out


_PUBLISHER = """
import sys, time, redis
host, port, db, prefix, n, rate, users = sys.argv[1:8]
n, rate, users = int(n), float(rate), int(users)
client = redis.Redis(host=host, port=int(port), db=int(db))
payload = b"m" + b'{"type":"message","message":{"body":"' + b"x" * 200 + b'","ts":1}}'
start, chunk = time.perf_counter(), 10
for i in range(0, n, chunk):
    time.sleep(max(0.0, start + i / rate - time.perf_counter()))
    pipe = client.pipeline(transaction=False)
    for j in range(i, min(n, i + chunk)):
        pipe.publish(prefix + str(j % users), payload)
    pipe.execute()
"""


class _CountingSocket:
    """A socket that counts the frames written to all of them (no WebSocket, no syscall) and
    says when ``target`` were."""

    heard = 0.0
    writable = True
    frames = 0
    target = 0
    done: asyncio.Event

    def write_text(self, payload: bytes) -> bool:
        _CountingSocket.frames += 1
        if _CountingSocket.frames >= self.target:
            self.done.set()
        return True

    def close_now(self, code: int, reason: str) -> None:
        pass


async def receive(messages: int, rate: float, users: int) -> dict[str, float]:
    """CPU per push of the gateway's listener, the publisher in another process."""
    import sys

    from events import keys
    from projections.adapters.redis_client import make_redis
    from projections.delivery import GROUP_SHARDS
    from query_api.connection import Connection
    from query_api.hub import Hub

    settings = Settings()
    redis = make_redis(settings.redis_host, settings.redis_port, settings.redis_db)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)

    async def no_groups(user_id: str) -> set[str]:
        return set()

    hub = Hub(pubsub, no_groups, shards=GROUP_SHARDS)
    await hub.start()
    run = uuid.uuid4().hex[:6]
    _CountingSocket.frames, _CountingSocket.target, _CountingSocket.done = 0, messages, asyncio.Event()
    sockets = [_CountingSocket() for _ in range(users)]
    for i, socket in enumerate(sockets):
        await hub.register(Connection(f"r{run}{i}", "bench", socket, 1024))
    listener = asyncio.create_task(hub.listen())
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        publisher = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PUBLISHER, settings.redis_host, str(settings.redis_port),
            str(settings.redis_db), keys.user_channel(f"r{run}"), str(messages), str(rate), str(users),
        )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_CountingSocket.done.wait(), messages / rate + 60)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await publisher.wait()
        got = _CountingSocket.frames
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await pubsub.aclose()
        await redis.aclose()
    return {"pushes": got, "pushes_per_s": got / wall, "cpu_us_per_push": cpu / max(1, got) * 1e6}


def _cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=20, help="sends in flight (default 20)")
    ap.add_argument("--rate", type=float, default=0.0, help="sends per second (default: closed loop)")
    ap.add_argument("--pairs", type=int, default=PAIRS, help=f"conversations (default {PAIRS})")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures")
    ap.add_argument("--receive", type=int, default=0, help="pushes to receive instead of sending (see above)")
    args = ap.parse_args()
    if args.receive:
        got = run_loop(receive(args.receive, args.rate or 1000.0, args.pairs))
        print(
            f"listener, {got['pushes']:,.0f} of {args.receive:,} pushes at {args.rate or 1000:g}/s over "
            f"{args.pairs} users; {machine_line()}\n  {got['cpu_us_per_push']:.1f} µs CPU per push"
        )
        if args.json:
            print(json.dumps({"receive": got}))
        return
    result = run_loop(main(args.sends, args.concurrency, args.rate, args.pairs))
    print(
        f"send command, {args.sends:,} sends, {args.concurrency} in flight, rate {args.rate or 'open'}, "
        f"{args.pairs} conversations; {machine_line()}\n"
        f"  {result['sends_per_s']:,.0f} sends/s, {result['cpu_us_per_send']:.0f} µs CPU per send, "
        f"{result['switches_per_send']:.2f} context switches per send, "
        f"ack P50 {result['ack_p50_ms']:.2f} P99 {result['ack_p99_ms']:.2f} ms, "
        f"Cassandra {result['cassandra_cpu_us_per_send']:.0f} µs, "
        f"Kafka {result['kafka_cpu_us_per_send']:.0f} µs per send"
        + (
            f", {result['flag_reads_per_send']:.3f} flag reads per send"
            if "flag_reads_per_send" in result
            else ""
        )
    )
    if args.json:
        print(json.dumps({"send_path": result}))


if __name__ == "__main__":
    _cli()
