"""Idle WebSockets (benchmark ``connections``): gateway memory and CPU per connection.

``--connections`` N sockets of fresh users are opened against a running gateway, spread over
``--processes`` P spawned client processes (``websockets`` asyncio client, compression off,
uvloop) and over the source addresses 127.0.0.1-127.0.0.8 (about 28 K ephemeral ports per
source/destination pair), at most ``--connect-concurrency`` handshakes in flight over all
processes. The clients send nothing but their heartbeats: a WebSocket ping every
``--heartbeat`` seconds (30, what the protocol asks; the gateway sends no pings of its own and
closes sockets silent for ``TIDINGS_IDLE_CLOSE_S``), so the idle window should span at least
one heartbeat interval.

The gateway's processes are the ones listening on the URL's port and their descendants (Sanic
workers), found with psutil, or ``--gateway-pids``. Measured:
- gateway RSS before the ramp, after it, and per connection (difference / N); likewise the
  kernel's slab (``/proc/meminfo`` Slab) per connection, which RSS does not include;
- gateway CPU while idle, over ``--hold`` seconds after a settle: % of one core, and µs of CPU
  per second per connection;
- the connect ramp (rate, handshake P50/P99, errors, listen-queue overflows);
- client RSS and CPU (they share the machine).

    .venv/bin/python -m bench.connections --connections 20000 --processes 4 --hold 45
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import multiprocessing as mp
import os
import queue
import random
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
import websockets
from websockets.asyncio.client import ClientConnection

from bench.common import (
    LOOPBACK_HOSTS,
    SOURCE_ADDRESSES,
    cpu_calibration_us,
    cpu_model,
    cpu_seconds,
    fmt,
    listen_overflows,
    mem_total_gib,
    new_hist,
    percentiles_ms,
    raise_nofile,
    record_us,
    run_loop,
    split,
)
from query_api.auth import issue_token

MAX_CONNS_PER_PROCESS = 9500  # stays under the 20,000 fd hard limit with room to spare
TARGET_KIB_PER_CONN = 20.0
TARGET_IDLE_CORE_PCT = 50.0


def meminfo_kib(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def gateway_processes(port: int, extra: list[int]) -> list[psutil.Process]:
    """The processes listening on ``port`` (or ``extra``), with their descendants."""
    roots: set[int] = set(extra)
    if not roots:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                roots.add(conn.pid)
    procs: dict[int, psutil.Process] = {}
    for pid in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            # A listening Sanic worker: count its manager (`tidings gateway`) and every sibling
            # worker too. Pids given on the command line are taken as the gateway's own.
            while not extra and (parent := p.parent()) is not None and _is_gateway(parent):
                p = parent
            procs[p.pid] = p
            for child in p.children(recursive=True):
                procs[child.pid] = child
    return list(procs.values())


def wait_registered(metrics_url: str, count: int, *, timeout_s: float) -> float | None:
    """Seconds until the gateway's ``tidings_ws_connections`` (summed over its processes)
    reaches ``count``; None if it did not within ``timeout_s``."""
    import re
    import urllib.request

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            with urllib.request.urlopen(metrics_url, timeout=10) as r:
                text = r.read().decode()
        except OSError:
            text = ""
        found = re.findall(r"^tidings_ws_connections(?:\{[^}]*\})? (\S+)$", text, re.M)
        if sum(float(v) for v in found) >= count:
            return time.monotonic() - started
        time.sleep(1.0)
    return None


def _is_gateway(p: psutil.Process) -> bool:
    args = p.cmdline()
    return any(a == "tidings" for a in args) and "gateway" in args


def rss_bytes(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


# ---------------------------------------------------------------- one client process


async def run_client(
    index: int,
    url: str,
    secret: str,
    run_id: str,
    count: int,
    first: int,
    concurrency: int,
    heartbeat_s: float,
    reconnect: bool,
    ctl: Any,
    stop: Any,
) -> dict[str, Any]:
    raise_nofile()
    hist = new_hist()
    errors: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    sockets: dict[int, ClientConnection] = {}
    reconnects = 0
    stopping = False

    async def open_one(j: int, attempts: int) -> ClientConnection | None:
        source = SOURCE_ADDRESSES[(first + j) % len(SOURCE_ADDRESSES)]
        token = issue_token(secret, f"c{run_id}p{index}n{j}", ttl_s=7200)
        async with sem:
            for attempt in range(attempts):
                t = time.monotonic_ns()
                try:
                    ws = await websockets.connect(
                        f"{url}?token={token}",
                        compression=None,
                        open_timeout=60,
                        # The client heartbeats (a WebSocket ping every `heartbeat_s`, as the
                        # protocol asks); a socket silent for TIDINGS_IDLE_CLOSE_S is closed.
                        ping_interval=heartbeat_s,
                        ping_timeout=None,
                        close_timeout=2,
                        max_queue=16,
                        proxy=None,
                        local_addr=(source, 0),
                    )
                except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                    if len(errors) < 5:
                        errors.append(f"{source} attempt {attempt + 1}: {exc!r}"[:200])
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                record_us(hist, time.monotonic_ns() - t)
                return ws
        return None

    async def connect(j: int) -> None:
        ws = await open_one(j, 3)
        if ws is not None:
            sockets[j] = ws

    async def keep(j: int) -> None:
        """Reconnect when the gateway closes the socket (1013 after a Redis restart), as a
        real client does: after a random pause, until it is open again."""
        nonlocal reconnects
        while True:
            await sockets[j].wait_closed()
            if stopping:
                return
            reconnects += 1
            await asyncio.sleep(random.uniform(1, 10))
            for _ in range(20):
                ws = await open_one(j, 3)
                if ws is not None or stopping:
                    break
                await asyncio.sleep(random.uniform(5, 15))
            if ws is None or stopping:
                return
            sockets[j] = ws

    started = time.monotonic()
    await asyncio.gather(*(connect(j) for j in range(count)))
    ramp_s = time.monotonic() - started
    keepers = [asyncio.create_task(keep(j)) for j in sockets] if reconnect else []
    ctl.put(("ready", index, {"opened": len(sockets), "ramp_s": ramp_s}))
    cpu0 = cpu_seconds()
    await asyncio.to_thread(stop.wait)
    cpu_idle = cpu_seconds() - cpu0
    stopping = True
    closed_early = sum(1 for ws in sockets.values() if ws.close_code is not None)
    rss = psutil.Process().memory_info().rss
    await asyncio.gather(*(ws.close() for ws in sockets.values()), return_exceptions=True)
    for task in keepers:
        task.cancel()
    await asyncio.gather(*keepers, return_exceptions=True)
    return {
        "index": index,
        "opened": len(sockets),
        "failed": count - len(sockets),
        "closed_early": closed_early,
        "reconnects": reconnects,
        "ramp_s": ramp_s,
        "hist": hist.encode(),
        "errors": errors,
        "idle_cpu_s": cpu_idle,
        "rss": rss,
    }


def _client_child(*args: Any) -> None:
    ctl = args[-2]
    try:
        result = run_loop(run_client(*args))
    except BaseException as exc:
        ctl.put(("fatal", args[0], repr(exc)))
        raise
    ctl.put(("result", args[0], result))


# ---------------------------------------------------------------- parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=5000, help="idle sockets N (default 5000)")
    ap.add_argument("--processes", type=int, default=None, help="client processes (default ceil(N/9500))")
    ap.add_argument("--url", default="ws://127.0.0.1:8787/v1/ws", help="gateway (loopback only)")
    ap.add_argument("--secret", default=None, help="JWT secret (default Settings().resolved_auth_secret())")
    ap.add_argument("--connect-concurrency", type=int, default=200, help="handshakes in flight (200)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after registration before measuring")
    ap.add_argument("--hold", type=float, default=45.0, help="idle window measured (default 45 s)")
    ap.add_argument("--heartbeat", type=float, default=30.0, help="client WebSocket ping every (30 s)")
    ap.add_argument("--gateway-pids", default="", help="comma-separated gateway pids (default: by port)")
    ap.add_argument(
        "--ramp-timeout", type=float, default=900.0, help="seconds for every client to connect (900)"
    )
    ap.add_argument(
        "--reconnect",
        action="store_true",
        help="reopen a socket the gateway closes (e.g. 1013 after a Redis restart), as clients do",
    )
    ap.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = ap.parse_args(argv)
    parts = urlsplit(args.url)
    if parts.hostname not in LOOPBACK_HOSTS:
        ap.error("--url must point at 127.0.0.1")
    if args.processes is None:
        args.processes = max(1, math.ceil(args.connections / MAX_CONNS_PER_PROCESS))
    if math.ceil(args.connections / args.processes) > MAX_CONNS_PER_PROCESS:
        ap.error(f"at most {MAX_CONNS_PER_PROCESS} connections per client process")
    secret = args.secret
    if secret is None:
        from tidings.settings import Settings

        secret = Settings().resolved_auth_secret()
    port = parts.port or 80
    gateway = gateway_processes(port, [int(p) for p in args.gateway_pids.split(",") if p.strip()])
    if not gateway:
        raise SystemExit(f"no gateway process listens on port {port}")
    started = dt.datetime.now(dt.UTC)
    calib = cpu_calibration_us()
    rss0, slab0, overflows0 = rss_bytes(gateway), meminfo_kib("Slab"), listen_overflows()
    idle0_t, idle0_cpu = time.monotonic(), cpu_s(gateway)
    time.sleep(5)
    idle_before_pct = (cpu_s(gateway) - idle0_cpu) / (time.monotonic() - idle0_t) * 100

    run_id = uuid.uuid4().hex[:6]
    ctx = mp.get_context("spawn")
    ctl: Any = ctx.Queue()
    stop = ctx.Event()
    shares = split(args.connections, args.processes)
    per_proc_conc = max(1, args.connect_concurrency // args.processes)
    procs = []
    first = 0
    for i, n in enumerate(shares):
        procs.append(
            ctx.Process(
                target=_client_child,
                args=(
                    i,
                    args.url,
                    secret,
                    run_id,
                    n,
                    first,
                    per_proc_conc,
                    args.heartbeat,
                    args.reconnect,
                    ctl,
                    stop,
                ),
                daemon=True,
            )
        )
        first += n
    ramp_started = time.monotonic()
    for p in procs:
        p.start()
    ready: dict[int, dict[str, Any]] = {}
    results: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + args.ramp_timeout
    try:
        while len(ready) < len(procs):
            kind, index, payload = ctl.get(timeout=max(1.0, deadline - time.monotonic()))
            if kind == "fatal":
                raise SystemExit(f"client {index} failed: {payload}")
            ready[index] = payload
        ramp_s = time.monotonic() - ramp_started
        opened = sum(r["opened"] for r in ready.values())
        # The 101 comes before the hub has subscribed and loaded the user's groups: wait until
        # the gateway counts every socket, so registration work is not taken for idle cost.
        registered_s = wait_registered(f"http://{parts.netloc}/metrics", opened, timeout_s=600)
        time.sleep(args.settle)
        gateway = gateway_processes(port, [int(p) for p in args.gateway_pids.split(",") if p.strip()])
        rss1, slab1 = rss_bytes(gateway), meminfo_kib("Slab")
        t0, c0 = time.monotonic(), cpu_s(gateway)
        host0 = psutil.cpu_times()
        time.sleep(args.hold)
        window = time.monotonic() - t0
        idle_cpu = cpu_s(gateway) - c0
        host1 = psutil.cpu_times()
        stop.set()
        while len(results) < len(procs):
            kind, index, payload = ctl.get(timeout=max(1.0, deadline - time.monotonic()))
            if kind == "fatal":
                raise SystemExit(f"client {index} failed: {payload}")
            if kind == "result":
                results[index] = payload
    except queue.Empty as exc:
        raise SystemExit("client processes did not report in time") from exc
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    hist = new_hist()
    for r in results.values():
        hist.decode_and_add(r["hist"])
    busy = sum(
        getattr(host1, f) - getattr(host0, f) for f in ("user", "system", "nice", "irq", "softirq", "steal")
    )
    total_cpu = busy + (host1.idle - host0.idle) + (host1.iowait - host0.iowait)
    per_conn_kib = (rss1 - rss0) / 1024 / opened if opened else None
    idle_pct = idle_cpu / window * 100
    figures = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "mem_gib": round(mem_total_gib(), 1),
            "cpu_calibration_us": round(calib, 1),
        },
        "config": {
            "connections": args.connections,
            "processes": args.processes,
            "gateway_processes": len(gateway),
            "hold_s": args.hold,
            "heartbeat_s": args.heartbeat,
            "url": args.url,
        },
        "opened": opened,
        "failed": sum(r["failed"] for r in results.values()),
        "closed_early": sum(r["closed_early"] for r in results.values()),
        "reconnects": sum(r.get("reconnects", 0) for r in results.values()),
        "ramp_s": round(ramp_s, 1),
        "registered_after_ramp_s": None if registered_s is None else round(registered_s, 1),
        "connect_rate_per_s": round(opened / ramp_s, 1) if ramp_s else None,
        "handshake_ms": percentiles_ms(hist, (50, 99)),
        "listen_overflows": listen_overflows() - overflows0,
        "gateway_pids": sorted(p.pid for p in gateway),
        "gateway_rss_mib_before": round(rss0 / 2**20, 1),
        "gateway_rss_mib_after": round(rss1 / 2**20, 1),
        "gateway_kib_per_conn": None if per_conn_kib is None else round(per_conn_kib, 2),
        "kernel_slab_kib_per_conn": round((slab1 - slab0) / opened, 2) if opened else None,
        "gateway_idle_cpu_pct_before": round(idle_before_pct, 2),
        "gateway_idle_cpu_pct": round(idle_pct, 2),
        "gateway_cpu_us_per_s_per_conn": round(idle_cpu / window * 1e6 / opened, 3) if opened else None,
        "machine_busy_pct_during_hold": round(busy / total_cpu * 100, 1) if total_cpu else None,
        "client_rss_mib": [round(r["rss"] / 2**20) for r in results.values()],
        "client_idle_cpu_pct": [round(r["idle_cpu_s"] / window * 100, 1) for r in results.values()],
        "errors": [e for r in results.values() for e in r["errors"]][:5],
        "target_kib_per_conn": TARGET_KIB_PER_CONN,
        "target_idle_core_pct": TARGET_IDLE_CORE_PCT,
    }
    m, c, g = figures["machine"], figures["config"], figures
    print(
        "\n".join(
            [
                f"connections  {figures['date']}  {m['nproc']} CPUs  {m['cpu_model']}  {m['mem_gib']} GiB  "
                f"calibration sum(range(1000)) {m['cpu_calibration_us']} µs",
                f"config   {c['connections']} sockets over {c['processes']} client processes and "
                f"{len(SOURCE_ADDRESSES)} source addresses; {c['gateway_processes']} gateway processes; "
                f"idle window {c['hold_s']:g} s",
                f"connect  {opened} opened, {g['failed']} failed, {g['closed_early']} closed early, "
                f"{g['reconnects']} reconnects, "
                f"in {g['ramp_s']} s ({g['connect_rate_per_s']}/s), all registered "
                f"{g['registered_after_ramp_s']} s later; handshake ms "
                f"{fmt(g['handshake_ms'])}; listen overflows {g['listen_overflows']}",
                f"memory   gateway RSS {g['gateway_rss_mib_before']} -> {g['gateway_rss_mib_after']} MiB"
                f" = {g['gateway_kib_per_conn']} KiB per connection (target <= {TARGET_KIB_PER_CONN:g});"
                f" kernel slab {g['kernel_slab_kib_per_conn']} KiB per connection",
                f"idle CPU gateway {g['gateway_idle_cpu_pct']}% of one core "
                f"(target <= {TARGET_IDLE_CORE_PCT:g}%; before the ramp {g['gateway_idle_cpu_pct_before']}%)"
                f" = {g['gateway_cpu_us_per_s_per_conn']} µs/s per connection; machine "
                f"{g['machine_busy_pct_during_hold']}% busy",
                f"clients  RSS MiB {figures['client_rss_mib']}; idle CPU % {figures['client_idle_cpu_pct']}",
                *(f"sample   {e}" for e in figures["errors"]),
            ]
        )
    )
    if args.json:
        print(orjson.dumps(figures).decode())
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
