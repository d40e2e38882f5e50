"""The gateway's send command alone, without the WebSocket: rate-limit check, idempotency claim,
Kafka append (acks=all), idempotency mark, through the same ``Dependencies`` the gateway builds,
against the real Redis, Kafka and Cassandra.

    .venv/bin/python -m tidings migrate         # topics and tables of the settings in the env
    .venv/bin/python -m bench.send_path --sends 3000 --concurrency 20

Prints sends/s and the process's CPU per send (its event loop plus the drivers' threads), the
figure that the gateway's share of the 1:1 path is made of besides the WebSocket frames.
Closed-loop on purpose (a fixed number in flight): it measures cost, not latency.
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


async def main(sends: int, concurrency: int) -> dict[str, float]:
    deps = await build_dependencies(Settings())
    frames = [
        SendFrame(
            type="send",
            client_msg_id=uuid.uuid4().hex,
            conversation_id=f"dm:sa{i % PAIRS:03d}:sb{i % PAIRS:03d}",
            body="x" * 200,
        )
        for i in range(sends + WARMUP)
    ]

    async def one(i: int) -> None:
        frame = frames[i]
        await deps.messaging.send(f"sa{i % PAIRS:03d}", "bench", frame.conversation_id, frame)

    try:
        for i in range(WARMUP):
            await one(i)
        gate = asyncio.Semaphore(concurrency)

        async def limited(i: int) -> None:
            async with gate:
                await one(i)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(limited(i) for i in range(WARMUP, WARMUP + sends)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await deps.close()
    return {"sends_per_s": sends / wall, "cpu_us_per_send": cpu / sends * 1e6}


def _cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=20, help="sends in flight (default 20)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures")
    args = ap.parse_args()
    result = run_loop(main(args.sends, args.concurrency))
    print(
        f"send command, {args.sends:,} sends, {args.concurrency} in flight; {machine_line()}\n"
        f"  {result['sends_per_s']:,.0f} sends/s, {result['cpu_us_per_send']:.0f} µs CPU per send"
    )
    if args.json:
        print(json.dumps({"send_path": result}))


if __name__ == "__main__":
    _cli()
