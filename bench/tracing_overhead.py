"""Micro-benchmark: what tracing costs per message when off, and when on.

Per message the gateway opens ``gateway.send`` (and, when on, ``kafka.append`` with a header
injection); the workers make per-record spans only when tracing is on. Off, the only cost is
``telemetry.span()`` returning the shared no-op and one ``with`` on it.

The receiver leg: the recipient gateway's hub routes each pub/sub payload to its sockets. Off,
payloads are plain (the deliver stage adds no trace context) and the hub's routing is what it
was; on, a traced payload is unwrapped inside a ``gateway.deliver`` span. Measured here: one
plain and one traced payload through ``Hub.deliver_to_user`` to one socket::

    .venv/bin/python -m bench.tracing_overhead
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

from projections.wire import MESSAGE, message_frame, traced
from tidings import telemetry
from tidings.settings import Settings


def per_call_ns(stmt: str, number: int, ns: dict[str, object]) -> float:
    timer = timeit.Timer(stmt, globals=ns)
    return min(timer.repeat(repeat=5, number=number)) / number * 1e9


class _Subscriber:
    async def subscribe(self, *channels: str) -> None:
        return None

    async def unsubscribe(self, *channels: str) -> None:
        return None


class _Socket:
    heard = 0.0
    writable = True

    def write_text(self, payload: bytes) -> bool:
        return True

    def close_now(self, code: int, reason: str) -> None:
        return None


class _Spans:
    def span(self, name: str, attributes: dict[str, Any] | None = None) -> Any:
        return telemetry.span(name, attributes)

    def child_of(self, traceparent: bytes, name: str, attributes: dict[str, Any] | None = None) -> Any:
        return telemetry.child_of(traceparent, name, attributes)


def _hub(spans: Any) -> Any:
    """A hub with one socket of user ``u`` (fakes for Redis and the socket)."""
    from query_api.config import NoSpans
    from query_api.connection import Connection
    from query_api.hub import Hub

    async def groups_of(user_id: str) -> set[str]:
        return set()

    async def build() -> Hub:
        hub = Hub(_Subscriber(), groups_of, shards=1, spans=spans or NoSpans())  # type: ignore[arg-type]
        await hub.start()
        await hub.register(Connection("u", "d", _Socket(), queue_size=10))
        return hub

    return asyncio.run(build())


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
    plain = MESSAGE + message_frame(b'{"message_id":"1","ts":1}')
    ns.update(hub=_hub(None), plain=plain)
    leg_off = per_call_ns("hub.deliver_to_user('u', plain)", args.number, ns)
    with tempfile.TemporaryDirectory() as folder:
        telemetry.configure(Settings(tracing="file", tracing_file=Path(folder) / "spans.jsonl"), "bench")
        from opentelemetry.propagate import inject

        carrier: dict[str, str] = {}
        with telemetry.span("deliver.push"):
            inject(carrier)
        parent = carrier["traceparent"]
        ns.update(hub=_hub(_Spans()), wrapped=traced(parent, plain))
        leg_on = per_call_ns("hub.deliver_to_user('u', wrapped)", max(args.number // 20, 1000), ns)
        telemetry.configure(Settings(tracing="off"), "bench")
    calib = min(timeit.Timer("sum(range(1000))").repeat(repeat=5, number=10_000)) / 10_000 * 1e6
    print(f"tracing_overhead  calibration sum(range(1000)) {calib:.1f} µs")
    print(f"off: {off - baseline:.0f} ns per message (span() + with on the shared no-op; no span objects)")
    print(f"on (file exporter, 2 spans + traceparent injection): {on / 1000:.1f} µs per message")
    print(f"receiver leg off: {leg_off:.0f} ns per payload routed to one socket (plain payload, no span)")
    print(f"receiver leg on (file exporter, gateway.deliver span): {leg_on / 1000:.1f} µs per payload")
    if args.json:
        summary = (
            f"off {off - baseline:.0f} ns/message, on {on / 1000:.0f} µs/message (file exporter); "
            f"receiver leg off {leg_off:.0f} ns, on {leg_on / 1000:.0f} µs"
        )
        figures = {
            "off_ns": round(off - baseline),
            "on_us": round(on / 1000, 1),
            "leg_off_ns": round(leg_off),
            "leg_on_us": round(leg_on / 1000, 1),
            "calibration_us": calib,
        }
        print(json.dumps({**figures, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
