"""Push notifications: notifications per second through the webhook path, and the time from a
message's send to its notification with the 2 s coalescing window.

Starts Tidings (gateway, workers, the notify and push roles) in a namespace of its own
(``--namespace``, Redis db ``--redis-db``; or uses a gateway already at ``--port`` with
``--no-start``), runs a webhook receiver in this process (aiohttp), and measures:

1. **fan-out**: one message to a group of ``--members`` offline members, each with a webhook
   registration: the notifier appends a job per member, the sender builds and POSTs a signed
   notification per member. Figures: notifications/s from the first POST to the last, and the
   time from the send to the first and the last POST. This is the big-group path (members read
   1,000 per page, registrations 100 users per query).
2. **latency**: ``--latency-users`` offline users each get one direct message, ``--gap`` seconds
   apart; per notification, the time from the message's Snowflake time (the gateway's accept)
   to the POST arriving. Each message opens its own window, so this is window + the way
   through the log, the notifier, the sender and the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web

from bench.common import machine_facts, new_hist, percentiles_ms, record_us, run_loop
from bench.system import BenchSystem, namespace_env
from events import snowflake_ts
from query_api.auth import issue_token


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrivals.setdefault(request.match_info["name"], []).append((time.time(), orjson.loads(body)))
        self.changed.set()
        return web.Response(status=200)

    async def wait(self, count: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (got := sum(len(v) for v in self.arrivals.values())) < count:
            if time.monotonic() > deadline:
                return got
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)
        return got


async def _register(http: httpx.AsyncClient, secret: str, users: list[str], hook: str) -> None:
    slots = asyncio.Semaphore(32)

    async def one(u: str) -> None:
        async with slots:
            r = await http.put(
                "/v1/devices/phone/push",
                headers={"Authorization": f"Bearer {issue_token(secret, u, device_id='phone')}"},
                json={"provider": "webhook", "endpoint": f"{hook}/{u}"},
            )
            r.raise_for_status()

    await asyncio.gather(*(one(u) for u in users))


async def measure(args: argparse.Namespace, secret: str) -> dict[str, Any]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{name}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook = f"http://127.0.0.1:{port}/hook"
    out: dict[str, Any] = {}
    run = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{args.port}", timeout=30) as http:

        def auth(u: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {issue_token(secret, u)}"}

        # 1. fan-out
        owner = f"o{run}"
        members = [f"m{run}x{i}" for i in range(args.members)]
        started = time.monotonic()
        await _register(http, secret, members, hook)
        out["register_per_s"] = round(len(members) / (time.monotonic() - started), 1)
        r = await http.post(
            "/v1/conversations",
            headers=auth(owner),
            json={"kind": "group", "title": "bench", "members": members[:5000]},
        )
        r.raise_for_status()
        gid = r.json()["conversation"]["conversation_id"]
        for first in range(5000, len(members), 5000):
            r = await http.post(
                f"/v1/conversations/{gid}/members",
                headers=auth(owner),
                json={"user_ids": members[first : first + 5000]},
            )
            r.raise_for_status()
        await asyncio.sleep(1.0)
        sent = time.time()
        r = await http.post(
            f"/v1/conversations/{gid}/messages",
            headers=auth(owner),
            json={"client_msg_id": "fanout", "kind": "text", "body": "to everyone"},
        )
        r.raise_for_status()
        got = await receiver.wait(len(members), args.timeout)
        times = sorted(t for name in members for t, _ in receiver.arrivals.get(name, []))
        out["fanout"] = {
            "members": len(members),
            "notifications": got,
            "first_s": round(times[0] - sent, 2) if times else None,
            "last_s": round(times[-1] - sent, 2) if times else None,
            "notifications_per_s": round((len(times) - 1) / (times[-1] - times[0]), 1)
            if len(times) > 1
            else None,
        }
        # 2. latency
        sender = f"s{run}"
        users = [f"l{run}x{i}" for i in range(args.latency_users)]
        await _register(http, secret, users, hook)
        sent_ms: dict[str, int] = {}
        base = got
        for u in users:
            cid = f"dm:{min(sender, u)}:{max(sender, u)}"
            r = await http.post(
                f"/v1/conversations/{cid}/messages",
                headers=auth(sender),
                json={"client_msg_id": u, "kind": "text", "body": "ping"},
            )
            r.raise_for_status()
            sent_ms[u] = snowflake_ts(int(r.json()["message_id"]))
            await asyncio.sleep(args.gap)
        await receiver.wait(base + len(users), args.timeout)
        hist = new_hist()
        missing = 0
        for u in users:
            arrivals = receiver.arrivals.get(u, [])
            if not arrivals:
                missing += 1
                continue
            record_us(hist, int((arrivals[0][0] * 1000 - sent_ms[u]) * 1_000_000))
        out["latency"] = {"users": len(users), "missing": missing, **percentiles_ms(hist, (50, 99))}
    await runner.cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--members", type=int, default=2000, help="offline members of the fan-out group")
    ap.add_argument("--latency-users", type=int, default=100)
    ap.add_argument("--gap", type=float, default=0.1, help="seconds between the latency messages")
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--namespace", default="pushbench")
    ap.add_argument("--redis-db", type=int, default=7)
    ap.add_argument("--port", type=int, default=8798)
    ap.add_argument("--no-start", action="store_true", help="use the gateway already at --port")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    env = {
        **os.environ,
        **namespace_env(args.namespace, redis_db=args.redis_db, http_port=args.port, gateway_workers=1),
    }
    from tidings.settings import Settings

    secret = env.get("TIDINGS_AUTH_SECRET") or Settings().resolved_auth_secret()
    env["TIDINGS_AUTH_SECRET"] = secret
    logs = Path(tempfile.mkdtemp(prefix=f"tidings-{args.namespace}-logs-"))
    system = BenchSystem(env={k: v for k, v in env.items() if k.startswith("TIDINGS_")}, logs=logs)
    figures: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
    }
    try:
        if not args.no_start:
            print(f"starting Tidings in namespace {args.namespace!r} on port {args.port} (logs in {logs})")
            system.migrate()
            system.start()
            system.wait_ready()
            print(f"delivering after {system.wait_delivering(secret):.1f} s")
        figures |= run_loop(measure(args, secret))
    finally:
        system.stop()
    f, lat = figures["fanout"], figures["latency"]
    print(
        f"fan-out to {f['members']} offline members: {f['notifications']} notifications, "
        f"{f['notifications_per_s']}/s, first after {f['first_s']} s, last after {f['last_s']} s"
    )
    print(
        f"send -> notification ({lat['users']} users, 2 s window): P50 {lat['p50']} ms, "
        f"P99 {lat['p99']} ms, missing {lat['missing']}"
    )
    print(f"registrations: {figures['register_per_s']}/s")
    if args.json:
        print(orjson.dumps(figures).decode())
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
