"""bench.faust_consumer's figures: Kafka's threads summed by name, and the latency quantiles."""

from __future__ import annotations

import os

import pytest

from bench import faust_consumer as fc


def test_threads_are_summed_by_name_without_their_index_and_with_the_jvm_names() -> None:
    hz = os.sysconf("SC_CLK_TCK")
    before = {
        "10": ("data-plane-kafk", 100, 50),
        "11": ("data-plane-kafk", 200, 70),
        "12": ("data-plane-kafk", 0, 0),
    }
    after = {
        "10": ("data-plane-kafk", 100 + hz, 60),
        "11": ("data-plane-kafk", 200 + 2 * hz, 75),
        "12": ("data-plane-kafk", hz, 9),
        "13": ("GC Thread#0", hz // 2, 4),  # started in between: counted from 0
    }
    names = {
        "10": "data-plane-kafka-request-handler-0",
        "11": "data-plane-kafka-request-handler-1",
        "12": "data-plane-kafka-network-thread-1-PLAINTEXT-PLAINTEXT-0",
    }
    got = fc._by_name(before, after, names)
    assert got["data-plane-kafka-request-handler"] == [pytest.approx(3.0), 15]
    assert got["data-plane-kafka-network-thread-1-PLAINTEXT-PLAINTEXT"] == [pytest.approx(1.0), 9]
    assert got["GC Thread"] == [pytest.approx((hz // 2) / hz), 4]
    assert set(got) == {
        "data-plane-kafka-request-handler",
        "data-plane-kafka-network-thread-1-PLAINTEXT-PLAINTEXT",
        "GC Thread",
    }


def test_threads_of_this_process_are_read_from_proc() -> None:
    snap = fc._threads(os.getpid())
    assert snap, "no thread of this process read"
    name, cpu, switches = next(iter(snap.values()))
    assert name and cpu >= 0 and switches > 0


def test_quantiles() -> None:
    assert fc._quantiles([]) == "-"
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert fc._quantiles(values) == "mean 50.50 P50 51.0 P99 100.0"
