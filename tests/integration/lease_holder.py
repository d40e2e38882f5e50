"""A gateway-like worker-id lease owner, as a process of its own, for test_worker_ids: it
leases a Snowflake worker id the way the gateway does (``WorkerIdLease``, ``LeasedSnowflake``),
then tries to issue an id every few milliseconds until SIGTERM, and writes what happened as
JSON lines to ``--out``:

    {"e": "acquired", "w": <worker id>, "t": <unix s>}
    {"e": "id", "id": <snowflake id>}
    {"e": "refused", "lost": <bool>, "t": <unix s>}      (when it starts refusing, or why changes)
    {"e": "failed", "msg": <why no id could be leased>}

    python -m tests.integration.lease_holder --port P --ttl 2 --out FILE [--retry]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any, TextIO

from commands.adapters.worker_ids import LeasedSnowflake, WorkerIdLease
from events.errors import Unavailable
from projections.adapters.redis_client import make_redis


def _write(out: TextIO, **event: Any) -> None:
    out.write(json.dumps(event) + "\n")


async def hold(port: int, ttl_s: float, out: TextIO, retry_s: float) -> int:
    redis = make_redis("127.0.0.1", port, 0)
    deadline = time.monotonic() + retry_s
    while True:
        try:
            lease = await WorkerIdLease.acquire(redis, ttl_s=ttl_s)
            break
        except Unavailable as exc:
            if time.monotonic() > deadline:
                _write(out, e="failed", msg=str(exc))
                await redis.aclose()
                return 3
            await asyncio.sleep(0.05)
    _write(out, e="acquired", w=lease.worker_id, t=time.time())
    ids = LeasedSnowflake(lease)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    refusing: bool | None = None  # None: issuing; else whether the refusal is for a lost lease
    while not stop.is_set():
        try:
            _write(out, e="id", id=ids.next_id())
            refusing = None
        except Unavailable:
            if refusing is not (not lease.held):
                refusing = not lease.held
                _write(out, e="refused", lost=refusing, t=time.time())
        await asyncio.sleep(0.005)
    await lease.release()
    await redis.aclose()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttl", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--retry", type=float, default=0.0, help="keep trying to lease for so many s")
    args = parser.parse_args()
    with open(args.out, "a", buffering=1) as out:
        raise SystemExit(asyncio.run(hold(args.port, args.ttl, out, args.retry)))


if __name__ == "__main__":
    main()
