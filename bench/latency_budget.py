"""The 1:1 path's latency, hop by hop, from the spans of a traced run (``TIDINGS_TRACING=file``).

    TIDINGS_TRACING=file TIDINGS_TRACING_FILE=/tmp/spans.jsonl .venv/bin/python -m bench.sweep --rates 100 ...
    .venv/bin/python -m bench.latency_budget /tmp/spans.jsonl [--e2e-p50-ms 12.3]

One send is one trace (docs/operations.md, "Tracing"): ``gateway.send`` (the frame handled, up to
the ack being written) holds ``kafka.append`` (the produce, until acks=all); each worker role's
``worker.consume`` span starts when its batch is handed to the projector and holds the stage
spans (``deliver.push``: the hot cache and the pub/sub publish, one Redis pipeline;
``project.persist``: the Cassandra writes). Per trace with all of them, the hops:

- ``gateway before append``: rate limit, membership and encryption flag, id, idempotency claim;
- ``kafka append (acks=all)``;
- ``gateway after append``: the rest of the send, until the ack frame is queued;
- ``kafka -> deliver agent``: from the append's ack to the deliver worker's batch starting
  (replication to the high watermark, the consumer's fetch, Faust's dispatch, the batch window);
- ``deliver.push``: the Redis pipeline (hot cache, PUBLISH);
- ``server total``: from the gateway receiving the frame to the publish answered.

What no span covers: the client's frame reaching the gateway, and Redis -> the gateway's pub/sub
listener -> the socket write -> the client; with ``--e2e-p50-ms`` (the benchmark's send->deliver
P50) their sum at the median is printed as the difference of the medians (an estimate: medians
do not add exactly). Spans end in different processes on one machine's clock.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson


def _t(stamp: str) -> float:
    """Seconds since the epoch of an OpenTelemetry JSON time (ISO 8601, microseconds, ``Z``)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def spans_by_trace(lines: list[bytes]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if not line.strip():
            continue
        span = orjson.loads(line)
        out.setdefault(span["context"]["trace_id"], []).append(span)
    return out


def hops(spans: list[dict[str, Any]]) -> dict[str, float] | None:
    """The hops of one send's trace in ms, or None when a span is missing."""
    by: dict[str, dict[str, Any]] = {}
    for span in spans:
        name = span["name"]
        if name == "worker.consume":
            name = f"consume.{span['attributes'].get('tidings.role')}"
        by.setdefault(name, span)  # a redelivered record: its first consume
    need = ("gateway.send", "kafka.append", "consume.deliver", "deliver.push")
    if any(n not in by for n in need):
        return None
    send, append = by["gateway.send"], by["kafka.append"]
    consume, push = by["consume.deliver"], by["deliver.push"]
    s0, s1 = _t(send["start_time"]), _t(send["end_time"])
    a0, a1 = _t(append["start_time"]), _t(append["end_time"])
    c0 = _t(consume["start_time"])
    p0, p1 = _t(push["start_time"]), _t(push["end_time"])
    out = {
        "gateway before append": a0 - s0,
        "kafka append (acks=all)": a1 - a0,
        "gateway after append": s1 - a1,
        "kafka -> deliver agent": c0 - a1,
        "agent before push": p0 - c0,
        "deliver.push (Redis)": p1 - p0,
        "server total": p1 - s0,
    }
    if "consume.persist" in by and "project.persist" in by:
        persist = by["project.persist"]
        out["kafka -> persist agent"] = _t(by["consume.persist"]["start_time"]) - a1
        out["project.persist (Cassandra)"] = _t(persist["end_time"]) - _t(persist["start_time"])
    return {k: v * 1000 for k, v in out.items()}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def budget(path: Path) -> dict[str, dict[str, float]]:
    traces = spans_by_trace(path.read_bytes().splitlines())
    rows = [h for spans in traces.values() if (h := hops(spans)) is not None]
    out: dict[str, dict[str, float]] = {}
    for name in rows[0] if rows else ():
        values = [r[name] for r in rows if name in r]
        out[name] = {
            "n": len(values),
            "p50": round(statistics.median(values), 2),
            "p90": round(_pct(values, 0.90), 2),
            "p99": round(_pct(values, 0.99), 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("spans", type=Path)
    ap.add_argument("--e2e-p50-ms", type=float, default=None, help="the benchmark's send->deliver P50")
    args = ap.parse_args(argv)
    found = budget(args.spans)
    if not found:
        print("no complete trace (gateway.send, kafka.append, the deliver worker's spans) in the file")
        return 1
    print(f"{'hop':32s} {'n':>6s} {'P50':>8s} {'P90':>8s} {'P99':>8s}  ms")
    for name, f in found.items():
        print(f"{name:32s} {f['n']:6.0f} {f['p50']:8.2f} {f['p90']:8.2f} {f['p99']:8.2f}")
    if args.e2e_p50_ms is not None:
        rest = args.e2e_p50_ms - found["server total"]["p50"]
        print(f"client -> gateway + Redis -> gateway -> socket -> client, at the median: ~{rest:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
