"""What the Python SDK costs a client compared with a bare WebSocket (benchmark ``sdk-overhead``).

One sender and one receiver, ``--messages`` sends one after another (closed loop) in each mode:

- ``raw``: ``websockets`` + ``orjson`` frames, as the open-loop generator (bench/e2e_1to1.py) sends;
- ``sdk``: ``TidingsClient.send()`` (outbox, ack future) and an ``events(MessageEvent)`` stream
  (dedup, typed objects) on the receiving side.

It reports send->ack and send->deliver latency (P50, P99) and the client process's CPU time per
message, which is what would limit (and distort) an open-loop generator built on the SDK.
Starts a system of its own in namespace ``--namespace`` unless ``--url`` and ``--secret`` point
at a running one::

    .venv/bin/python -m bench.sdk_overhead --messages 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import websockets
from tidings_client import MessageEvent, TidingsClient

from bench.system import ROOT, BenchSystem, namespace_env
from query_api.auth import issue_token


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(mode: str, acks: list[float], delivers: list[float], cpu_s: float, n: int) -> dict[str, Any]:
    return {
        "mode": mode,
        "messages": n,
        "ack_p50_ms": round(_pct(acks, 0.5) * 1000, 2),
        "ack_p99_ms": round(_pct(acks, 0.99) * 1000, 2),
        "deliver_p50_ms": round(_pct(delivers, 0.5) * 1000, 2),
        "deliver_p99_ms": round(_pct(delivers, 0.99) * 1000, 2),
        "client_cpu_us_per_msg": round(cpu_s / n * 1e6, 1),
        "mean_deliver_ms": round(statistics.fmean(delivers) * 1000, 2),
    }


async def run_raw(http: str, secret: str, n: int) -> dict[str, Any]:
    a, b = f"ra{uuid.uuid4().hex[:8]}", f"rb{uuid.uuid4().hex[:8]}"
    cid = f"dm:{min(a, b)}:{max(a, b)}"
    ws = http.replace("http://", "ws://") + "/v1/ws?token="
    acks: list[float] = []
    delivers: list[float] = []
    async with (
        websockets.connect(ws + issue_token(secret, b)) as rx,
        websockets.connect(ws + issue_token(secret, a)) as tx,
    ):
        await tx.send('{"type":"ping","ref":"p"}')
        await tx.recv()
        await rx.send('{"type":"ping","ref":"p"}')
        await rx.recv()
        cpu0 = time.process_time()
        for i in range(n):
            started = time.perf_counter()
            frame = {"type": "send", "ref": str(i), "client_msg_id": uuid.uuid4().hex, "conversation_id": cid,
                     "kind": "text", "body": f"raw {i}"}  # fmt: skip
            await tx.send(orjson.dumps(frame).decode())
            while (reply := orjson.loads(await asyncio.wait_for(tx.recv(), 30))).get("type") != "ack":
                if reply.get("type") == "error":
                    raise SystemExit(f"send refused: {reply}")
            acks.append(time.perf_counter() - started)
            while orjson.loads(await asyncio.wait_for(rx.recv(), 30)).get("type") != "message":
                pass
            delivers.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu0
    return _summary("raw", acks, delivers, cpu, n)


async def run_sdk(http: str, secret: str, n: int) -> dict[str, Any]:
    a, b = f"sa{uuid.uuid4().hex[:8]}", f"sb{uuid.uuid4().hex[:8]}"
    cid = f"dm:{min(a, b)}:{max(a, b)}"
    acks: list[float] = []
    delivers: list[float] = []
    async with (
        TidingsClient(http, issue_token(secret, b)) as rx,
        TidingsClient(http, issue_token(secret, a)) as tx,
    ):
        stream = rx.events(MessageEvent)
        cpu0 = time.process_time()
        for i in range(n):
            started = time.perf_counter()
            await tx.send(cid, f"sdk {i}")
            acks.append(time.perf_counter() - started)
            await stream.next(timeout=30)
            delivers.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu0
    return _summary("sdk", acks, delivers, cpu, n)


def _round(run: Any, url: str, secret: str, n: int, tries: int = 5) -> dict[str, Any]:
    """One round; a round whose raw socket was closed by the server (a Redis restart on a
    shared machine closes every socket with 1013) is run again, and says so."""
    for attempt in range(1, tries + 1):
        try:
            result: dict[str, Any] = asyncio.run(run(url, secret, n))
            result["attempt"] = attempt
            return result
        except websockets.ConnectionClosed as exc:
            print(f"{run.__name__}: the server closed the socket ({exc}); running the round again")
    raise SystemExit(f"{run.__name__} failed {tries} times")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sdk_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="raw, sdk, raw, sdk, ... (warm-up excluded)")
    parser.add_argument("--url", help="a running gateway (with --secret)")
    parser.add_argument("--secret", default=os.environ.get("TIDINGS_AUTH_SECRET", ""))
    parser.add_argument("--namespace", default="sdkbench")
    parser.add_argument("--redis-db", type=int, default=7)
    args = parser.parse_args()
    system: BenchSystem | None = None
    url, secret = args.url, args.secret
    if url is None:
        secret = secret or uuid.uuid4().hex
        env = namespace_env(args.namespace, redis_db=args.redis_db, http_port=_free_port(), gateway_workers=1)
        env["TIDINGS_AUTH_SECRET"] = secret
        # Closed-loop sends from one user go past the default 20/s: no rate limit here.
        env["TIDINGS_RATE_SEND_PER_S"] = env["TIDINGS_RATE_SEND_BURST"] = "1000000"
        system = BenchSystem(env=env, logs=ROOT / "bench" / "results" / "sdk_overhead_logs",
                             worker_ports=(_free_port(), _free_port()))  # fmt: skip
        system.migrate()
        system.start()
        system.wait_ready()
        system.wait_delivering(secret)
        url = system.http
    try:
        results: list[dict[str, Any]] = []
        _round(run_raw, url, secret, 100)  # warm-up
        _round(run_sdk, url, secret, 100)
        for _ in range(args.rounds):
            results.append(_round(run_raw, url, secret, args.messages))
            results.append(_round(run_sdk, url, secret, args.messages))
        for r in results:
            print(json.dumps(r))
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        Path(out / "sdk_overhead.json").write_text(json.dumps(results, indent=1))
    finally:
        if system is not None:
            system.stop()


if __name__ == "__main__":
    main()
