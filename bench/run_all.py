"""The benchmark suite in one command: starts Tidings in a namespace of its own, runs every
benchmark with modest default sizes, and prints a summary against the targets of issue #7.

    .venv/bin/python -m bench.run_all                  # the whole suite (about 10 minutes)
    .venv/bin/python -m bench.run_all --quick          # smaller and shorter (about 4 minutes)
    .venv/bin/python -m bench.run_all --only e2e-1to1,connections --rates 500,1000,2000

What it does:
1. migrates the namespace (``--namespace``, default ``bench``: keyspace ``tidings_bench``,
   topics ``bench.*``, groups ``tidings-bench-projector-*``, Redis db ``--redis-db``) and starts
   the deliver worker, the persist worker and a gateway with ``--gateway-workers`` processes
   on ``--port`` (or, with ``--no-start``, uses a running gateway at ``--port``);
2. runs, each as its own process with ``--json``, printing its full report:
   ``e2e-1to1`` at each of ``--rates``, ``fanout``, ``connections``, ``replay`` and ``archive``
   (when ``bench/replay.py`` / ``bench/archive.py`` exist), and ``tracing-overhead``;
3. prints one summary table (figure, target, met or not) and writes every figure as JSON to
   ``--out`` (default ``bench/results/<UTC time>.json``, not committed).

Every generator runs at the current niceness; on a shared machine start the runner with
``nice -n -10`` (as root) so that the generators keep their schedules, and say so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import machine_facts
from bench.system import ROOT, bench_system

TARGETS = {
    "e2e_p99_ms": 200.0,  # at >= 5,000 msgs/s sustained
    "e2e_rate": 5000.0,
    "e2e_p50_ms_at_1000": 20.0,
    "conn_kib": 20.0,
    "conn_idle_core_pct": 50.0,
    "conn_count": 100_000,
    "fanout_p99_ms": 1000.0,
    "fanout_members": 10_000,
}


def run_bench(
    name: str, module: str, args: list[str], env: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    """Run ``python -m module args --json``, echo its output, and return its JSON line."""
    cmd = [sys.executable, "-m", module, *args]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        print(f"{name}: timed out after {timeout_s:g} s")
        return {"error": f"timed out after {timeout_s:g} s"}
    figures: dict[str, Any] = {}
    printed: list[str] = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            figures = orjson.loads(line)
        else:
            print(line)
            if line.strip():
                printed.append(line.strip())
    if not figures and printed:
        # A bench without --json: its last line with a rate in it, else its last line.
        rated = [line for line in printed if "/s" in line]
        figures["summary"] = (rated or printed)[-1][:160]
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        figures["error"] = f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    return figures


def ms(values: dict[str, Any] | None, key: str) -> float | None:
    if not values:
        return None
    v = values.get(key)
    return float(v) if v is not None else None


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "NOT met")


def summary(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    sweep = results.get("e2e-1to1", {})
    best = None
    for rate, f in sorted(sweep.items(), key=lambda kv: float(kv[0])):
        if "error" in f:
            rows.append((f"e2e-1to1 @ {rate}/s", f["error"], "", "-"))
            continue
        p50, p99 = ms(f.get("send_deliver_ms"), "p50"), ms(f.get("send_deliver_ms"), "p99")
        complete = f.get("delivered") == f.get("sent") and f.get("valid")
        rows.append(
            (
                f"e2e-1to1 @ {rate}/s",
                f"P50 {p50} ms, P99 {p99} ms, delivered {f.get('delivered')}/{f.get('sent')}"
                + ("" if f.get("valid") else " (INVALID run)"),
                "P99 <= 200 ms" + ("; P50 <= 20 ms" if float(rate) == 1000 else ""),
                verdict(
                    bool(complete and p99 is not None and p99 <= TARGETS["e2e_p99_ms"])
                    and (float(rate) != 1000 or (p50 is not None and p50 <= TARGETS["e2e_p50_ms_at_1000"]))
                ),
            )
        )
        if complete and p99 is not None and p99 <= TARGETS["e2e_p99_ms"]:
            best = max(best or 0.0, float(rate))
    if sweep:
        rows.append(
            (
                "e2e-1to1 knee",
                f"{best:g} msgs/s with P99 <= 200 ms" if best else "no rate met P99 <= 200 ms",
                ">= 5,000 msgs/s",
                verdict(best is not None and best >= TARGETS["e2e_rate"]),
            )
        )
    for s in results.get("sweep", {}).get("rates", []):
        rows.append(
            (
                f"sweep @ {s['rate']:g}/s",
                f"P50 {s['p50_ms']} ms, P99 {s['p99_ms']} ms, {s['delivered']}/{s['sent']}, "
                f"CPU {s['tidings_ms_per_msg']} ms/msg (all processes but the generator)",
                "1.5 ms/msg at 200; 0.6 at 1,000",
                "-",
            )
        )
    f = results.get("fanout")
    if f:
        if "error" in f:
            rows.append(("fanout", f["error"], "", "-"))
        else:
            p99 = ms(f.get("latency_ms"), "p99")
            members = f.get("config", {}).get("members")
            rows.append(
                (
                    f"fanout {members} members",
                    f"P99 {p99} ms, last member P50 {ms(f.get('last_member_ms'), 'p50')} ms, "
                    f"missing {f.get('missing')}",
                    "10,000 members, P99 <= 1 s",
                    verdict(
                        None
                        if members != TARGETS["fanout_members"]
                        else bool(
                            p99 is not None and p99 <= TARGETS["fanout_p99_ms"] and f.get("missing") == 0
                        )
                    ),
                )
            )
    f = results.get("connections")
    if f:
        if "error" in f:
            rows.append(("connections", f["error"], "", "-"))
        else:
            kib, pct = f.get("gateway_kib_per_conn"), f.get("gateway_idle_cpu_pct")
            rows.append(
                (
                    f"connections {f.get('opened')}",
                    f"{kib} KiB/conn gateway RSS, idle CPU {pct}% of a core "
                    f"({f.get('gateway_cpu_us_per_s_per_conn')} µs/s/conn)",
                    "100,000 conns, <= 20 KiB each, <= 50% of a core idle",
                    verdict(
                        None
                        if f.get("opened", 0) < TARGETS["conn_count"]
                        else bool(
                            kib is not None
                            and kib <= TARGETS["conn_kib"]
                            and pct is not None
                            and pct <= TARGETS["conn_idle_core_pct"]
                        )
                    ),
                )
            )
    for s in results.get("scaling", {}).get("runs", []):
        busiest = s.get("busiest") or {}
        rows.append(
            (
                f"scaling N={s['processes_per_role']} @ {s['rate']:g}/s",
                f"P99 {s['p99_ms']} ms, {s['delivered']}/{s['sent']}, {s['tidings_ms_per_msg']} ms CPU/msg, "
                f"{s['msgs_per_core_tidings']} msgs/s per busy core, busiest {busiest.get('process')} "
                f"{busiest.get('core_pct')} %",
                "-",
                "-",
            )
        )
    for name in ("replay", "archive", "archive-query", "tracing-overhead"):
        f = results.get(name)
        if f:
            text = f.get("error") or f.get("summary") or "see its report above"
            rows.append((name, str(text), "", "-"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and shorter windows")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated: e2e-1to1,sweep,fanout,connections,replay,archive,tracing,scaling",
    )
    ap.add_argument("--scaling-counts", default="1,2,3", help="scaling: processes per role (1,2,3)")
    ap.add_argument("--scaling-rates", default="100,200", help="scaling: msgs/s per configuration")
    ap.add_argument(
        "--rates", default="", help="e2e-1to1 rates (default 250,500,1000,2000,5000; quick 500,1000)"
    )
    ap.add_argument("--duration", type=float, default=None, help="e2e-1to1 measured seconds (20; quick 10)")
    ap.add_argument(
        "--sweep-rates", default="200,400,800,1200,1600,2000,2500,3000", help="sweep: rates up to the knee"
    )
    ap.add_argument("--pairs", type=int, default=200, help="e2e-1to1 user pairs (200)")
    ap.add_argument("--e2e-processes", type=int, default=2, help="e2e-1to1 generator processes (2)")
    ap.add_argument("--fanout-members", type=int, default=None, help="fanout group size (2000; quick 1000)")
    ap.add_argument("--connections", type=int, default=None, help="idle sockets (10000; quick 3000)")
    ap.add_argument("--hold", type=float, default=None, help="connections idle window (45 s; quick 25)")
    ap.add_argument("--namespace", default="bench")
    ap.add_argument("--redis-db", type=int, default=6)
    ap.add_argument("--port", type=int, default=8797)
    ap.add_argument("--gateway-workers", type=int, default=2)
    ap.add_argument("--no-start", action="store_true", help="use the gateway already at --port")
    ap.add_argument("--out", default="", help="JSON results file (default bench/results/<time>.json)")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}

    def wanted(name: str) -> bool:
        return not only or name in only

    quick = args.quick
    rates = [float(r) for r in (args.rates or ("500,1000" if quick else "250,500,1000,2000,5000")).split(",")]
    duration = args.duration or (10.0 if quick else 20.0)
    members = args.fanout_members or (1000 if quick else 2000)
    conns = args.connections or (3000 if quick else 10_000)
    hold = args.hold or (25.0 if quick else 45.0)
    replay_events = 20_000 if quick else 100_000
    archive_events = 50_000 if quick else 200_000
    query_messages = 200_000 if quick else 1_000_000

    started = dt.datetime.now(dt.UTC)
    env, system = bench_system(
        args.namespace, redis_db=args.redis_db, http_port=args.port, gateway_workers=args.gateway_workers
    )
    secret, logs = env["TIDINGS_AUTH_SECRET"], system.logs
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            **machine_facts(),
            "loadavg": os.getloadavg(),
            "nice": os.nice(0),
        },
        "config": vars(args),
    }
    ws = f"ws://127.0.0.1:{args.port}/v1/ws"
    common = ["--secret", secret, "--json"]
    # The scaling benchmark starts systems of its own (1, 2, 3 processes per role): alone, the
    # suite's system is not started; with the others, it runs after that system has stopped.
    own_system = not args.no_start and (not only or bool(only - {"scaling"}))
    try:
        if own_system:
            print(f"starting Tidings in namespace {args.namespace!r} on port {args.port} (logs in {logs})")
            system.migrate()
            system.start()
            system.wait_ready()
            print(f"delivering after {system.wait_delivering(secret):.1f} s")
        if wanted("e2e-1to1"):
            sweep: dict[str, Any] = {}
            for rate in rates:
                sweep[f"{rate:g}"] = run_bench(
                    f"e2e-1to1 {rate:g}/s",
                    "bench.e2e_1to1",
                    ["--rate", f"{rate:g}", "--duration", f"{duration:g}", "--warmup", "5",
                     "--pairs", str(args.pairs), "--processes", str(args.e2e_processes),
                     "--url", ws, *common],
                    env,
                    timeout_s=duration + 200,
                )  # fmt: skip
                time.sleep(5)  # let a backlog drain before the next rate
            results["e2e-1to1"] = sweep
        if wanted("sweep") and not args.no_start:
            # 200 msgs/s up to the knee, with the CPU per message of every process by role.
            results["sweep"] = run_bench(
                "sweep",
                "bench.sweep",
                ["--no-start", "--port", str(args.port), "--idle", "15",
                 "--rates", args.sweep_rates, "--duration", f"{duration:g}", "--pairs", "100",
                 "--pids", ",".join(f"{k}={v}" for k, v in system.pids().items()), "--json"],
                env,
                timeout_s=3600,
            )  # fmt: skip
        if wanted("fanout"):
            if not args.no_start:
                system.restart_gateway()
            results["fanout"] = run_bench(
                "fanout",
                "bench.fanout",
                ["--members", str(members), "--messages", "10", "--rate", "1",
                 "--url", f"ws://127.0.0.1:{args.port}", "--gateway-workers", str(args.gateway_workers),
                 "--watch-pids", ",".join(map(str, system.pids().values())), *common],
                env,
                timeout_s=900,
            )  # fmt: skip
        if wanted("connections"):
            if not args.no_start:
                system.restart_gateway()
            results["connections"] = run_bench(
                "connections",
                "bench.connections",
                ["--connections", str(conns), "--hold", f"{hold:g}", "--url", ws, *common]
                + ([] if args.no_start else ["--gateway-pids", str(system.pids()["gateway"])]),
                env,
                timeout_s=1200,
            )
        # The archive engineer's benches (no --json: their last line is the summary).
        others = {
            "replay": ["--events", str(replay_events)],
            "archive": ["throughput", "--events", str(archive_events)],
            "archive-query": ["query", "--messages", str(query_messages)],
        }
        for name, bench_args in others.items():
            if not wanted(name.split("-")[0]):
                continue
            module = name.split("-")[0]
            if (ROOT / "bench" / f"{module}.py").exists():
                results[name] = run_bench(name, f"bench.{module}", bench_args, env, timeout_s=1800)
            else:
                print(f"\n=== {name}: skipped, bench/{module}.py does not exist")
                results[name] = {"error": f"skipped: bench/{module}.py not present"}
        if wanted("tracing"):
            results["tracing-overhead"] = run_bench(
                "tracing-overhead", "bench.tracing_overhead", ["--json"], env, timeout_s=300
            )
    finally:
        if own_system:
            system.stop()
    if wanted("scaling") and not args.no_start:
        results["scaling"] = run_bench(
            "scaling",
            "bench.scaling",
            ["--counts", args.scaling_counts, "--rates", args.scaling_rates,
             "--duration", f"{min(duration, 15.0):g}", "--json"],
            env,
            timeout_s=3600,
        )  # fmt: skip

    print(f"\n=== summary  {results['date']}  machine {results['machine']}")
    rows = summary(results)
    widths = [max(len(r[i]) for r in [("benchmark", "figure", "target", "verdict"), *rows]) for i in range(4)]
    for row in [("benchmark", "figure", "target", "verdict"), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    out = Path(args.out or ROOT / "bench" / "results" / f"{started:%Y%m%dT%H%M%SZ}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
