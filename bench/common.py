"""What the benchmark scripts share: histograms, machine facts, CPU accounting from /proc,
file limits and loopback source addresses, and the event loop they run on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import platform
import resource
import time
import timeit
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from types import ModuleType
from typing import Any

from hdrh.histogram import HdrHistogram
from redis.asyncio import Redis

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a project dependency
    uvloop = None

HIST_MAX_US = 60_000_000
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SOURCE_ADDRESSES = tuple(f"127.0.0.{i}" for i in range(1, 9))


def new_hist() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


def record_us(hist: HdrHistogram, delta_ns: int) -> None:
    hist.record_value(min(max(delta_ns // 1000, 1), HIST_MAX_US))


def percentiles_ms(hist: HdrHistogram, pcts: tuple[float, ...]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    empty = hist.get_total_count() == 0
    for p in pcts:
        out[f"p{p:g}"] = None if empty else hist.get_value_at_percentile(p) / 1000
    out["max"] = None if empty else hist.get_max_value() / 1000
    return out


def fmt(values: dict[str, float | None]) -> str:
    return "  ".join(f"{k.upper()} {'-' if v is None else f'{v:.1f}'}" for k, v in values.items())


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def cpu_calibration_us() -> float:
    """Best of 5 of ``sum(range(1000))``, as ``python -m timeit`` reports it (µs per loop)."""
    timer = timeit.Timer("sum(range(1000))")
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def machine_facts(calibration_us: float | None = None) -> dict[str, Any]:
    """What every report says about the machine it ran on (``calibration_us``: one already
    measured, else measured now)."""
    if calibration_us is None:
        calibration_us = cpu_calibration_us()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "mem_gib": round(mem_total_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_calibration_us": round(calibration_us, 1),
    }


@contextlib.asynccontextmanager
async def scratch_redis(db: int) -> AsyncIterator[Redis]:
    """A client of the configured Redis on database ``db``, emptied before and after."""
    from projections.adapters.redis_client import make_redis
    from tidings.settings import Settings

    settings = Settings()
    redis = make_redis(settings.redis_host, settings.redis_port, db)
    await redis.flushdb()
    try:
        yield redis
    finally:
        await redis.flushdb()
        await redis.aclose()


def machine_line() -> str:
    """The machine part of a micro-benchmark's first line: CPU, calibration, load."""
    return f"{cpu_model()}, sum(range(1000)) {cpu_calibration_us():.0f} µs, load {os.getloadavg()[0]:.1f}"


async def per_slice_size(
    items: Sequence[Any], sizes: Sequence[int], apply: Callable[[Sequence[Any]], Awaitable[Any]]
) -> list[tuple[int, float, float]]:
    """For each size, ``apply`` every item in slices of that size, one after the other:
    ``(size, items per second, client CPU µs per item)``."""
    results = []
    for size in sizes:
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(items), size):
            await apply(items[i : i + size])
        wall, used = time.perf_counter() - started, time.process_time() - cpu
        results.append((size, len(items) / wall, used / len(items) * 1e6))
    return results


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def _proc_name(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not args:
        return "?"
    joined = " ".join(args)
    if "kafka.Kafka" in joined:
        return "kafka (java)"
    if "CassandraDaemon" in joined:
        return "cassandra (java)"
    if "redis-server" in args[0]:
        return "redis-server"
    if "-m" in args:
        i = args.index("-m")
        return " ".join(args[i + 1 : i + 3])
    if "multiprocessing.spawn" in joined:  # a spawned child: name it after its parent
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            return "python (mp child)"
        return f"{_proc_name(ppid)} (child)"
    return " ".join(os.path.basename(a) for a in args[:3])[:60]


def proc_cpu_ticks() -> dict[str, tuple[str, int]]:
    """pid -> (name, utime+stime ticks) of every process."""
    out: dict[str, tuple[str, int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        out[pid] = (_proc_name(pid), int(rest[11]) + int(rest[12]))
    return out


def proc_cpu_delta(
    before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]], seconds: float
) -> list[tuple[str, str, float]]:
    """(pid, name, % of one core) over the window, busiest first, top 12."""
    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    for pid, (name, ticks) in after.items():
        # A process born during the window counts from 0; one that died during it is missed.
        pct = (ticks - before.get(pid, (name, 0))[1]) / hz / seconds * 100
        if pct >= 0.5:
            rows.append((pid, name if pid in before else f"{name} (new)", round(pct, 1)))
    return sorted(rows, key=lambda r: -r[2])[:12]


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return int(soft)


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this host (a full accept queue: the SYN is dropped and retried)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def descendants(pids: set[int]) -> set[int]:
    """The given pids and all their descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return out


def pid_ticks(pids: set[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = int(rest[11]) + int(rest[12])
    return out


def timeline_pct(samples: list[tuple[float, dict[int, int]]]) -> dict[int, list[int]]:
    """pid -> % of one core in each interval between samples."""
    hz = os.sysconf("SC_CLK_TCK")
    out: dict[int, list[int]] = {}
    for (t0, a), (t1, b) in itertools.pairwise(samples):
        for pid, ticks in b.items():
            if pid in a:
                out.setdefault(pid, []).append(round((ticks - a[pid]) / hz / max(t1 - t0, 1e-3) * 100))
    return out


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)
