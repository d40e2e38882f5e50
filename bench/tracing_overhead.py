"""Micro-benchmark: what tracing costs per message when off, and when on.

Per message the gateway opens ``gateway.send`` (and, when on, ``kafka.append`` with a header
injection); the workers make per-record spans only when tracing is on. Off, the only cost is
``telemetry.span()`` returning the shared no-op and one ``with`` on it::

    .venv/bin/python -m bench.tracing_overhead
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import timeit
from pathlib import Path

from tidings import telemetry
from tidings.settings import Settings


def per_call_ns(stmt: str, number: int, ns: dict[str, object]) -> float:
    timer = timeit.Timer(stmt, globals=ns)
    return min(timer.repeat(repeat=5, number=number)) / number * 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--number", type=int, default=200_000)
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    args = ap.parse_args(argv)
    attrs = {"tidings.conversation_id": "dm:alice:bob"}
    ns: dict[str, object] = {"telemetry": telemetry, "attrs": attrs}
    telemetry.configure(Settings(tracing="off"), "bench")
    baseline = per_call_ns("pass", args.number, ns)
    off = per_call_ns("with telemetry.span('gateway.send', attrs): pass", args.number, ns)
    with tempfile.TemporaryDirectory() as folder:
        telemetry.configure(Settings(tracing="file", tracing_file=Path(folder) / "spans.jsonl"), "bench")
        on = per_call_ns(
            "with telemetry.span('gateway.send', attrs), telemetry.trace_kafka_append('t'): pass",
            max(args.number // 20, 1000),
            ns,
        )
        telemetry.configure(Settings(tracing="off"), "bench")
    calib = min(timeit.Timer("sum(range(1000))").repeat(repeat=5, number=10_000)) / 10_000 * 1e6
    print(f"tracing_overhead  calibration sum(range(1000)) {calib:.1f} µs")
    print(f"off: {off - baseline:.0f} ns per message (span() + with on the shared no-op; no span objects)")
    print(f"on (file exporter, 2 spans + traceparent injection): {on / 1000:.1f} µs per message")
    if args.json:
        summary = f"off {off - baseline:.0f} ns/message, on {on / 1000:.0f} µs/message (file exporter)"
        figures = {"off_ns": round(off - baseline), "on_us": round(on / 1000, 1), "calibration_us": calib}
        print(json.dumps({**figures, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
