"""Scaling on this box (issue #20): 1 vs 2 vs 3 processes of each per-message role, at a fixed
open-loop 1:1 rate or two, with the CPU every process spends per message.

    flock /tmp/tidings-bench.lock .venv/bin/python -m bench.scaling
    flock /tmp/tidings-bench.lock .venv/bin/python -m bench.scaling --counts 1,3 --rates 100 --duration 10

For each count N it starts, in a namespace of its own (``--namespace``, default ``scale``:
keyspace, topics, consumer groups, Redis db) on the single-node services, N gateways (one Sanic
process each, on ``--port``, ``--port``+1, ...) and N workers of each role that handles every
message (deliver, persist, search, notify: N consumers per group share its partitions), plus
one push worker (idle here: every user is online). It waits until a probe message through every
gateway is pushed, then runs ``bench.e2e_1to1`` at each rate with its users spread over the
gateways by a hash of the user id (as HAProxy places them, so most pairs cross gateways), and
stops everything before the next N.

Per configuration and rate it prints send->deliver P50/P99, delivered/sent, the machine's busy
share and load average, and, from every process's CPU-seconds in the measured window:
- per process: % of one core and ms of CPU per message;
- per role: the sum over its N processes (ms per message; the same work split N ways should
  cost the same in total: what it costs more is the price of the extra processes);
- msgs/s per busy core: the rate over the cores the Tidings processes kept busy, and over
  those plus Kafka, Cassandra and Redis (shared with whoever else uses the machine);
- which process saturates: the busiest process and its share of a core (a process near 100 %
  is the bottleneck; when none is and the machine is busy, the box is).

The box has 2 cores: more processes cannot run faster than 2 cores allow, so the figures to read
are the CPU per message and the efficiency per core, not a speed-up. Keep runs short; another
engineer's benchmarks share the machine (hence the ``flock``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from typing import Any

import orjson

from bench.common import machine_facts
from bench.run_all import run_bench
from bench.sweep import by_role, labelled_pids
from bench.system import BenchSystem, bench_system
from tidings import processes
from tidings.processes import role_of

SCALED = ("deliver", "persist", "search", "notify", "gateway")
SERVICES = ("kafka", "cassandra", "redis")
SATURATED_PCT = 85.0
PROBES = 48


class Launcher:
    """Starts N processes of each scaled role and one push worker, and restarts one that dies
    while starting (on a loaded machine a worker's first Cassandra connection can time out)."""

    RESTARTS = 3

    def __init__(self, system: BenchSystem, n: int, base_port: int) -> None:
        self.system = system
        self.envs: dict[str, dict[str, str]] = {}
        self.urls: list[str] = []
        for i in range(1, n + 1):
            for role in SCALED:
                name = role if i == 1 else f"{role}{i}"
                extra = {"TIDINGS_WORKER_WEB_PORT": "0", "TIDINGS_GATEWAY_WORKERS": "1"}
                if role == "gateway":
                    extra["TIDINGS_HTTP_PORT"] = str(base_port + i - 1)
                    self.urls.append(f"ws://127.0.0.1:{base_port + i - 1}/v1/ws")
                self.envs[name] = {**os.environ, **system.env, **extra}
        self.envs["push"] = {**os.environ, **system.env, "TIDINGS_WORKER_WEB_PORT": "0"}
        self.restarts: dict[str, int] = {}

    def start(self, stagger_s: float = 1.0) -> None:
        self.system.logs.mkdir(parents=True, exist_ok=True)
        for name in self.envs:
            self._spawn(name)
            time.sleep(stagger_s)  # not every process's Cassandra connect at once

    def _spawn(self, name: str) -> None:
        log = self.system.logs / f"{name}.log"
        self.system.procs[name] = processes.spawn(name, self.envs[name], log=log)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for url in self.urls:
            http = url.replace("ws://", "http://").removesuffix("/v1/ws")
            while True:
                try:
                    processes.wait_ready(
                        f"{http}/readyz", self.system.procs, timeout_s=max(1.0, deadline - time.monotonic())
                    )
                    break
                except processes.Exited as exc:
                    tail = (self.system.logs / f"{exc.name}.log").read_text(errors="replace")[-2000:]
                    self.restarts[exc.name] = self.restarts.get(exc.name, 0) + 1
                    if self.restarts[exc.name] > self.RESTARTS:
                        raise SystemExit(f"{exc}:\n{tail}") from exc
                    print(f"{exc}; restarting it ({tail.strip().splitlines()[-1:]})", flush=True)
                    self._spawn(exc.name)
        # The workers have no readiness URL: every process must still be running a while later.
        while True:
            time.sleep(5)
            dead = [name for name, proc in self.system.procs.items() if proc.poll() is not None]
            if not dead:
                return
            for name in dead:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if self.restarts[name] > self.RESTARTS or time.monotonic() > deadline:
                    raise SystemExit(f"{name} keeps exiting (logs in {self.system.logs})")
                print(f"{name} exited; restarting it", flush=True)
                self._spawn(name)


def wait_delivering(urls: list[str], secret: str, timeout_s: float = 180) -> float:
    """Until a message in each of ``PROBES`` conversations (senders and recipients over all
    gateways, so every deliver worker's partitions are likely covered) is pushed: a deliver
    group starts at the log's end, and what is sent before its partitions are assigned is
    never pushed. Unanswered probes are sent again every 3 s. Returns the seconds it took."""
    import websockets

    from query_api.auth import issue_token

    async def probe() -> float:
        started = time.monotonic()
        run = uuid.uuid4().hex[:6]
        pairs = [(f"sp{run}{i}a", f"sp{run}{i}b") for i in range(PROBES)]
        socks = {}
        for i, (a, b) in enumerate(pairs):
            for user, url in ((a, urls[i % len(urls)]), (b, urls[(i + 1) % len(urls)])):
                socks[user] = await websockets.connect(f"{url}?token={issue_token(secret, user)}", proxy=None)
        waiting = {b: f"dm:{min(a, b)}:{max(a, b)}" for a, b in pairs}
        senders = {b: a for a, b in pairs}

        async def listen(user: str) -> None:
            async for raw in socks[user]:
                if orjson.loads(raw).get("type") == "message":
                    waiting.pop(user, None)
                    return

        listeners = [asyncio.create_task(listen(b)) for _, b in pairs]
        try:
            n = 0
            while waiting and time.monotonic() - started < timeout_s:
                for b, cid in list(waiting.items()):
                    n += 1
                    frame = {"type": "send", "ref": str(n), "client_msg_id": f"probe{n}",
                             "conversation_id": cid, "kind": "text", "body": "probe"}  # fmt: skip
                    await socks[senders[b]].send(orjson.dumps(frame).decode())
                await asyncio.sleep(3)
            if waiting:
                raise SystemExit(f"{len(waiting)} of {PROBES} probes never pushed")
            return time.monotonic() - started
        finally:
            for task in listeners:
                task.cancel()
            await asyncio.gather(*(s.close() for s in socks.values()), return_exceptions=True)

    return asyncio.run(probe())


class CassandraWrites:
    """Row writes per table of the namespace's keyspace, from Cassandra's own counters
    (``system_views.local_write_latency``: one count per mutation of a table on this node)."""

    def __init__(self, keyspace: str) -> None:
        from projections.adapters.cql import connect_to
        from tidings.settings import Settings

        self._cluster, self._session = connect_to(Settings())
        self._keyspace = keyspace

    def counts(self) -> dict[str, int]:
        rows = self._session.execute(
            "SELECT table_name, count FROM system_views.local_write_latency "
            "WHERE keyspace_name = %s ALLOW FILTERING",
            (self._keyspace,),
        )
        return {r.table_name: int(r.count) for r in rows}

    def close(self) -> None:
        self._cluster.shutdown()


class RedisMonitor:
    """Counts the commands Redis runs for one database while it runs (``MONITOR``): those
    clients send (round trips' commands) and those Lua scripts run (``EVALSHA``'s inner
    calls). MONITOR costs Redis CPU itself: use it in a run of its own (``--redis-monitor``)."""

    def __init__(self, db: int) -> None:
        import threading

        self._db = db
        self.counts: dict[str, int] = {}
        self._live: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from redis import Redis

        from tidings.settings import Settings

        settings = Settings()
        # No read timeout: redis-py drops the connection after one. The thread is a daemon and
        # the counts are copied when the run ends.
        client = Redis(host=settings.redis_host, port=settings.redis_port)
        with client.monitor() as monitor:
            while not self._stop.is_set():
                cmd = monitor.next_command()
                if int(cmd.get("db", -1)) != self._db:
                    continue
                name = str(cmd.get("command", "")).split(" ", 1)[0].strip('"').upper()
                key = f"{'lua' if cmd.get('client_type') == 'lua' else 'client'} {name}"
                self._live[key] = self._live.get(key, 0) + 1

    def __enter__(self) -> RedisMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.counts = dict(self._live)


def per_message(before: dict[str, int], after: dict[str, int], messages: int) -> dict[str, float]:
    return {
        k: round((v - before.get(k, 0)) / messages, 3)
        for k, v in sorted(after.items())
        if v != before.get(k, 0) and messages
    }


def analyse(n: int, rate: float, f: dict[str, Any], labels: dict[int, str]) -> dict[str, Any]:
    """One configuration's figures from ``bench.e2e_1to1``'s JSON and the pid labels."""
    window = float(f.get("window_s") or 0.0)
    sent = int(f.get("sent") or 0)
    per_proc = by_role({int(k): v for k, v in f.get("proc_cpu_s", {}).items()}, labels)
    per_role: dict[str, float] = {}
    for name, seconds in per_proc.items():
        role = role_of(name)
        per_role[role] = per_role.get(role, 0.0) + seconds
    tidings_s = sum(s for name, s in per_proc.items() if role_of(name) not in SERVICES)
    services_s = sum(s for name, s in per_proc.items() if role_of(name) in SERVICES)
    achieved = sent / window if window else 0.0
    busiest = max(
        ((name, s / window * 100) for name, s in per_proc.items() if window), key=lambda x: x[1], default=None
    )
    d, a = f.get("send_deliver_ms", {}), f.get("send_ack_ms", {})

    def ms_per_msg(seconds: float) -> float | None:
        return round(seconds / sent * 1000, 3) if sent else None

    return {
        "processes_per_role": n,
        "rate": rate,
        "achieved_rate": round(achieved, 1),
        "sent": sent,
        "delivered": f.get("delivered"),
        "late_or_lost": f.get("late_or_lost"),
        "valid": f.get("valid"),
        "invalid_reasons": f.get("invalid_reasons"),
        "p50_ms": d.get("p50"),
        "p99_ms": d.get("p99"),
        "ack_p99_ms": a.get("p99"),
        "loadavg": f.get("machine", {}).get("loadavg_before"),
        "machine_busy_pct": f.get("machine_busy_pct"),
        "cpu_pct": {k: round(v / window * 100, 1) for k, v in sorted(per_proc.items()) if window},
        "cpu_ms_per_msg": {k: ms_per_msg(v) for k, v in sorted(per_proc.items())},
        "role_ms_per_msg": {k: ms_per_msg(v) for k, v in sorted(per_role.items())},
        "tidings_ms_per_msg": ms_per_msg(tidings_s),
        "services_ms_per_msg": ms_per_msg(services_s),
        "tidings_cores": round(tidings_s / window, 2) if window else None,
        "msgs_per_core_tidings": round(achieved / (tidings_s / window), 1) if tidings_s else None,
        "msgs_per_core_all": round(achieved / ((tidings_s + services_s) / window), 1)
        if tidings_s + services_s
        else None,
        "busiest": {"process": busiest[0], "core_pct": round(busiest[1], 1)} if busiest else None,
        "saturated": busiest is not None and busiest[1] >= SATURATED_PCT,
    }


def report(s: dict[str, Any]) -> str:
    busiest = s["busiest"] or {}
    verdict = (
        f"{busiest.get('process')} saturates ({busiest.get('core_pct')} % of a core)"
        if s["saturated"]
        else f"no process saturates (busiest {busiest.get('process')} {busiest.get('core_pct')} % "
        f"of a core); machine busy {s['machine_busy_pct']} %"
    )
    roles = ",  ".join(f"{r} {v}" for r, v in s["role_ms_per_msg"].items())
    procs = ",  ".join(f"{p} {s['cpu_pct'][p]}%" for p in s["cpu_pct"])
    redis = s.get("redis_commands_per_msg")
    return (
        f"N={s['processes_per_role']}  {s['rate']:g}/s  P50 {s['p50_ms']} P99 {s['p99_ms']} ms  "
        f"ack P99 {s['ack_p99_ms']}  delivered {s['delivered']}/{s['sent']}"
        f"{'' if s['valid'] else ' INVALID ' + '; '.join(s['invalid_reasons'] or [])}  load {s['loadavg']}\n"
        f"    CPU ms/msg by role: {roles}\n"
        f"    Tidings {s['tidings_ms_per_msg']} ms/msg on {s['tidings_cores']} cores = "
        f"{s['msgs_per_core_tidings']} msgs/s per busy core; with the services "
        f"{s['msgs_per_core_all']}\n"
        f"    % of a core: {procs}\n"
        f"    Cassandra row writes per message persisted: {s.get('cassandra_writes_per_msg')}\n"
        + (f"    Redis commands per message: {redis}\n" if redis is not None else "")
        + f"    {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--counts", default="1,2,3", help="processes per role, one configuration each")
    ap.add_argument("--rates", default="100,200", help="open-loop msgs/s, each run per configuration")
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--settle", type=float, default=10, help="seconds after the probes before measuring")
    ap.add_argument("--namespace", default="scale")
    ap.add_argument("--redis-db", type=int, default=9)
    ap.add_argument("--port", type=int, default=8897, help="the first gateway's port (next ones +1)")
    ap.add_argument("--stagger", type=float, default=1.0, help="seconds between process starts")
    ap.add_argument("--start-timeout", type=float, default=420, help="seconds for a configuration to start")
    ap.add_argument("--redis-monitor", action="store_true", help="count Redis commands per message (MONITOR)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    env, system = bench_system(args.namespace, redis_db=args.redis_db, http_port=args.port, gateway_workers=1)
    secret = env["TIDINGS_AUTH_SECRET"]
    results: dict[str, Any] = {"machine": machine_facts(), "runs": []}
    print(f"namespace {args.namespace!r}, logs in {system.logs}", flush=True)
    system.migrate()
    writes = CassandraWrites(f"tidings_{args.namespace}")
    for n in (int(c) for c in args.counts.split(",")):
        try:
            started = time.monotonic()
            launcher = Launcher(system, n, args.port)
            launcher.start(args.stagger)
            try:
                launcher.wait_ready(args.start_timeout)
                urls = launcher.urls
                print(f"\nN={n}: ready after {time.monotonic() - started:.1f} s", flush=True)
                print(f"N={n}: delivering after {wait_delivering(urls, secret):.1f} s more", flush=True)
            except (SystemExit, TimeoutError) as exc:
                # a configuration that cannot start on the box now: say so, go on with the next
                print(f"\nN={n}: not started ({exc}); logs in {system.logs}", flush=True)
                results["not_started"] = [*results.get("not_started", []), {"n": n, "error": str(exc)[:300]}]
                continue
            time.sleep(args.settle)
            for rate in args.rates.split(","):
                labels = labelled_pids(system.pids())  # N processes of a role: deliver, deliver2...
                rows0 = writes.counts()
                with RedisMonitor(args.redis_db) if args.redis_monitor else contextlib.nullcontext() as mon:
                    f = run_bench(
                        f"scaling N={n} {rate}/s",
                        "bench.e2e_1to1",
                        ["--rate", rate, "--duration", f"{args.duration:g}", "--warmup", f"{args.warmup:g}",
                         "--pairs", str(args.pairs), "--url", ",".join(urls), "--secret", secret, "--json"],
                        env,
                        timeout_s=args.duration + args.warmup + 200,
                    )  # fmt: skip
                    time.sleep(2)  # persist's last batch
                if "sent" not in f:
                    print(f"N={n} {rate}/s: {f.get('error')}")
                    continue
                summary = analyse(n, float(rate), f, labels)
                # Whole run (warm-up and stragglers too): per message sent in it.
                everything = int(f.get("counts", {}).get("sent_all") or 0)
                rows1 = writes.counts()
                summary["cassandra_writes_per_msg_sent"] = per_message(rows0, rows1, everything)
                # persist may still be behind on a loaded box: per message *persisted* (one row
                # of `messages` each) is the figure that does not depend on how far it got
                persisted = rows1.get("messages", 0) - rows0.get("messages", 0)
                summary["cassandra_writes_per_msg"] = per_message(rows0, rows1, persisted)
                if mon is not None:
                    summary["redis_commands_per_msg"] = per_message({}, mon.counts, everything)
                results["runs"].append(summary)
                print("\n=== scaling " + report(summary), flush=True)
                time.sleep(3)  # let a backlog drain
        finally:
            system.stop()
        time.sleep(3)
    writes.close()
    print("\n=== scaling summary (CPU ms per message by role; msgs/s per busy core)")
    for s in results["runs"]:
        busiest = s["busiest"] or {}
        print(
            f"N={s['processes_per_role']} {s['rate']:>5g}/s  P50 {s['p50_ms']} P99 {s['p99_ms']}  "
            f"{s['delivered']}/{s['sent']}  Tidings {s['tidings_ms_per_msg']} ms/msg  "
            f"{s['msgs_per_core_tidings']} msgs/s/core ({s['msgs_per_core_all']} with services)  "
            f"busiest {busiest.get('process')} {busiest.get('core_pct')}%  load {s['loadavg']}"
        )
    if args.json:
        print(orjson.dumps(results).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
