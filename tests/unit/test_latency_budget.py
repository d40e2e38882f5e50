"""bench.latency_budget: the hops of one send's trace from its spans' times."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.latency_budget import budget, hops


def _span(trace: str, name: str, start_ms: float, end_ms: float, role: str | None = None) -> dict:
    def stamp(ms: float) -> str:
        seconds, rest = divmod(ms, 1000)
        return f"2026-12-06T18:00:{int(seconds):02d}.{int(rest * 1000):06d}Z"

    return {
        "name": name,
        "context": {"trace_id": trace},
        "start_time": stamp(start_ms),
        "end_time": stamp(end_ms),
        "attributes": {"tidings.role": role} if role else {},
    }


def _trace(trace: str, shift: float = 0.0) -> list[dict]:
    return [
        _span(trace, "gateway.send", 0 + shift, 9 + shift),
        _span(trace, "kafka.append", 2 + shift, 7 + shift),
        _span(trace, "worker.consume", 10 + shift, 14 + shift, role="deliver"),
        _span(trace, "deliver.push", 11 + shift, 13 + shift),
        _span(trace, "worker.consume", 30 + shift, 50 + shift, role="persist"),
        _span(trace, "project.persist", 31 + shift, 45 + shift),
    ]


def test_the_hops_of_one_trace() -> None:
    got = hops(_trace("t1"))
    assert got is not None
    assert {k: round(v, 3) for k, v in got.items()} == {
        "gateway before append": 2.0,
        "kafka append (acks=all)": 5.0,
        "gateway after append": 2.0,
        "kafka -> deliver agent": 3.0,
        "agent before push": 1.0,
        "deliver.push (Redis)": 2.0,
        "server total": 13.0,
        "kafka -> persist agent": 23.0,
        "project.persist (Cassandra)": 14.0,
    }


def test_a_trace_missing_the_deliver_side_is_left_out(tmp_path: Path) -> None:
    incomplete = [s for s in _trace("t2") if s["name"] != "deliver.push"]
    assert hops(incomplete) is None
    path = tmp_path / "spans.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(s) for s in [*_trace("t1"), *incomplete, *_trace("t3", 1)]))
    found = budget(path)
    assert found["server total"] == {"n": 2, "p50": 13.0, "p90": 13.0, "p99": 13.0}
