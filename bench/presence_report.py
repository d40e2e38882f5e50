"""The gateway's presence sweep alone: client CPU per heartbeat report of ``RedisPresence.set``
against the real Redis, by sweep size.

    .venv/bin/python -m bench.presence_report --users 20000 --sweeps 1,100,2000

Each user has one socket, online; a sweep reports the sockets heard from since the last one
(at 100,000 idle sockets heartbeating every 30 s and a sweep every 5 s, a gateway reports about
16,700 per sweep over all its processes). Prints, per sweep size, reports/s and the client's CPU
(process time) per report: the part of an idle gateway's CPU that presence costs. Redis' own
CPU is not counted. Uses its own Redis database (``--redis-db``, flushed before and after).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from bench.common import machine_line, per_slice_size, run_loop, scratch_redis
from commands.adapters.redis_presence import RedisPresence
from commands.presence import Beat


async def main(args: argparse.Namespace) -> list[dict[str, float]]:
    beats = [Beat(f"u{i:06d}", f"g:{i}", "online", 0) for i in range(args.users)]
    async with scratch_redis(args.redis_db) as redis:
        store = RedisPresence(redis, ttl_ms=60_000)
        for i in range(0, len(beats), 1000):  # every user online first: the reports then change nothing
            await store.set(beats[i : i + 1000])

        async def report(sweep: Sequence[Beat]) -> None:
            if changes := await store.set(sweep):
                raise AssertionError(f"{len(changes)} transitions reported for users already online")

        measured = await per_slice_size(beats, args.sweeps, report)
    return [
        {"sweep": size, "reports_per_s": rate, "cpu_us_per_report": cpu_us} for size, rate, cpu_us in measured
    ]


def _cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--sweeps", default="1,100,2000", help="reports per sweep, comma-separated")
    ap.add_argument("--redis-db", type=int, default=13, help="emptied before and after (default 13)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures")
    args = ap.parse_args()
    args.sweeps = [int(s) for s in args.sweeps.split(",")]
    results = run_loop(main(args))
    print(
        f"presence reports (RedisPresence.set), {args.users:,} online sockets per sweep size; "
        f"{machine_line()}"
    )
    for r in results:
        print(
            f"  sweep {r['sweep']:>5}: {r['reports_per_s']:>9,.0f} reports/s, "
            f"{r['cpu_us_per_report']:6.1f} µs client CPU per report"
        )
    if args.json:
        print(json.dumps({"presence_report": results}))


if __name__ == "__main__":
    _cli()
