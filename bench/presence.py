"""Presence cost (``presence``): N users connected and heartbeating, nothing else happening.

``--users`` N users (fresh ids per run) each open one WebSocket, spread over ``--processes`` P
client processes and source addresses 127.0.0.1-127.0.0.8; every socket sends a ``ping`` frame
every ``--heartbeat`` seconds (30 s, as the protocol asks), each at its own random phase, and
reads the ``pong``. Once all are connected the run settles for ``--settle`` s (the ``online``
transitions reach Kafka), then measures for ``--window`` s:

- CPU of the gateway processes (``tidings gateway`` and its Sanic workers) and of Redis, as %
  of one core, from /proc; and per 10,000 users;
- events appended to the presence topic (end offsets, summed over partitions): the design asks
  for none between transitions;
- heartbeats sent, and pongs received.

The window starts once every ``online`` transition is on Kafka (a gateway registers a socket a
while after the client saw its upgrade). Then every socket closes and the run waits for the
``offline`` transitions (or ``--settle`` s without a new one) and counts them. Run it against a
running system started with the default presence timings (``tidings up``)::

    .venv/bin/python -m bench.presence --users 10000 --window 60
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import platform
import random
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from bench.common import (
    SOURCE_ADDRESSES,
    cpu_model,
    mem_total_gib,
    proc_cpu_ticks,
    raise_nofile,
    split,
)
from bench.common import run_loop as _run_loop
from bench.fanout import open_socket, ws_url
from events import Topics
from query_api.auth import issue_token
from tidings.settings import Settings


async def _client(users: list[str], url: str, secret: str, heartbeat_s: float, conn: Any) -> None:
    raise_nofile()
    sockets = []
    sem = asyncio.Semaphore(200)
    counts = {"pings": 0, "pongs": 0}

    async def open_one(i: int, user_id: str) -> None:
        async with sem:
            token = issue_token(secret, user_id, device_id="bench", ttl_s=3600)
            sockets.append(await open_socket(url, token, SOURCE_ADDRESSES[i % len(SOURCE_ADDRESSES)]))

    await asyncio.gather(*(open_one(i, u) for i, u in enumerate(users)))

    async def beat(ws: Any) -> None:
        await asyncio.sleep(random.uniform(0, heartbeat_s))
        while True:
            await ws.send('{"type":"ping"}')
            counts["pings"] += 1
            await asyncio.sleep(heartbeat_s)

    async def read(ws: Any) -> None:
        async for raw in ws:
            if orjson.loads(raw).get("type") == "pong":
                counts["pongs"] += 1

    tasks = [asyncio.create_task(f(ws)) for ws in sockets for f in (beat, read)]
    conn.send(("connected", len(sockets)))
    loop = asyncio.get_running_loop()
    while not await loop.run_in_executor(None, conn.poll, 0.5):
        pass
    conn.recv()
    conn.send(("counts", dict(counts)))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    conn.send(("closed", len(sockets)))


def _child(users: list[str], url: str, secret: str, heartbeat_s: float, conn: Any) -> None:
    _run_loop(_client(users, url, secret, heartbeat_s, conn))


async def _presence_offsets(settings: Settings) -> int:
    topic = Topics(settings.topic_prefix).presence_events
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(
            [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        )
        return sum(ends.values())
    finally:
        await consumer.stop()


def _wait_for_events(settings: Settings, total: int, quiet_s: float) -> float:
    """Until the presence topic holds ``total`` events, or gained none for ``quiet_s``; returns
    when (monotonic)."""
    last, last_change = -1, time.monotonic()
    while True:
        now_total = asyncio.run(_presence_offsets(settings))
        if now_total >= total:
            return time.monotonic()
        if now_total != last:
            last, last_change = now_total, time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            return time.monotonic()
        time.sleep(1.0)


def _cpu(names: tuple[str, ...]) -> int:
    return sum(t for name, t in proc_cpu_ticks().values() if any(n in name for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8787/v1/ws")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    settings = Settings()
    secret = settings.resolved_auth_secret()
    run = uuid.uuid4().hex[:6]
    users = [f"pb{run}-{i}" for i in range(args.users)]
    url = ws_url(args.url)

    before = asyncio.run(_presence_offsets(settings))
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    start = 0
    for n in split(args.users, args.processes):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(users[start : start + n], url, secret, args.heartbeat, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
        start += n
    t0 = time.monotonic()
    connected = sum(p.recv()[1] for p in pipes)
    connect_s = time.monotonic() - t0
    # The window starts once every connect's `online` transition is on Kafka (the gateway
    # registers sockets after the clients see the upgrade), so it measures heartbeats only.
    online_s = _wait_for_events(settings, before + connected, args.settle) - t0
    gw = ("tidings gateway", "Sanic")
    redis = ("redis-server",)
    e0, g0, r0, w0 = asyncio.run(_presence_offsets(settings)), _cpu(gw), _cpu(redis), time.monotonic()
    time.sleep(args.window)
    e1, g1, r1, w1 = asyncio.run(_presence_offsets(settings)), _cpu(gw), _cpu(redis), time.monotonic()
    for p in pipes:
        p.send("stop")
    counts = [p.recv()[1] for p in pipes]
    closed = sum(p.recv()[1] for p in pipes)
    for proc in procs:
        proc.join()
    t1 = time.monotonic()
    offline_s = _wait_for_events(settings, e1 + closed, args.settle) - t1
    e2 = asyncio.run(_presence_offsets(settings))

    hz = os.sysconf("SC_CLK_TCK")
    seconds = w1 - w0
    gw_pct = (g1 - g0) / hz / seconds * 100
    redis_pct = (r1 - r0) / hz / seconds * 100
    per_10k = gw_pct * 10_000 / max(connected, 1)
    print(f"presence benchmark  {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    machine = f"{cpu_model()}, {os.cpu_count()} cores, {mem_total_gib():.0f} GiB"
    print(f"machine             {machine}, Python {platform.python_version()}")
    print(
        f"users               {connected} connected in {connect_s:.1f} s ({args.processes} client processes)"
    )
    print(f"online transitions  on Kafka {online_s:.1f} s after the first connect")
    print(f"offline transitions on Kafka {offline_s:.1f} s after the clients closed")
    print(f"heartbeat           ping frame every {args.heartbeat:.0f} s per socket")
    print(f"window              {seconds:.0f} s, once every online transition was on Kafka")
    pings, pongs = sum(c["pings"] for c in counts), sum(c["pongs"] for c in counts)
    print(f"pings / pongs       {pings} / {pongs} (whole run)")
    print(f"gateway CPU         {gw_pct:.1f}% of one core  ({per_10k:.1f}% per 10,000 users)")
    print(f"redis CPU           {redis_pct:.1f}% of one core")
    window_rate = f"{(e1 - e0) / seconds:.2f}/s"
    print(f"presence events     connect: {e0 - before}  window: {e1 - e0} ({window_rate})  close: {e2 - e1}")
    print(f"closed              {closed}")


if __name__ == "__main__":
    main()
