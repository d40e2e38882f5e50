"""Open-loop 1:1 load generator over real WebSockets (benchmark ``e2e-1to1``).

``--pairs`` user pairs, each user one socket. In pair ``i`` user ``a`` sends to user ``b`` in
``dm:<a>:<b>`` on an intended-send schedule (constant, or Poisson with ``--poisson``), at that
time regardless of replies (wrk2-style open loop, no coordinated omission). Latencies are taken
from the *intended* send time with ``time.monotonic_ns()`` in the process that owns both sockets
of the pair:

- send->deliver: the ``message`` frame arrives at the other user's socket;
- send->ack: the ``ack`` frame arrives at the sender's socket;
- generator lag: actual send - intended send (self-check: the run is INVALID when its P99 > 5 ms,
  or when a generator process used > 90 % of a core).

Only messages whose intended send time falls after ``--warmup`` go into the histograms and the
counts; warm-up messages are sent the same way. After the run the generator waits up to 10 s for
stragglers; a measured message still not delivered then, with no error frame, is looked for in
its conversation's history (``GET /v1/conversations/{cid}/messages``, by ``client_msg_id``, for up
to ``--history-wait`` s): found, it was late; missing, and acked, it was lost.

With ``--processes N`` the pairs are spread over N processes (spawned) whose hdrhistograms are
merged with ``encode()`` / ``decode_and_add()``. ``--url`` may list several gateways
(comma-separated): each user connects to one by a hash of its id (``bench.scaling``).

Run it from the repository against a running gateway and worker::

    .venv/bin/python -m bench.e2e_1to1 --rate 500 --duration 30 --warmup 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing as mp
import os
import queue
import random
import sys
import time
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import orjson
import websockets
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import ClientConnection

from bench.common import (
    LOOPBACK_HOSTS,
    cpu_calibration_us,
    cpu_seconds,
    fmt,
    machine_busy_jiffies,
    machine_facts,
    new_hist,
    percentiles_ms,
    proc_cpu_delta,
    proc_cpu_ticks,
    record_us,
    split,
)
from query_api.auth import issue_token

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a project dependency
    uvloop = None

STRAGGLER_WAIT_S = 10.0
HISTORY_WAIT_S = 60.0  # how long a message missing its push is looked for in history
HISTORY_PAGE = 100  # the protocol's largest page
LAG_P99_LIMIT_MS = 5.0
GENERATOR_CPU_LIMIT_PCT = 90.0
CONNECT_CONCURRENCY = 20
ERROR_SAMPLES = 5


@dataclass(frozen=True)
class ProcConfig:
    """What one generator process runs (picklable, for spawned processes)."""

    index: int
    url: str
    secret: str
    run_id: str
    pairs: int
    rate: float  # this process's msgs/s, split evenly over its pairs
    warmup_s: float
    duration_s: float
    body_bytes: int
    poisson: bool
    seed: int
    sample_proc_cpu: bool
    history_wait_s: float = HISTORY_WAIT_S


class Pending:
    __slots__ = ("acked", "cid", "delivered", "failed", "intended_ns", "measured")

    def __init__(self, intended_ns: int, measured: bool, cid: str = "") -> None:
        self.intended_ns = intended_ns
        self.measured = measured
        self.cid = cid
        self.acked = False
        self.delivered = False
        self.failed = False


@dataclass
class State:
    pending: dict[str, Pending] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    deliver: HdrHistogram = field(default_factory=new_hist)
    ack: HdrHistogram = field(default_factory=new_hist)
    lag: HdrHistogram = field(default_factory=new_hist)
    error_samples: list[str] = field(default_factory=list)
    # Per second of intended send time (from the end of warm-up): the worst send->deliver (µs).
    worst_by_second: dict[int, int] = field(default_factory=dict)
    warm_end: int = 0
    closing: bool = False

    def sample(self, text: str) -> None:
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(text[:300])


# ---------------------------------------------------------------- machine facts and CPU sampling


# ---------------------------------------------------------------- one generator process


def dm_id(a: str, b: str) -> str:
    x, y = sorted((a, b))  # plain code-point order, as the protocol says
    return f"dm:{x}:{y}"


async def _reader(ws: ClientConnection, user: str, state: State) -> None:
    pending, counts = state.pending, state.counts
    seen: set[int] = set()
    last_by_conv: dict[str, int] = {}
    try:
        async for raw in ws:
            now = time.monotonic_ns()
            frame = orjson.loads(raw)
            kind = frame.get("type")
            if kind == "message":
                msg = frame["message"]
                if msg.get("sender_id") == user:
                    counts["own_echo"] += 1  # the sender's own socket gets its message too
                    continue
                mid = int(msg["message_id"])
                if mid in seen:
                    counts["dup"] += 1
                    continue
                seen.add(mid)
                cid = msg["conversation_id"]
                if mid < last_by_conv.get(cid, 0):
                    counts["order_violations"] += 1
                else:
                    last_by_conv[cid] = mid
                p = pending.get(msg.get("client_msg_id", ""))
                if p is None:
                    counts["unknown_message"] += 1
                    continue
                if p.delivered:
                    counts["dup"] += 1  # same client_msg_id delivered under a second message_id
                    continue
                p.delivered = True
                counts["delivered_all"] += 1
                if p.measured:
                    if p.failed:
                        counts["error_then_delivered"] += 1  # refused with an error, delivered anyway
                    counts["delivered"] += 1
                    latency_ns = now - p.intended_ns
                    record_us(state.deliver, latency_ns)
                    second = (p.intended_ns - state.warm_end) // 1_000_000_000
                    if latency_ns > state.worst_by_second.get(second, 0):
                        state.worst_by_second[second] = latency_ns
            elif kind == "ack":
                p = pending.get(frame.get("client_msg_id", ""))
                if p is None or p.acked:
                    counts["dup_ack" if p else "unknown_ack"] += 1
                    continue
                p.acked = True
                counts["acked_all"] += 1
                if p.measured:
                    counts["acked"] += 1
                    record_us(state.ack, now - p.intended_ns)
            elif kind == "error":
                counts["errors"] += 1
                state.sample(f"error frame: {raw!s}")
                p = pending.get(frame.get("ref") or "")
                if p is not None:
                    p.failed = True
            else:
                counts[f"frame_{kind}"] += 1
    except websockets.ConnectionClosed as exc:
        if not state.closing:
            counts["closed_early"] += 1
            state.sample(f"{user}: connection closed early: {exc}")


async def _sender(
    ws: ClientConnection,
    cid: str,
    pair: int,
    cfg: ProcConfig,
    state: State,
    t0: int,
    warm_end: int,
    end: int,
    per_pair_rate: float,
) -> None:
    rng = random.Random(cfg.seed * 1_000_003 + cfg.index * 10_007 + pair)
    interval_ns = 1e9 / per_pair_rate
    body = "x" * cfg.body_bytes
    prefix = f"{cfg.run_id}-{cfg.index}-{pair}-"
    if cfg.poisson:
        t = t0 + rng.expovariate(per_pair_rate) * 1e9
    else:  # pairs staggered so that the process's sends are evenly spaced
        t = t0 + interval_ns * pair / cfg.pairs
    seq = 0
    pending, counts = state.pending, state.counts
    while t < end:
        intended = int(t)
        delay = intended - time.monotonic_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        actual = time.monotonic_ns()
        measured = intended >= warm_end
        cmid = f"{prefix}{seq}"
        pending[cmid] = Pending(intended, measured, cid)
        frame = orjson.dumps(
            {
                "type": "send",
                "ref": cmid,
                "client_msg_id": cmid,
                "conversation_id": cid,
                "kind": "text",
                "body": body,
            }
        ).decode()
        try:
            await ws.send(frame)
        except websockets.ConnectionClosed as exc:
            counts["send_failed"] += 1
            pending[cmid].failed = True
            state.sample(f"send on closed socket: {exc}")
            return
        counts["sent_all"] += 1
        if measured:
            counts["sent"] += 1
            record_us(state.lag, actual - intended)
        seq += 1
        t += rng.expovariate(per_pair_rate) * 1e9 if cfg.poisson else interval_ns


# (conversation_id, after) -> (that page's messages, has_more)
HistoryPage = Callable[[str, int], Awaitable[tuple[list[dict[str, Any]], bool]]]


async def find_in_history(
    wanted: dict[str, set[str]],
    page: HistoryPage,
    *,
    wait_s: float,
    pause_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[set[str], set[str]]:
    """Which of ``wanted`` (conversation_id -> client_msg_ids) are in their conversation's
    history, and which could not be looked for: those of a conversation whose last read
    failed (an HTTP error, a timeout). A conversation is read whole, oldest first (``after``),
    and read again every ``pause_s`` while some of its messages are missing, until ``wait_s``
    has passed: after an overload the projections may still be working through a backlog,
    and a message that is stored late was late, not lost."""
    found: set[str] = set()
    left = {cid: set(ids) for cid, ids in wanted.items() if ids}
    failed: set[str] = set()
    deadline = clock() + wait_s
    while left:
        for cid in list(left):
            missing, after = left[cid], 0
            try:
                while missing:
                    messages, more = await page(cid, after)
                    for message in messages:
                        cmid = message.get("client_msg_id")
                        if cmid in missing:
                            missing.discard(cmid)
                            found.add(cmid)
                    if not more or not messages:
                        break
                    after = int(messages[-1]["message_id"])
            except (OSError, ValueError, KeyError):  # urllib's errors are OSErrors
                failed.add(cid)
                continue
            failed.discard(cid)
            if not missing:
                del left[cid]
        if not left or clock() >= deadline:
            break
        await sleep(pause_s)
    return found, {cmid for cid in failed if cid in left for cmid in left[cid]}


def _history_reader(ws_url: str, secret: str, members: dict[str, str]) -> HistoryPage:
    """Pages of history over HTTP from the gateway at ``ws_url``, as a member of each
    conversation (``members``: conversation_id -> a member's user id)."""
    parts = urlsplit(ws_url)
    base = f"http://{parts.netloc}/v1/conversations"
    tokens = {cid: issue_token(secret, user, ttl_s=3600) for cid, user in members.items()}

    def get(cid: str, after: int) -> tuple[list[dict[str, Any]], bool]:
        req = urllib.request.Request(
            f"{base}/{cid}/messages?after={after}&limit={HISTORY_PAGE}",
            headers={"Authorization": f"Bearer {tokens[cid]}"},
        )
        with urllib.request.urlopen(req, timeout=30) as reply:
            body = orjson.loads(reply.read())
        return body["messages"], bool(body["has_more"])

    async def page(cid: str, after: int) -> tuple[list[dict[str, Any]], bool]:
        return await asyncio.to_thread(get, cid, after)

    return page


def late_or_lost(pending: Iterable[tuple[str, Pending]]) -> dict[str, set[str]]:
    """The measured messages neither delivered nor refused ("late or lost"), by conversation."""
    out: dict[str, set[str]] = {}
    for cmid, p in pending:
        if p.measured and not p.delivered and not p.failed:
            out.setdefault(p.cid, set()).add(cmid)
    return out


async def _connect(url: str, token: str) -> ClientConnection:
    return await websockets.connect(
        f"{url}?token={token}",
        compression=None,
        max_size=2**20,
        max_queue=1024,
        open_timeout=30,
        ping_interval=20,
        ping_timeout=60,
        proxy=None,
    )


async def run_process(cfg: ProcConfig, wait_start: Callable[[], None] | None) -> dict[str, Any]:
    state = State()
    ttl = int(cfg.warmup_s + cfg.duration_s + STRAGGLER_WAIT_S + 600)
    users = [(f"b{cfg.run_id}p{cfg.index}n{i}a", f"b{cfg.run_id}p{cfg.index}n{i}b") for i in range(cfg.pairs)]
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    urls = cfg.url.split(",")

    async def connect(user: str) -> ClientConnection:
        # Several gateways: each user on one by a hash of the user id, as HAProxy's
        # consistent hash places them, so most pairs cross gateways.
        url = urls[zlib.crc32(user.encode()) % len(urls)]
        async with sem:
            return await _connect(url, issue_token(cfg.secret, user, ttl_s=ttl))

    socks = await asyncio.gather(*(connect(u) for pair in users for u in pair))
    readers = [
        asyncio.create_task(_reader(ws, u, state))
        for ws, u in zip(socks, (u for pair in users for u in pair), strict=True)
    ]
    if wait_start is not None:
        await asyncio.to_thread(wait_start)

    t0 = time.monotonic_ns() + 200_000_000
    warm_end = t0 + int(cfg.warmup_s * 1e9)
    end = warm_end + int(cfg.duration_s * 1e9)
    state.warm_end = warm_end
    marks: dict[str, Any] = {}

    async def mark_window() -> None:
        await asyncio.sleep(max(0.0, (warm_end - time.monotonic_ns()) / 1e9))
        marks["cpu0"], marks["wall0"] = cpu_seconds(), time.monotonic_ns()
        if cfg.sample_proc_cpu:
            marks["jiffies0"], marks["procs0"] = machine_busy_jiffies(), proc_cpu_ticks()
        await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
        marks["cpu1"], marks["wall1"] = cpu_seconds(), time.monotonic_ns()
        if cfg.sample_proc_cpu:
            marks["jiffies1"], marks["procs1"] = machine_busy_jiffies(), proc_cpu_ticks()

    marker = asyncio.create_task(mark_window())
    per_pair_rate = cfg.rate / cfg.pairs
    senders = [
        _sender(socks[2 * i], dm_id(a, b), i, cfg, state, t0, warm_end, end, per_pair_rate)
        for i, (a, b) in enumerate(users)
    ]
    await asyncio.gather(*senders)
    await marker

    # Stragglers: wait until every send is acked and delivered (or failed), at most 10 s.
    deadline = time.monotonic_ns() + int(STRAGGLER_WAIT_S * 1e9)
    while time.monotonic_ns() < deadline:
        if all(p.failed or (p.acked and p.delivered) for p in state.pending.values()):
            break
        await asyncio.sleep(0.1)
    straggler_wait_s = (time.monotonic_ns() - end) / 1e9

    state.closing = True
    await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    measured = [p for p in state.pending.values() if p.measured]
    counts = state.counts
    counts["not_acked"] = sum(1 for p in measured if not p.acked and not p.failed)
    counts["not_delivered"] = sum(1 for p in measured if not p.delivered)
    # No error frame for it, yet not delivered within the straggler wait: late or lost, as its
    # conversation's history tells.
    wanted = late_or_lost(state.pending.items())
    counts["late_or_lost"] = sum(len(ids) for ids in wanted.values())
    if wanted:
        members = {dm_id(a, b): a for a, b in users}
        page = _history_reader(urls[0], cfg.secret, members)
        stored, unread = await find_in_history(wanted, page, wait_s=cfg.history_wait_s)
        if unread:
            state.sample(f"history of {len(unread)} messages could not be read")
        known = stored | unread
        missing = [state.pending[c] for ids in wanted.values() for c in ids if c not in known]
        counts["late_in_history"] = len(stored)
        counts["history_unread"] = len(unread)
        counts["lost"] = sum(1 for p in missing if p.acked)  # acked: the server promised it
        counts["never_acked_not_stored"] = sum(1 for p in missing if not p.acked)
    counts["refused"] = sum(1 for p in measured if p.failed)
    window_s = (marks["wall1"] - marks["wall0"]) / 1e9
    result: dict[str, Any] = {
        "index": cfg.index,
        "counts": dict(counts),
        "deliver": state.deliver.encode(),
        "ack": state.ack.encode(),
        "lag": state.lag.encode(),
        "window_s": window_s,
        "cpu_pct": (marks["cpu1"] - marks["cpu0"]) / window_s * 100,
        "straggler_wait_s": straggler_wait_s,
        "error_samples": state.error_samples,
        "worst_by_second": state.worst_by_second,
    }
    if cfg.sample_proc_cpu:
        (b0, t0j), (b1, t1j) = marks["jiffies0"], marks["jiffies1"]
        result["machine_busy_pct"] = (b1 - b0) / max(t1j - t0j, 1) * 100
        result["proc_cpu"] = proc_cpu_delta(marks["procs0"], marks["procs1"], window_s)
        hz = os.sysconf("SC_CLK_TCK")
        # Every process's CPU-seconds in the window, none left out (bench.sweep sums by role).
        result["proc_cpu_s"] = {
            pid: round((ticks - marks["procs0"].get(pid, (name, 0))[1]) / hz, 3)
            for pid, (name, ticks) in marks["procs1"].items()
            if ticks != marks["procs0"].get(pid, (name, 0))[1]
        }
    return result


def _run_loop(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def _child(cfg: ProcConfig, barrier: Any, results: Any) -> None:
    try:
        result = _run_loop(run_process(cfg, barrier.wait))
    except BaseException as exc:  # report, never hang the parent
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put((cfg.index, {"fatal": repr(exc)}))
        raise
    results.put((cfg.index, result))


# ---------------------------------------------------------------- parent: split, merge, report


def run_all(args: argparse.Namespace, secret: str) -> list[dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    shares = [n for n in split(args.pairs, args.processes) if n > 0]
    cfgs = [
        ProcConfig(
            index=i,
            url=args.url,
            secret=secret,
            run_id=run_id,
            pairs=n,
            rate=args.rate * n / args.pairs,
            warmup_s=args.warmup,
            duration_s=args.duration,
            body_bytes=args.body_bytes,
            poisson=args.poisson,
            seed=args.seed,
            sample_proc_cpu=i == 0,
            history_wait_s=args.history_wait,
        )
        for i, n in enumerate(shares)
    ]
    if len(cfgs) == 1:
        return [_run_loop(run_process(cfgs[0], None))]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(cfgs))
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(c, barrier, results), daemon=True) for c in cfgs]
    for p in procs:
        p.start()
    out: dict[int, dict[str, Any]] = {}
    budget = 120 + args.warmup + args.duration + STRAGGLER_WAIT_S + args.history_wait + 30
    deadline = time.monotonic() + budget
    try:
        while len(out) < len(cfgs):
            try:
                index, result = results.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty as exc:
                raise SystemExit("generator processes did not report in time") from exc
            if "fatal" in result:
                raise SystemExit(f"generator process {index} failed: {result['fatal']}")
            out[index] = result
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
    return [out[i] for i in sorted(out)]


