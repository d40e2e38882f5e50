"""The gateway's send command alone, without the WebSocket: rate-limit check, idempotency claim,
Kafka append (acks=all), idempotency mark, through the same ``Dependencies`` the gateway builds,
against the real Redis, Kafka and Cassandra.

    .venv/bin/python -m tidings migrate         # topics and tables of the settings in the env
    .venv/bin/python -m bench.send_path --sends 3000 --concurrency 20

Prints sends/s and the process's CPU per send (its event loop plus the drivers' threads), the
figure that the gateway's share of the 1:1 path is made of besides the WebSocket frames.
Closed-loop on purpose (a fixed number in flight): it measures cost, not latency.

``--rate R`` paces the sends instead (send i at ``i / R`` s, at most ``--concurrency`` in
flight), over ``--pairs`` conversations: what depends on time (the encryption flags' trust in
"not encrypted") then costs what it costs in a run of the 1:1 benchmark at that rate. It also
prints the Cassandra server's CPU per send over the window (the shared server: other users'
load counts too) and, where the tree counts them, the encryption-flag reads per send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from bench.common import machine_line, run_loop
from projections.wire import SendFrame
from tidings.gateway_root import build_dependencies
from tidings.settings import Settings

PAIRS = 200
WARMUP = 50


def _cassandra_ticks() -> int:
    """CPU ticks so far of the Cassandra server of the settings (0 when not found here)."""
    from bench.common import pid_ticks
    from bench.sweep import service_pids

    pids = {pid for pid, role in service_pids().items() if role == "cassandra"}
    return sum(pid_ticks(pids).values()) if pids else 0


async def main(sends: int, concurrency: int, rate: float = 0.0, pairs: int = PAIRS) -> dict[str, float]:
    import os

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

    async def one(i: int) -> None:
        frame = frames[i]
        await deps.messaging.send(f"sa{run}{i % pairs:03d}", "bench", frame.conversation_id, frame)

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

        cpu, wall, ticks = time.process_time(), time.perf_counter(), _cassandra_ticks()
        reads = deps.directory.encryption_flags.reads if flags is not None else 0  # type: ignore[attr-defined]
        await asyncio.gather(*(limited(i) for i in range(WARMUP, WARMUP + sends)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        ticks = _cassandra_ticks() - ticks
        out = {
            "sends_per_s": sends / wall,
            "cpu_us_per_send": cpu / sends * 1e6,
            "cassandra_cpu_us_per_send": ticks / os.sysconf("SC_CLK_TCK") / sends * 1e6,
        }
        if flags is not None:
            out["flag_reads_per_send"] = (deps.directory.encryption_flags.reads - reads) / sends  # type: ignore[attr-defined]
    finally:
        await deps.close()
    return out


def _cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=20, help="sends in flight (default 20)")
    ap.add_argument("--rate", type=float, default=0.0, help="sends per second (default: closed loop)")
    ap.add_argument("--pairs", type=int, default=PAIRS, help=f"conversations (default {PAIRS})")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures")
    args = ap.parse_args()
    result = run_loop(main(args.sends, args.concurrency, args.rate, args.pairs))
    print(
        f"send command, {args.sends:,} sends, {args.concurrency} in flight, rate {args.rate or 'open'}, "
        f"{args.pairs} conversations; {machine_line()}\n"
        f"  {result['sends_per_s']:,.0f} sends/s, {result['cpu_us_per_send']:.0f} µs CPU per send, "
        f"Cassandra {result['cassandra_cpu_us_per_send']:.0f} µs per send"
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
