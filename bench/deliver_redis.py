"""The deliver worker's Redis stage alone: client CPU per event of ``RedisCacheAndPush.apply`` (the
hot cache and the pushes of 1:1 messages) against the real Redis, by batch size.

    .venv/bin/python -m bench.deliver_redis --events 20000 --batches 1,5,20,100

Prints, per batch size, events/s and the client's CPU (process time) per event. Redis' own
CPU is not counted: the worker's Python is what the 1:1 path is short of (docs/benchmarks.md).
Uses its own Redis database (``--redis-db``, flushed before and after). ``--gateways N`` first
puts both members of each pair in the route set of gateway ``pair % N`` (as N gateways holding
their sockets would), so the pushes are routed to gateways (docs/architecture.md); 0 (the
default) leaves no route: every push goes to its user's channel.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import machine_line, per_slice_size, run_loop, scratch_redis
from events import MessageSent, keys
from projections.adapters.recent import RedisCacheAndPush
from projections.roster import Roster


def _messages(n: int) -> list[MessageSent]:
    base = 1 << 40
    return [
        MessageSent(
            conversation_id=f"dm:u{i % 500:04d}:v{i % 500:04d}",
            message_id=base + i,
            sender_id=f"u{i % 500:04d}",
            sender_device="d",
            client_msg_id=f"c{i}",
            kind="text",
            body="x" * 200,
            ts=1_700_000_000_000 + i,
        )
        for i in range(n)
    ]


async def _roster_load(cid: str, threshold: int) -> object:
    raise AssertionError("direct chats need no lookup")


async def main(args: argparse.Namespace) -> list[dict[str, float]]:
    events = _messages(args.events)
    async with scratch_redis(args.redis_db) as redis:
        if args.gateways:
            expiry = int(time.time() * 1000) + 3_600_000
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(500):
                    for user in (f"u{i:04d}", f"v{i:04d}"):
                        pipe.zadd(keys.route(user), {str(i % args.gateways): expiry})
                await pipe.execute()
        recent = RedisCacheAndPush(redis, 50, roster=Roster(_roster_load, threshold=500))  # type: ignore[arg-type]
        await recent.apply(events[:10])  # load the script, warm the pool
        measured = await per_slice_size(events, args.batches, recent.apply)
    return [
        {"batch": size, "events_per_s": rate, "cpu_us_per_event": cpu_us} for size, rate, cpu_us in measured
    ]


def _cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batches", default="1,5,20,100", help="batch sizes, comma-separated")
    ap.add_argument("--redis-db", type=int, default=15, help="emptied before and after (default 15)")
    ap.add_argument("--gateways", type=int, default=0, help="route the pairs to N gateways (0: no routes)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    results = run_loop(main(args))
    print(
        f"deliver stage (RedisCacheAndPush.apply), {args.events:,} 1:1 messages per batch size, "
        f"{args.gateways} gateways routed to; "
        f"{machine_line()}"
    )
    for r in results:
        print(
            f"  batch {r['batch']:>4}: {r['events_per_s']:>9,.0f} events/s, "
            f"{r['cpu_us_per_event']:6.1f} µs client CPU per event"
        )
    if args.json:
        print(json.dumps({"deliver_redis": results}))


if __name__ == "__main__":
    _cli()