def summarize(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    started: dt.datetime,
    calib_us: float,
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
) -> dict[str, Any]:
    deliver, ack, lag = new_hist(), new_hist(), new_hist()
    counts: Counter[str] = Counter()
    samples: list[str] = []
    worst: dict[int, int] = {}
    for r in results:
        for second, ns in r["worst_by_second"].items():
            worst[second] = max(worst.get(second, 0), ns)
        deliver.decode_and_add(r["deliver"])
        ack.decode_and_add(r["ack"])
        lag.decode_and_add(r["lag"])
        counts.update(r["counts"])
        samples.extend(r["error_samples"])
    window_s = max(r["window_s"] for r in results)
    cpu_pcts = [r["cpu_pct"] for r in results]
    sent = counts["sent"]
    lag_ms = percentiles_ms(lag, (50, 99))
    lag_p99 = lag_ms["p99"] or 0.0
    reasons = []
    if lag_p99 > LAG_P99_LIMIT_MS:
        reasons.append(f"generator lag P99 {lag_p99:.1f} ms > {LAG_P99_LIMIT_MS:g} ms")
    if max(cpu_pcts) > GENERATOR_CPU_LIMIT_PCT:
        reasons.append(f"generator CPU {max(cpu_pcts):.0f}% > {GENERATOR_CPU_LIMIT_PCT:g}% of a core")
    if sent == 0:
        reasons.append("nothing sent in the measured window")
    figures: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            **machine_facts(calib_us),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "config": {
            "rate": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "pairs": args.pairs,
            "processes": len(results),
            "body_bytes": args.body_bytes,
            "schedule": "poisson" if args.poisson else "constant",
            "url": args.url,
            "loop": "uvloop" if uvloop is not None else "asyncio",
            "history_wait_s": args.history_wait,
        },
        "window_s": round(window_s, 3),
        "achieved_rate": round(sent / window_s, 1) if window_s else 0.0,
        "sent": sent,
        "acked": counts["acked"],
        "delivered": counts["delivered"],
        "delivered_ratio": round(counts["delivered"] / sent, 6) if sent else None,
        "errors": counts["errors"] + counts["send_failed"] + counts["closed_early"],
        "refused": counts["refused"],
        "refused_then_delivered": counts["error_then_delivered"],
        "late_or_lost": counts["late_or_lost"],
        "late_in_history": counts["late_in_history"],
        "lost": counts["lost"],
        "never_acked_not_stored": counts["never_acked_not_stored"],
        "history_unread": counts["history_unread"],
        "duplicates": counts["dup"],
        "order_violations": counts["order_violations"],
        "counts": dict(sorted(counts.items())),
        "send_deliver_ms": percentiles_ms(deliver, (50, 90, 95, 99, 99.9)),
        "send_ack_ms": percentiles_ms(ack, (50, 90, 95, 99, 99.9)),
        "lag_ms": lag_ms,
        "worst_deliver_ms_by_second": [round(worst[k] / 1e6) for k in sorted(worst)],
        "generator_cpu_pct": [round(c, 1) for c in cpu_pcts],
        "straggler_wait_s": round(max(r["straggler_wait_s"] for r in results), 2),
        "valid": not reasons,
        "invalid_reasons": reasons,
        "error_samples": samples[:ERROR_SAMPLES],
    }
    if "machine_busy_pct" in results[0]:
        figures["machine_busy_pct"] = round(results[0]["machine_busy_pct"], 1)
        figures["proc_cpu_pct"] = [
            {"pid": pid, "name": name, "cpu_pct": pct} for pid, name, pct in results[0]["proc_cpu"]
        ]
        figures["proc_cpu_s"] = results[0]["proc_cpu_s"]
    return figures


