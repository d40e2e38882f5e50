"""What a Cassandra node serves, second by second, from its own virtual tables (no JMX):
requests (the Native-Transport-Requests pool's completed tasks, and CQL's counters of prepared
statements and batches), the mutation and read stages' tasks, and per table of one keyspace
the coordinator's reads and writes. Run it beside a load (bench.sweep) against a node that
only that load uses; divide the per-second figures by the rate for requests per message.

    .venv/bin/python -m bench.cql_requests --keyspace tidings_cqlreqb --seconds 120 > x.jsonl
    .venv/bin/python -m bench.cql_requests --summarize x.jsonl --from 30 --to 50

(TIDINGS_CASSANDRA_PORT etc. say which node.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

POOLS = ("Native-Transport-Requests", "MutationStage", "ReadStage")


def snapshot(session: Any, keyspace: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in session.execute("SELECT name, completed_tasks FROM system_views.thread_pools"):
        if row.name in POOLS:
            out[f"pool:{row.name}"] = float(row.completed_tasks)
    for row in session.execute("SELECT name, value FROM system_views.cql_metrics"):
        if row.name.endswith("executed") or "batch" in row.name:
            out[f"cql:{row.name}"] = float(row.value)
    for kind in ("read", "write"):
        query = (
            f"SELECT table_name, count FROM system_views.coordinator_{kind}_latency WHERE keyspace_name = %s"
        )
        for row in session.execute(query, (keyspace,)):
            if row.count:
                out[f"{kind}:{row.table_name}"] = float(row.count)
    return out


def record(keyspace: str, seconds: float, interval: float) -> None:
    from projections.adapters.cql import connect_to
    from tidings.settings import Settings

    cluster, session = connect_to(Settings())
    try:
        start = time.monotonic()
        last = snapshot(session, keyspace)
        while time.monotonic() - start < seconds:
            time.sleep(interval)
            now = snapshot(session, keyspace)
            delta = {
                k: round((v - last.get(k, 0.0)) / interval, 1) for k, v in now.items() if v != last.get(k)
            }
            # this sampler's own three reads of virtual tables go through the request pool too
            print(
                json.dumps(
                    {"t": round(time.monotonic() - start, 1), "utc": time.strftime("%H:%M:%S"), **delta}
                )
            )
            sys.stdout.flush()
            last = now
    finally:
        cluster.shutdown()


def summarize(path: str, t_from: float, t_to: float) -> None:
    with open(path) as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    rows = [r for r in rows if t_from <= r["t"] <= t_to]
    keys = sorted({k for r in rows for k in r if k not in ("t", "utc")})
    first, last = (rows[0]["utc"], rows[-1]["utc"]) if rows else ("-", "-")
    print(f"{len(rows)} samples, {first} to {last}; per second:")
    for key in keys:
        values = [r.get(key, 0.0) for r in rows]
        print(f"  {key:60s} median {statistics.median(values):8.1f}  mean {statistics.fmean(values):8.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--keyspace", default="tidings")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--summarize", help="a file this wrote")
    ap.add_argument("--from", dest="t_from", type=float, default=0)
    ap.add_argument("--to", dest="t_to", type=float, default=1e9)
    args = ap.parse_args(argv)
    if args.summarize:
        summarize(args.summarize, args.t_from, args.t_to)
    else:
        record(args.keyspace, args.seconds, args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
