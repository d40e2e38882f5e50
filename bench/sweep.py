"""The 1:1 rate sweep: idle CPU, then ``bench.e2e_1to1`` at rising rates until the knee, with
the CPU per message of every process (Tidings' own, Kafka, Cassandra, Redis) split by role.

    .venv/bin/python -m bench.sweep                        # own system in namespace bench
    .venv/bin/python -m bench.sweep --rates 200,1000 --idle 20
    .venv/bin/python -m bench.sweep --no-start --port 8797 --pids deliver=123,persist=124,gateway=125

For each rate it prints send->deliver P50/P99, delivered/sent, and per process the CPU as % of
one core and as ms per message (CPU-seconds over the measured window / messages sent in it).
The idle line is the same CPU over ``--idle`` seconds with no load. The sweep stops after the
first rate that misses P99 <= ``--p99-ms`` or loses a message (the knee is the rate before it),
unless ``--all`` is given. The shared services (Kafka, Cassandra, Redis) also serve other
users of the machine: their share is whatever they did in the window.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from bench.common import descendants, pid_ticks
from bench.run_all import run_bench
from bench.system import bench_system


def service_pids() -> dict[int, str]:
    """The Kafka, Cassandra and Redis this system uses: the processes listening on the ports
    of its settings (another engineer's own cluster on this machine is left out)."""
    import psutil

    from tidings.settings import Settings

    s = Settings()
    ports = {s.kafka_port: "kafka", s.cassandra_port: "cassandra", s.redis_port: "redis"}
    out: dict[int, str] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid and conn.laddr.port in ports:
            out[conn.pid] = ports[conn.laddr.port]
    return out


def labelled_pids(roles: dict[str, int]) -> dict[int, str]:
    """pid -> role for the system's processes (with their children: Sanic's workers) and
    the services."""
    out = service_pids()
    for role, pid in roles.items():
        for p in descendants({pid}):
            out[p] = role
    return out


def switches(pids: dict[int, str]) -> dict[int, int]:
    """pid -> context switches (voluntary + not) of all its threads: its wake-ups, a figure the
    machine's load disturbs far less than CPU time."""
    out: dict[int, int] = {}
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        n = 0
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            n += int(line.split()[1])
            except OSError:
                continue
        out[pid] = n
    return out


def switch_delta(a: dict[int, int], b: dict[int, int], labels: dict[int, str]) -> dict[str, float]:
    return by_role({pid: float(b[pid] - a[pid]) for pid in b if pid in a}, labels)


def by_role(cpu_s: dict[int, float], labels: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, seconds in cpu_s.items():
        role = labels.get(int(pid))
        if role is not None:
            out[role] = out.get(role, 0.0) + seconds
    return out


def batch_counts(ports: dict[str, int]) -> dict[str, tuple[float, float]]:
    """role -> (batches, events) so far, from the worker's tidings_worker_batch_events."""
    import urllib.request

    out: dict[str, tuple[float, float]] = {}
    for role, port in ports.items():
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            continue
        got = {}
        for line in text.splitlines():
            for key in ("count", "sum"):
                if line.startswith(f"tidings_worker_batch_events_{key} "):
                    got[key] = float(line.split()[1])
        if len(got) == 2:
            out[role] = (got["count"], got["sum"])
    return out


def idle_cpu(labels: dict[int, str], seconds: float) -> dict[str, float]:
    """role -> % of one core over ``seconds`` with no load."""
    hz = os.sysconf("SC_CLK_TCK")
    t0, a, sa = time.monotonic(), pid_ticks(set(labels)), switches(labels)
    time.sleep(seconds)
    t1, b, sb = time.monotonic(), pid_ticks(set(labels)), switches(labels)
    used = {pid: (b[pid] - a[pid]) / hz for pid in b if pid in a}
    woke = switch_delta(sa, sb, labels)
    print(
        "idle context switches per second: "
        + ", ".join(f"{r} {round(n / (t1 - t0))}" for r, n in sorted(woke.items())),
        flush=True,
    )
    return {role: round(s / (t1 - t0) * 100, 1) for role, s in sorted(by_role(used, labels).items())}


def line(rate: str, f: dict[str, Any], labels: dict[int, str]) -> tuple[str, dict[str, Any]]:
    window = float(f.get("window_s") or 0.0)
    sent = int(f.get("sent") or 0)
    roles = by_role({int(k): v for k, v in f.get("proc_cpu_s", {}).items()}, labels)
    roles["generator"] = sum(f.get("generator_cpu_pct", [])) / 100 * window
    per_msg = {r: round(s / sent * 1000, 3) for r, s in sorted(roles.items()) if sent}
    pct = {r: round(s / window * 100, 1) for r, s in sorted(roles.items()) if window}
    tidings = sum(v for r, v in roles.items() if r != "generator")
    d, a = f.get("send_deliver_ms", {}), f.get("send_ack_ms", {})
    summary = {
        "rate": float(rate),
        "sent": sent,
        "delivered": f.get("delivered"),
        "late_in_history": f.get("late_in_history"),
        "lost": f.get("lost"),
        "valid": f.get("valid"),
        "p50_ms": d.get("p50"),
        "p99_ms": d.get("p99"),
        "ack_p50_ms": a.get("p50"),
        "ack_p99_ms": a.get("p99"),
        "loadavg": f.get("machine", {}).get("loadavg_before"),
        "busy_pct": f.get("machine_busy_pct"),
        "cpu_pct": pct,
        "cpu_ms_per_msg": per_msg,
        "tidings_ms_per_msg": round(tidings / sent * 1000, 3) if sent else None,
    }
    text = (
        f"{float(rate):>6g}/s  P50 {d.get('p50')} P99 {d.get('p99')} ms  ack P50 {a.get('p50')} "
        f"P99 {a.get('p99')}  delivered {f.get('delivered')}/{sent}"
        + (f" (late {f.get('late_in_history')}, LOST {f.get('lost')})" if f.get("late_or_lost") else "")
        + f"{'' if f.get('valid') else ' INVALID'}  load {summary['loadavg']}  "
        f"busy {f.get('machine_busy_pct')}%\n"
        f"         all but the generator {summary['tidings_ms_per_msg']} ms CPU/msg;  "
        + ",  ".join(f"{r} {per_msg[r]} ms ({pct[r]}%)" for r in per_msg)
    )
    return text, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rates", default="200,400,800,1200,1600,2000,2500,3000")
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--processes", type=int, default=1, help="generator processes")
    ap.add_argument("--idle", type=float, default=15, help="idle window before the sweep (0: none)")
    ap.add_argument("--settle", type=float, default=15, help="seconds after start before the idle window")
    ap.add_argument("--p99-ms", type=float, default=200)
    ap.add_argument("--all", action="store_true", help="run every rate, past the knee too")
    ap.add_argument("--namespace", default="bench")
    ap.add_argument("--redis-db", type=int, default=6)
    ap.add_argument("--port", type=int, default=8797)
    ap.add_argument("--gateway-workers", type=int, default=1)
    ap.add_argument("--no-start", action="store_true", help="use the system already at --port")
    ap.add_argument("--pids", default="", help="with --no-start: role=pid,... to attribute CPU")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    env, system = bench_system(
        args.namespace, redis_db=args.redis_db, http_port=args.port, gateway_workers=args.gateway_workers
    )
    secret, logs = env["TIDINGS_AUTH_SECRET"], system.logs
    results: dict[str, Any] = {"rates": []}
    try:
        if args.no_start:
            roles = {k: int(v) for k, v in (x.split("=") for x in args.pids.split(",") if x)}
        else:
            print(f"starting Tidings in namespace {args.namespace!r} on port {args.port} (logs in {logs})")
            system.migrate()
            system.start()
            system.wait_ready()
            print(f"delivering after {system.wait_delivering(secret):.1f} s", flush=True)
            roles = system.pids()
        labels = labelled_pids(roles)
        if args.idle > 0:
            time.sleep(args.settle)  # a worker's first seconds (joining, assignment) are not idle
            idle = idle_cpu(labels, args.idle)
            results["idle_cpu_pct"] = idle
            print(f"idle {args.idle:g} s, % of one core: " + ", ".join(f"{r} {p}" for r, p in idle.items()))
        for rate in args.rates.split(","):
            labels = labelled_pids(roles)  # Sanic may have restarted a worker
            ports = (
                {} if args.no_start else dict(zip(("deliver", "persist"), system.worker_ports, strict=True))
            )
            batches0, t0, sw0 = batch_counts(ports), time.monotonic(), switches(labels)
            f = run_bench(
                f"e2e-1to1 {rate}/s",
                "bench.e2e_1to1",
                ["--rate", rate, "--duration", f"{args.duration:g}", "--warmup", f"{args.warmup:g}",
                 "--pairs", str(args.pairs), "--processes", str(args.processes),
                 "--url", f"ws://127.0.0.1:{args.port}/v1/ws", "--secret", secret, "--json"],
                env,
                timeout_s=args.duration + 200,
            )  # fmt: skip
            if "error" in f and "sent" not in f:
                print(f"{rate}/s: {f['error']}")
                break
            text, summary = line(rate, f, labels)
            batches1, elapsed, sw1 = batch_counts(ports), time.monotonic() - t0, switches(labels)
            woke = switch_delta(sw0, sw1, labels)
            total = (summary["sent"] or 1) * (1 + (args.warmup / args.duration))  # warm-up sends too
            summary["switches_per_msg"] = {r: round(n / total, 2) for r, n in sorted(woke.items())}
            summary["batches"] = {
                role: {
                    "per_s": round((batches1[role][0] - batches0[role][0]) / elapsed, 1),
                    "events_per_batch": round(
                        (batches1[role][1] - batches0[role][1])
                        / max(1.0, batches1[role][0] - batches0[role][0]),
                        2,
                    ),
                }
                for role in batches1
                if role in batches0
            }
            text += "\n         context switches per message (whole run, connects included): " + ",  ".join(
                f"{r} {n}" for r, n in summary["switches_per_msg"].items()
            )
            text += "\n         batches (whole run, connects included): " + ",  ".join(
                f"{r} {b['per_s']}/s of {b['events_per_batch']} events" for r, b in summary["batches"].items()
            )
            results["rates"].append(summary)
            print("\n=== sweep " + text, flush=True)
            met = summary["p99_ms"] is not None and summary["p99_ms"] <= args.p99_ms
            if not args.all and not (met and summary["delivered"] == summary["sent"]):
                break
            time.sleep(5)  # let a backlog drain
    finally:
        if not args.no_start:
            system.stop()
    print(f"\n=== sweep summary (CPU ms per message; idle % of one core: {results.get('idle_cpu_pct')})")
    for s in results["rates"]:
        print(
            f"{s['rate']:>6g}/s  P50 {s['p50_ms']} P99 {s['p99_ms']}  {s['delivered']}/{s['sent']}  "
            f"total {s['tidings_ms_per_msg']}  "
            + "  ".join(f"{r} {v}" for r, v in s["cpu_ms_per_msg"].items())
        )
    if args.json:
        import orjson

        print(orjson.dumps(results).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