def report(f: dict[str, Any]) -> None:
    m, c, n = f["machine"], f["config"], f["counts"]
    sent = f["sent"]
    load = " ".join(map(str, m["loadavg_before"])) + " -> " + " ".join(map(str, m["loadavg_after"]))
    ratio = f" ({100 * f['delivered'] / sent:.3f}%)" if sent else ""
    lines = [
        f"e2e_1to1  {f['date']}  {m['nproc']} CPUs  {m['cpu_model']}  {m['mem_gib']} GiB  "
        f"calibration sum(range(1000)) {m['cpu_calibration_us']} µs  load {load}",
        f"config    rate {c['rate']:g}/s {c['schedule']}  warmup {c['warmup_s']:g} s  "
        f"duration {c['duration_s']:g} s  pairs {c['pairs']}  processes {c['processes']}  "
        f"body {c['body_bytes']} B  {c['loop']}  {c['url']}",
        f"sent      {sent} in {f['window_s']:.1f} s = {f['achieved_rate']} msgs/s;  "
        f"acked {f['acked']};  delivered {f['delivered']}/{sent}{ratio}",
        f"errors    {f['errors']}  (error frames {n.get('errors', 0)}, "
        f"send failed {n.get('send_failed', 0)}, "
        f"closed early {n.get('closed_early', 0)});  duplicates {f['duplicates']};  "
        f"order violations {f['order_violations']};  not acked {n.get('not_acked', 0)};  "
        f"not delivered {n.get('not_delivered', 0)};  straggler wait {f['straggler_wait_s']} s",
        f"outcome   refused with an error {f['refused']} (of which delivered anyway "
        f"{f['refused_then_delivered']});  no error but not delivered within the wait "
        f"(late or lost) {f['late_or_lost']}",
        f"history   of those, found in their conversation's history within {c['history_wait_s']:g} s "
        f"(late) {f['late_in_history']};  acked and missing (LOST) {f['lost']};  "
        f"never acked and not stored {f['never_acked_not_stored']};  "
        f"history unreadable {f['history_unread']}",
        f"send->deliver ms  {fmt(f['send_deliver_ms'])}",
        f"send->ack ms      {fmt(f['send_ack_ms'])}",
        "worst send->deliver ms per second of the window: "
        + " ".join(str(x) for x in f["worst_deliver_ms_by_second"]),
        f"generator lag ms  {fmt(f['lag_ms'])};  generator CPU "
        + " + ".join(f"{x:.1f}%" for x in f["generator_cpu_pct"])
        + " of a core",
    ]
    if "machine_busy_pct" in f:
        busy = f["machine_busy_pct"]
        lines.append(f"machine   {busy}% of all CPUs busy over the window; per process (% of a core):")
        lines.extend(f"          {p['cpu_pct']:6.1f}  {p['name']} [{p['pid']}]" for p in f["proc_cpu_pct"])
    lines.extend(f"sample    {s}" for s in f["error_samples"])
    lines.append("VALID" if f["valid"] else "INVALID: " + "; ".join(f["invalid_reasons"]))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=500, help="msgs/s over all pairs (default 500)")
    ap.add_argument("--duration", type=float, default=30, help="measured seconds (default 30)")
    ap.add_argument("--warmup", type=float, default=5, help="warm-up seconds, not measured (default 5)")
    ap.add_argument("--pairs", type=int, default=100, help="user pairs, one socket per user (default 100)")
    ap.add_argument(
        "--url", default="ws://127.0.0.1:8787/v1/ws", help="several gateways: comma-separated (users by hash)"
    )
    ap.add_argument("--secret", default=None, help="JWT secret (default: the one `tidings up` uses)")
    ap.add_argument("--processes", type=int, default=1, help="generator processes (default 1)")
    ap.add_argument("--body-bytes", type=int, default=200, help="text body size (default 200)")
    ap.add_argument("--poisson", action="store_true", help="Poisson arrivals instead of constant rate")
    ap.add_argument("--seed", type=int, default=1, help="seed of the Poisson schedules")
    ap.add_argument(
        "--history-wait",
        type=float,
        default=HISTORY_WAIT_S,
        help=f"seconds to look for undelivered messages in history (default {HISTORY_WAIT_S:g})",
    )
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.pairs < 1 or args.processes < 1:
        ap.error("rate, duration and pairs must be positive, warmup >= 0, processes >= 1")
    if args.history_wait < 0:
        ap.error("--history-wait must be >= 0")
    if not 1 <= args.body_bytes <= 4000:
        ap.error("--body-bytes must be 1..4000 (the protocol's body limit)")
    if any(urlsplit(url).hostname not in LOOPBACK_HOSTS for url in args.url.split(",")):
        ap.error("--url must point at 127.0.0.1 (this generator only loads a local gateway)")
    secret = args.secret
    if secret is None:
        from tidings.settings import Settings

        secret = Settings().resolved_auth_secret()

    started = dt.datetime.now(dt.UTC)
    calib_us = cpu_calibration_us()
    load_before = os.getloadavg()
    results = run_all(args, secret)
    figures = summarize(args, results, started, calib_us, load_before, os.getloadavg())
    report(figures)
    if args.json:
        print(orjson.dumps(figures).decode())
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
