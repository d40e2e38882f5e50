"""The gateway's pub/sub side alone: the hub's CPU (one process, the real Redis pub/sub) per 1:1
message delivered to both members' sockets, with deliveries routed to the gateway (one payload
naming both members) or per user (one payload on each member's channel, as before routing).

    .venv/bin/python -m bench.gateway_routes --messages 20000 --rate 2000 --redis-db 10

A child process publishes with the deliver stage's own code (``RedisCacheAndPush.apply``, in
batches of ``--batch`` events, at ``--rate`` messages a second); this process holds the hub
with ``--pairs`` pairs of users connected (sockets that only count what is written), and its
CPU over the window is the hub's: redis-py's read and parse of each pub/sub message, the
routing, the writes. ``--mode user`` gives the hub no routes (so the deliver stage finds none
and publishes per member, as before); ``--mode route`` gives it its route sets. Also prints
the Redis server's CPU over the window (shared with whatever else uses that Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
import uuid
from typing import Any

from bench.common import machine_line, run_loop, scratch_redis
from events import MessageSent
from projections.adapters.recent import RedisCacheAndPush
from projections.adapters.redis_pubsub import GatewayRoutes
from projections.roster import Roster
from query_api.hub import Connection, Hub


class _Socket:
    def __init__(self) -> None:
        self.frames = 0
        self.writable = True
        self.heard = 0.0

    def write_text(self, payload: bytes) -> bool:
        self.frames += 1
        return True

    def close_now(self, code: int, reason: str) -> None:
        raise RuntimeError(f"socket closed {code} {reason}")


def _pairs(tag: str, n: int) -> list[tuple[str, str]]:
    return [(f"g{tag}{i:04d}a", f"g{tag}{i:04d}b") for i in range(n)]


async def _roster_load(cid: str, threshold: int) -> object:
    raise AssertionError("direct chats need no lookup")


def _publish(db: int, tag: str, pairs: int, messages: int, rate: float, batch: int) -> None:
    async def main() -> None:
        from projections.adapters.redis_client import make_redis
        from tidings.settings import Settings

        settings = Settings()
        redis = make_redis(settings.redis_host, settings.redis_port, db)
        recent = RedisCacheAndPush(redis, 50, roster=Roster(_roster_load, threshold=500))  # type: ignore[arg-type]
        users = _pairs(tag, pairs)
        base = 1 << 41
        started = time.perf_counter()
        for first in range(0, messages, batch):
            events = []
            for i in range(first, min(first + batch, messages)):
                a, b = users[i % pairs]
                events.append(
                    MessageSent(
                        conversation_id=f"dm:{a}:{b}",
                        message_id=base + i,
                        sender_id=a,
                        sender_device="d",
                        client_msg_id=f"c{i}",
                        kind="text",
                        body="x" * 200,
                        ts=1_700_000_000_000 + i,
                    )
                )
            await recent.apply(events)
            ahead = started + (first + batch) / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await redis.aclose()

    run_loop(main())


def _redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    async with scratch_redis(args.redis_db) as redis:

        async def groups_of(user_id: str) -> set[str]:
            return set()

        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        routes = GatewayRoutes(redis, 900_000 + int(tag[:4], 16)) if args.mode == "route" else None
        hub = Hub(pubsub, groups_of, shards=16, routes=routes)
        await hub.start()
        listener = asyncio.create_task(hub.listen())
        sockets = []
        for a, b in _pairs(tag, args.pairs):
            for user in (a, b):
                sock = _Socket()
                sockets.append(sock)
                await hub.register(Connection(user, "d", sock, queue_size=1024))
        want = 2 * args.messages
        child = multiprocessing.get_context("spawn").Process(
            target=_publish, args=(args.redis_db, tag, args.pairs, args.messages, args.rate, args.batch)
        )
        redis_before = _redis_cpu(await redis.info("cpu"))
        started, cpu = time.perf_counter(), time.process_time()
        child.start()
        while sum(s.frames for s in sockets) < want:
            if not child.is_alive() and time.perf_counter() - started > args.messages / args.rate + 30:
                break
            await asyncio.sleep(0.05)
        wall, used = time.perf_counter() - started, time.process_time() - cpu
        redis_used = _redis_cpu(await redis.info("cpu")) - redis_before
        await asyncio.to_thread(child.join)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await pubsub.aclose()
    got = sum(s.frames for s in sockets)
    return {
        "mode": args.mode,
        "messages": args.messages,
        "frames": got,
        "wall_s": wall,
        "hub_cpu_us_per_message": used / args.messages * 1e6,
        "redis_cpu_us_per_message": redis_used / args.messages * 1e6,
    }


def _cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("route", "user"), default="route")
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=2_000, help="messages a second")
    ap.add_argument("--batch", type=int, default=2, help="events per deliver-stage call")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--redis-db", type=int, default=15, help="emptied before and after (default 15)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = run_loop(main(args))
    print(
        f"gateway pub/sub ({r['mode']}), {r['messages']:,} 1:1 messages at {args.rate:g}/s in batches "
        f"of {args.batch}, {args.pairs} pairs; {machine_line()}"
    )
    print(
        f"  frames {r['frames']:,}/{2 * r['messages']:,} in {r['wall_s']:.1f} s;  hub CPU "
        f"{r['hub_cpu_us_per_message']:.1f} µs per message;  Redis CPU "
        f"{r['redis_cpu_us_per_message']:.1f} µs per message (shared server)"
    )
    if args.json:
        print(json.dumps({"gateway_routes": r}))


if __name__ == "__main__":
    _cli()
