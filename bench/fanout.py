"""Group fan-out benchmark (``fanout-group``): one group, K online members, open-loop sends.

One group of ``--members`` M users (fresh ids per run) is created over HTTP: the owner plus the
first 4,999 others in the create, the rest added 5,000 at a time. ``--online`` K of them (the
owner's ``default`` device first) hold one WebSocket each, spread over ``--processes`` P spawned
client processes (``websockets`` asyncio client, compression off, uvloop, source addresses
127.0.0.1-127.0.0.8, at most ``--connect-concurrency`` handshakes in flight over all processes).

When every process has its sockets open, the parent connects the owner's ``sender`` device,
sends one probe message and waits until every open socket has it (so the worker has caught up
with the membership events and every gateway knows the group's local members), settles for
``--settle`` seconds, then sends ``--messages`` N messages at ``--rate`` per second on a fixed
schedule regardless of replies (open loop). Each body carries the intended send time
(``time.time_ns()``: CLOCK_REALTIME, one clock for every process of this host).

Every client process records, for each ``message`` frame of the group, latency = receive time -
intended send time in an hdrhistogram (µs), and per message the first and last receive (the
last online member to get it). Histograms are merged with ``encode()`` / ``decode_and_add()``.
It ends when all K x N deliveries arrived, or ``--tail`` seconds after the last intended send,
or after 10 s without a new delivery, whichever comes first; an overall budget bounds the run.

Reported: connections opened and the connect ramp, per-message last-member time (P50 and max
over messages), latency over all deliveries, deliveries expected vs received (missing,
duplicates), sustained deliveries/s = received / (last receive - first intended send), CPU of
every generator process, CPU of every process on the machine (from /proc) during the send
phase, machine facts and the ``sum(range(1000))`` calibration.

Run it from the repository against a running gateway and worker::

    .venv/bin/python -m bench.fanout --members 10000 --rate 1 --messages 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import multiprocessing as mp
import os
import queue
import resource
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import websockets
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import ClientConnection

from bench.common import (
    LOOPBACK_HOSTS,
    SOURCE_ADDRESSES,
    cpu_calibration_us,
    cpu_seconds,
    descendants,
    fmt,
    listen_overflows,
    machine_busy_jiffies,
    machine_facts,
    new_hist,
    percentiles_ms,
    pid_ticks,
    proc_cpu_ticks,
    raise_nofile,
    record_us,
    run_loop,
    split,
    timeline_pct,
)
from query_api.auth import issue_token

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a project dependency
    uvloop = None

MAX_USERS_PER_REQUEST = 5000  # the gateway's limit per create or add (docs/protocol.md, Groups)
MAX_CONNS_PER_PROCESS = 9500  # 2-core rule of /work/shared/notes/performance.md §4
PROGRESS_EVERY_S = 0.1
STALL_S = 10.0  # after the last send: stop when no delivery arrived for this long
PROBE_WAIT_S = 120.0
LAG_P99_LIMIT_MS = 5.0
GENERATOR_CPU_LIMIT_PCT = 90.0
ERROR_SAMPLES = 8
HTTP_TIMEOUT_S = 300.0
PROBE_EVERY_S = 1.0
TIMELINE_EVERY_S = 0.5


# ---------------------------------------------------------------- helpers


def body_for(run_id: str, seq: int, intended_ns: int, body_bytes: int) -> str:
    head = f"fanout {run_id} {seq} {intended_ns}"
    return head if len(head) >= body_bytes else head + " " + "x" * (body_bytes - len(head) - 1)


def ws_url(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path if parts.path not in ("", "/") else "/v1/ws"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def http_base(url: str) -> str:
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


async def open_socket(url: str, token: str, source: str) -> ClientConnection:
    # Extra keyword arguments go to loop.create_connection(): local_addr binds the source address.
    return await websockets.connect(
        f"{url}?token={token}",
        compression=None,
        max_size=2**20,
        max_queue=4096,
        open_timeout=60,
        ping_interval=30,  # the client heartbeats (presence); a socket silent for 90 s is closed
        close_timeout=2,
        proxy=None,
        local_addr=(source, 0),
    )


# ---------------------------------------------------------------- one client process


@dataclass(frozen=True)
class ClientConfig:
    """What one client process runs (picklable, for spawned processes)."""

    index: int
    url: str
    secret: str
    run_id: str
    cid: str
    users: tuple[str, ...]
    first_conn: int  # global index of this process's first connection (source address spread)
    connect_concurrency: int
    ttl_s: int
    budget_s: float


@dataclass
class ClientState:
    run_id: str
    cid: str
    received: int = 0
    probe: int = 0
    hist: HdrHistogram = field(default_factory=new_hist)
    # seq -> [deliveries, first receive ns, last receive ns]
    per_seq: dict[int, list[int]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    first_rx_ns: int = 0
    last_rx_ns: int = 0
    closing: bool = False
    # user -> seqs its socket got (the probe included), to name sockets that missed messages
    seen_by_user: dict[str, set[int]] = field(default_factory=dict)

    def sample(self, text: str) -> None:
        if len(self.samples) < ERROR_SAMPLES:
            self.samples.append(text[:300])


def _on_frame(raw: str | bytes, now: int, seen: set[int], st: ClientState) -> None:
    counts = st.counts
    frame = orjson.loads(raw)
    kind = frame.get("type")
    if kind != "message":
        counts[f"frame_{kind}"] += 1
        if kind == "error":
            st.sample(f"error frame: {raw!s}")
        return
    msg = frame["message"]
    if msg.get("conversation_id") != st.cid:
        counts["other_conversation"] += 1
        return
    parts = str(msg.get("body", "")).split(" ", 4)
    if len(parts) < 4 or parts[0] != "fanout" or parts[1] != st.run_id:
        counts["unknown_message"] += 1
        return
    seq = int(parts[2])
    if seq in seen:  # by client_msg_id, so a second message_id for one send counts too
        counts["duplicates"] += 1
        return
    seen.add(seq)
    if seq < 0:  # a probe: count the socket once, at its first probe
        if not any(x < 0 for x in seen if x != seq):
            st.probe += 1
        return
    latency_ns = now - int(parts[3])
    record_us(st.hist, latency_ns)
    st.received += 1
    entry = st.per_seq.get(seq)
    if entry is None:
        st.per_seq[seq] = [1, now, now]
    else:
        entry[0] += 1
        entry[1] = min(entry[1], now)
        entry[2] = max(entry[2], now)
    if not st.first_rx_ns or now < st.first_rx_ns:
        st.first_rx_ns = now
    st.last_rx_ns = max(st.last_rx_ns, now)


async def _client_reader(ws: ClientConnection, user: str, st: ClientState) -> None:
    seen: set[int] = set()
    st.seen_by_user[user] = seen
    try:
        async for raw in ws:
            now = time.time_ns()
            try:
                _on_frame(raw, now, seen, st)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                st.counts["bad_frames"] += 1
                st.sample(f"{user}: unreadable frame ({exc!r}): {raw!s}")
    except websockets.ConnectionClosed as exc:
        if not st.closing:
            st.counts["closed_early"] += 1
            st.sample(f"{user}: connection closed early: {exc!r}")


async def run_client(cfg: ClientConfig, ctl: Any, go: Any, stop: Any) -> dict[str, Any]:
    nofile = raise_nofile()
    deadline = time.monotonic() + cfg.budget_s
    st = ClientState(cfg.run_id, cfg.cid)
    connect_hist = new_hist()
    sem = asyncio.Semaphore(cfg.connect_concurrency)
    t_start = time.monotonic_ns()

    async def connect(j: int, user: str) -> ClientConnection | None:
        source = SOURCE_ADDRESSES[(cfg.first_conn + j) % len(SOURCE_ADDRESSES)]
        token = issue_token(cfg.secret, user, ttl_s=cfg.ttl_s)
        async with sem:
            for attempt in range(3):
                t = time.monotonic_ns()
                try:
                    ws = await open_socket(cfg.url, token, source)
                except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                    st.counts["connect_errors"] += 1
                    st.sample(f"connect {user} from {source} (attempt {attempt + 1}): {exc!r}")
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                record_us(connect_hist, time.monotonic_ns() - t)
                return ws
        return None

    opened = await asyncio.gather(*(connect(j, u) for j, u in enumerate(cfg.users)))
    socks = [ws for ws in opened if ws is not None]
    connect_s = (time.monotonic_ns() - t_start) / 1e9
    readers = [
        asyncio.create_task(_client_reader(ws, u, st))
        for ws, u in zip(opened, cfg.users, strict=True)
        if ws is not None
    ]
    ctl.put(
        (
            "ready",
            cfg.index,
            {
                "opened": len(socks),
                "failed": len(cfg.users) - len(socks),
                "connect_s": connect_s,
                "connect_hist": connect_hist.encode(),
                "nofile": nofile,
            },
        )
    )

    cpu_go = wall_go = cpu_stop = wall_stop = None
    cpu_ready = cpu_seconds()
    last_sent: tuple[int, int, int] = (-1, -1, -1)
    while time.monotonic() < deadline:
        await asyncio.sleep(PROGRESS_EVERY_S)
        if cpu_go is None and go.is_set():
            cpu_go, wall_go = cpu_seconds(), time.monotonic_ns()
        closed = st.counts["closed_early"]
        if (st.received, st.probe, closed) != last_sent:
            last_sent = (st.received, st.probe, closed)
            ctl.put(("progress", cfg.index, last_sent))
        if stop.is_set():
            break
    else:
        st.counts["client_budget_exceeded"] += 1
    cpu_stop, wall_stop = cpu_seconds(), time.monotonic_ns()

    st.closing = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True), timeout=30
        )
    for task in readers:
        if task.done() and not task.cancelled() and task.exception() is not None:
            st.counts["reader_crashed"] += 1  # a socket whose frames stopped being read
            st.sample(f"reader crashed: {task.exception()!r}")
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    # Sockets by how many measured messages they got, and a few users that got fewest.
    measured = {u: sum(1 for x in seen if x >= 0) for u, seen in st.seen_by_user.items()}
    got_counts = Counter(measured.values())
    fewest = min(got_counts, default=0)
    short_users = [u for u, n in measured.items() if n == fewest][:5]
    no_probe = [u for u, seen in st.seen_by_user.items() if not any(x < 0 for x in seen)]
    send_cpu_pct = None
    if cpu_go is not None and wall_go is not None:
        send_cpu_pct = (cpu_stop - cpu_go) / max((wall_stop - wall_go) / 1e9, 1e-9) * 100
    return {
        "index": cfg.index,
        "connections": len(cfg.users),
        "opened": len(socks),
        "connect_s": connect_s,
        "received": st.received,
        "probe": st.probe,
        "hist": st.hist.encode(),
        "per_seq": st.per_seq,
        "counts": dict(st.counts),
        "samples": st.samples,
        "sockets_by_messages": dict(got_counts),
        "fewest_users": short_users,
        "no_probe_users": no_probe[:5],
        "first_rx_ns": st.first_rx_ns,
        "last_rx_ns": st.last_rx_ns,
        "cpu_connect_s": cpu_ready,
        "send_cpu_pct": send_cpu_pct,
        "cpu_total_s": cpu_seconds(),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _client_child(cfg: ClientConfig, ctl: Any, go: Any, stop: Any) -> None:
    try:
        result = run_loop(run_client(cfg, ctl, go, stop))
    except BaseException as exc:  # report, never hang the parent
        ctl.put(("fatal", cfg.index, repr(exc)))
        raise
    ctl.put(("result", cfg.index, result))


# ---------------------------------------------------------------- parent: group, control, sender


class Http:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
                payload = r.read()
                return r.status, orjson.loads(payload) if payload else None
        except urllib.error.HTTPError as err:
            payload = err.read()
            return err.code, orjson.loads(payload) if payload else None


def create_group(http: Http, run_id: str, others: list[str]) -> tuple[str, int, float]:
    """Create the group (owner = the token's user); returns (cid, member_count, seconds)."""
    t = time.monotonic()
    first, rest = others[: MAX_USERS_PER_REQUEST - 1], others[MAX_USERS_PER_REQUEST - 1 :]
    status, body = http.request(
        "POST", "/v1/conversations", {"kind": "group", "title": f"fanout {run_id}", "members": first}
    )
    if status != 201:
        raise SystemExit(f"creating the group failed: {status} {body}")
    cid = str(body["conversation"]["conversation_id"])
    for i in range(0, len(rest), MAX_USERS_PER_REQUEST):
        chunk = rest[i : i + MAX_USERS_PER_REQUEST]
        status, body = http.request("POST", f"/v1/conversations/{cid}/members", {"user_ids": chunk})
        if status != 200 or len(body["members"]) != len(chunk):
            raise SystemExit(f"adding members {i}..{i + len(chunk)} failed: {status} {str(body)[:300]}")
    status, body = http.request("GET", f"/v1/conversations/{cid}")
    if status != 200:
        raise SystemExit(f"reading the group back failed: {status} {body}")
    return cid, int(body["conversation"]["member_count"]), time.monotonic() - t


class Control:
    """Drains the children's control queue in a thread; the parent reads the latest state."""

    def __init__(self, ctl: Any) -> None:
        self._ctl = ctl
        self.ready: dict[int, dict[str, Any]] = {}
        self.progress: dict[int, tuple[int, int, int]] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.fatal: dict[int, str] = {}
        self.last_change = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._done.is_set():
            try:
                kind, index, payload = self._ctl.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "ready":
                self.ready[index] = payload
            elif kind == "progress":
                self.progress[index] = payload
                self.last_change = time.monotonic()
            elif kind == "result":
                self.results[index] = payload
            elif kind == "fatal":
                self.fatal[index] = payload

    def received(self) -> int:
        return sum(p[0] for p in self.progress.values())

    def probe(self) -> int:
        return sum(p[1] for p in self.progress.values())

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)


async def sample_cpu(pids: set[int], into: list[tuple[float, dict[int, int]]]) -> None:
    """Append the CPU ticks of ``pids`` every TIMELINE_EVERY_S until cancelled."""
    while True:
        into.append((time.monotonic(), pid_ticks(pids)))
        await asyncio.sleep(TIMELINE_EVERY_S)


@dataclass
class SendPhase:
    sent: int = 0
    acked: int = 0
    echo: int = 0
    errors: int = 0
    probe_all_s: float | None = None
    probe_count: int = 0
    probes_sent: int = 0
    t0_ns: int = 0
    lag: HdrHistogram = field(default_factory=new_hist)
    ack: HdrHistogram = field(default_factory=new_hist)
    samples: list[str] = field(default_factory=list)
    marks: dict[str, Any] = field(default_factory=dict)
    # (monotonic s, {pid: utime+stime ticks}) every TIMELINE_EVERY_S over the send phase
    timeline: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    stop_reason: str = ""


async def send_phase(
    args: argparse.Namespace,
    ctl: Control,
    go: Any,
    stop: Any,
    *,
    secret: str,
    run_id: str,
    owner: str,
    cid: str,
    opened: int,
    deadline: float,
    timeline_pids: set[int],
) -> SendPhase:
    sp = SendPhase()
    intended: dict[str, int] = {}
    url = ws_url(args.url)
    ws = await open_socket(url, issue_token(secret, owner, device_id="sender", ttl_s=7200), "127.0.0.1")

    async def reader() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                now = time.time_ns()
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "ack":
                    t = intended.get(str(frame.get("client_msg_id")))
                    if t is not None:
                        sp.acked += 1
                        record_us(sp.ack, now - t)
                elif kind == "message":
                    sp.echo += 1
                elif kind == "error":
                    sp.errors += 1
                    if len(sp.samples) < ERROR_SAMPLES:
                        sp.samples.append(f"sender error frame: {raw!s}"[:300])

    reader_task = asyncio.create_task(reader())

    async def send(seq: int, at_ns: int) -> None:
        cmid = f"{run_id}-{seq}"
        if seq >= 0:
            intended[cmid] = at_ns
        frame = {
            "type": "send",
            "ref": cmid,
            "client_msg_id": cmid,
            "conversation_id": cid,
            "kind": "text",
            "body": body_for(run_id, seq, at_ns, args.body_bytes),
        }
        await ws.send(orjson.dumps(frame).decode())

    # Probes (seq -1, -2, ...), one a second, until every open socket got at least one. The
    # gateway answers the upgrade before it registers the socket with its hub, so a socket is
    # "online" for fan-out only once a message reached it; this also waits out the worker's
    # backlog of membership events.
    t = time.monotonic()
    probe_deadline = min(t + PROBE_WAIT_S, deadline)
    for n in range(int(PROBE_WAIT_S / PROBE_EVERY_S) + 1):
        await send(-1 - n, time.time_ns())
        sp.probes_sent += 1
        for _ in range(int(PROBE_EVERY_S / 0.05)):
            if ctl.probe() >= opened:
                break
            await asyncio.sleep(0.05)
        if ctl.probe() >= opened or time.monotonic() > probe_deadline:
            break
    sp.probe_count = ctl.probe()
    if sp.probe_count >= opened:
        sp.probe_all_s = time.monotonic() - t
    await asyncio.sleep(args.settle)

    sp.marks["jiffies0"], sp.marks["procs0"] = machine_busy_jiffies(), proc_cpu_ticks()
    sp.marks["cpu0"], sp.marks["wall0"] = cpu_seconds(), time.monotonic_ns()
    go.set()
    sampler = asyncio.create_task(sample_cpu(timeline_pids, sp.timeline))
    interval_ns = 1e9 / args.rate
    sp.t0_ns = t0 = time.time_ns() + 100_000_000
    for seq in range(args.messages):
        at = t0 + int(seq * interval_ns)
        delay = at - time.time_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        record_us(sp.lag, time.time_ns() - at)
        try:
            await send(seq, at)
        except websockets.ConnectionClosed as exc:
            sp.samples.append(f"sender socket closed: {exc!r}")
            break
        sp.sent += 1
    last_send = time.monotonic()

    expected = opened * sp.sent
    while True:
        now = time.monotonic()
        if ctl.received() >= expected and sp.acked >= sp.sent:
            sp.stop_reason = "all delivered"
            break
        if now - last_send > args.tail:
            sp.stop_reason = f"tail of {args.tail:g} s after the last send ran out"
            break
        if now - max(ctl.last_change, last_send) > STALL_S:
            sp.stop_reason = f"no delivery for {STALL_S:g} s"
            break
        if now > deadline:
            sp.stop_reason = "overall budget ran out"
            break
        await asyncio.sleep(0.02)
    sp.marks["cpu1"], sp.marks["wall1"] = cpu_seconds(), time.monotonic_ns()
    sp.marks["jiffies1"], sp.marks["procs1"] = machine_busy_jiffies(), proc_cpu_ticks()
    stop.set()
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), timeout=5)
    reader_task.cancel()
    await asyncio.gather(reader_task, return_exceptions=True)
    return sp


def run(args: argparse.Namespace, secret: str) -> dict[str, Any]:
    raise_nofile()
    run_id = uuid.uuid4().hex[:8]
    owner = f"fo{run_id}"
    members = [owner] + [f"fm{run_id}n{i}" for i in range(1, args.members)]
    http = Http(http_base(args.url), issue_token(secret, owner, ttl_s=7200))
    cid, member_count, setup_s = create_group(http, run_id, members[1:])

    online = members[: args.online]
    shares = [n for n in split(len(online), args.processes) if n > 0]
    conc = split(args.connect_concurrency, len(shares))
    budget = 120 + len(online) / 20 + PROBE_WAIT_S + args.settle + args.messages / args.rate + args.tail + 60
    deadline = time.monotonic() + budget
    cfgs, start = [], 0
    for i, n in enumerate(shares):
        cfgs.append(
            ClientConfig(
                index=i,
                url=ws_url(args.url),
                secret=secret,
                run_id=run_id,
                cid=cid,
                users=tuple(online[start : start + n]),
                first_conn=start,
                connect_concurrency=max(1, conc[i]),
                ttl_s=int(budget) + 600,
                budget_s=budget,
            )
        )
        start += n

    ctx = mp.get_context("spawn")
    ctl_q: Any = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=_client_child, args=(c, ctl_q, go, stop), daemon=True) for c in cfgs]
    ctl = Control(ctl_q)
    t_ramp = time.monotonic()
    overflows0 = listen_overflows()
    try:
        for p in procs:
            p.start()
        ramp_deadline = t_ramp + 120 + len(online) / 20
        while len(ctl.ready) < len(cfgs):
            if ctl.fatal:
                raise SystemExit(f"client process failed: {ctl.fatal}")
            if time.monotonic() > ramp_deadline:
                raise SystemExit(f"only {len(ctl.ready)}/{len(cfgs)} client processes got ready in time")
            time.sleep(0.05)
        ramp_s = time.monotonic() - t_ramp
        overflows = listen_overflows() - overflows0
        opened = sum(r["opened"] for r in ctl.ready.values())
        sp: SendPhase = run_loop(
            send_phase(
                args,
                ctl,
                go,
                stop,
                secret=secret,
                run_id=run_id,
                owner=owner,
                cid=cid,
                opened=opened,
                deadline=deadline,
                timeline_pids=(args.watch_set | {os.getpid()} | {p.pid for p in procs if p.pid is not None}),
            )
        )
        stop.set()
        result_deadline = time.monotonic() + 60
        while len(ctl.results) + len(ctl.fatal) < len(cfgs) and time.monotonic() < result_deadline:
            time.sleep(0.05)
        if ctl.fatal:
            raise SystemExit(f"client process failed: {ctl.fatal}")
        if len(ctl.results) < len(cfgs):
            raise SystemExit(f"only {len(ctl.results)}/{len(cfgs)} client processes reported")
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
        ctl.close()
    return {
        "run_id": run_id,
        "cid": cid,
        "member_count": member_count,
        "setup_s": setup_s,
        "ramp_s": ramp_s,
        "listen_overflows": overflows,
        "ready": ctl.ready,
        "results": [ctl.results[i] for i in sorted(ctl.results)],
        "send": sp,
        "processes": len(cfgs),
        "online": len(online),
        "generator_pids": {os.getpid()} | {p.pid for p in procs if p.pid is not None},
    }


# ---------------------------------------------------------------- summary and report


def proc_table(
    before: dict[str, tuple[str, int]],
    after: dict[str, tuple[str, int]],
    seconds: float,
    watched: set[int],
    generators: set[int],
) -> list[dict[str, Any]]:
    hz = os.sysconf("SC_CLK_TCK")
    rows: list[dict[str, Any]] = []
    for pid, (name, ticks) in after.items():
        pct = (ticks - before.get(pid, (name, 0))[1]) / hz / seconds * 100
        ipid = int(pid)
        if pct >= 0.5 or ipid in watched:
            role = "watched" if ipid in watched else ("generator" if ipid in generators else "")
            rows.append({"pid": ipid, "name": name, "role": role, "cpu_pct": round(pct, 1)})
    return sorted(rows, key=lambda r: -float(r["cpu_pct"]))[:20]


def summarize(
    args: argparse.Namespace,
    out: dict[str, Any],
    started: dt.datetime,
    calib_us: float,
    watched: set[int],
) -> dict[str, Any]:
    sp: SendPhase = out["send"]
    results: list[dict[str, Any]] = out["results"]
    hist, connect_hist = new_hist(), new_hist()
    counts: Counter[str] = Counter()
    per_seq: dict[int, list[int]] = {}
    samples: list[str] = list(sp.samples)
    for r in results:
        hist.decode_and_add(r["hist"])
        counts.update(r["counts"])
        samples.extend(r["samples"])
        for seq, (n, first, last) in r["per_seq"].items():
            e = per_seq.setdefault(seq, [0, first, last])
            e[0] += n
            e[1], e[2] = min(e[1], first), max(e[2], last)
    by_messages: Counter[int] = Counter()
    for r in results:
        by_messages.update({int(n): c for n, c in r["sockets_by_messages"].items()})
    fewest = min(by_messages, default=0)
    fewest_users = [u for r in results for u in r["fewest_users"] if r["sockets_by_messages"].get(fewest)][:5]
    for r in out["ready"].values():
        connect_hist.decode_and_add(r["connect_hist"])
    opened = sum(r["opened"] for r in results)
    received = sum(r["received"] for r in results)
    expected = out["online"] * args.messages
    expected_open = opened * sp.sent
    t0 = sp.t0_ns
    interval_ns = 1e9 / args.rate
    last_member_ms, first_member_ms, incomplete = [], [], 0
    for seq in range(sp.sent):
        got = per_seq.get(seq)
        if got is None:
            incomplete += 1
            continue
        at = t0 + int(seq * interval_ns)
        first_member_ms.append((got[1] - at) / 1e6)
        last_member_ms.append((got[2] - at) / 1e6)
        if got[0] < opened:
            incomplete += 1
    last_rx = max((r["last_rx_ns"] for r in results), default=0)
    span_s = (last_rx - t0) / 1e9 if last_rx > t0 else 0.0
    wall_s = (sp.marks["wall1"] - sp.marks["wall0"]) / 1e9
    b0, j0 = sp.marks["jiffies0"]
    b1, j1 = sp.marks["jiffies1"]
    names = {int(pid): name for pid, (name, _) in sp.marks["procs1"].items()}
    procs = proc_table(sp.marks["procs0"], sp.marks["procs1"], wall_s, watched, out["generator_pids"])
    by_name: Counter[str] = Counter()
    for row in procs:
        by_name[row["name"].removesuffix(" (new)")] += row["cpu_pct"]
    gen_cpu = [r["send_cpu_pct"] for r in results]
    parent_cpu = (sp.marks["cpu1"] - sp.marks["cpu0"]) / wall_s * 100 if wall_s else 0.0
    lag_ms = percentiles_ms(sp.lag, (50, 99))
    reasons = []
    if (lag_ms["p99"] or 0.0) > LAG_P99_LIMIT_MS:
        reasons.append(f"sender lag P99 {lag_ms['p99']:.1f} ms > {LAG_P99_LIMIT_MS:g} ms")
    busiest = max([c or 0.0 for c in gen_cpu] + [parent_cpu])
    if busiest > GENERATOR_CPU_LIMIT_PCT:
        reasons.append(f"a generator process used {busiest:.0f}% > {GENERATOR_CPU_LIMIT_PCT:g}% of a core")
    if sp.probe_all_s is None:
        reasons.append(f"probe reached only {sp.probe_count}/{opened} sockets")

    def pcts(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"p50": None, "max": None}
        s = sorted(values)
        return {"p50": round(s[(len(s) - 1) // 2], 1), "max": round(s[-1], 1)}

    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            **machine_facts(calib_us),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "loop": "uvloop" if uvloop is not None else "asyncio",
        },
        "config": {
            "members": args.members,
            "online": out["online"],
            "processes": out["processes"],
            "rate": args.rate,
            "messages": args.messages,
            "body_bytes": args.body_bytes,
            "url": args.url,
            "connect_concurrency": args.connect_concurrency,
            "settle_s": args.settle,
            "tail_s": args.tail,
            "gateway_workers": args.gateway_workers,
        },
        "run_id": out["run_id"],
        "conversation_id": out["cid"],
        "member_count": out["member_count"],
        "setup_s": round(out["setup_s"], 2),
        "connect": {
            "opened": opened,
            "failed": out["online"] - opened,
            "ramp_s": round(out["ramp_s"], 2),
            "per_process_s": [round(r["connect_s"], 2) for r in results],
            "rate_per_s": round(opened / out["ramp_s"], 1) if out["ramp_s"] else None,
            "handshake_ms": percentiles_ms(connect_hist, (50, 99)),
            "connect_errors": counts["connect_errors"],
            "listen_overflows": out["listen_overflows"],
        },
        "probe_all_s": None if sp.probe_all_s is None else round(sp.probe_all_s, 3),
        "sent": sp.sent,
        "acked": sp.acked,
        "sender_echo": sp.echo,
        "sender_errors": sp.errors,
        "expected": expected,
        "expected_open": expected_open,
        "received": received,
        "missing": max(expected_open - received, 0),
        "duplicates": counts["duplicates"],
        "closed_early": counts["closed_early"],
        "incomplete_messages": incomplete,
        # measured messages each socket got: {messages: sockets}
        "sockets_by_messages": dict(sorted(by_messages.items())),
        "fewest_users": fewest_users,
        "probes_sent": sp.probes_sent,
        "no_probe_users": [u for r in results for u in r["no_probe_users"]][:5],
        "latency_ms": percentiles_ms(hist, (50, 90, 99, 99.9)),
        "last_member_ms": pcts(last_member_ms),
        "first_member_ms": pcts(first_member_ms),
        "last_member_ms_each": [round(x) for x in last_member_ms],
        "send_ack_ms": percentiles_ms(sp.ack, (50, 99)),
        "sender_lag_ms": lag_ms,
        "span_s": round(span_s, 3),
        "sustained_deliveries_per_s": round(received / span_s, 1) if span_s else None,
        "offered_deliveries_per_s": round(opened * args.rate, 1),
        "stop_reason": sp.stop_reason,
        "send_window_s": round(wall_s, 2),
        "generator_cpu_pct": {
            "sender (parent)": round(parent_cpu, 1),
            "clients": [None if c is None else round(c, 1) for c in gen_cpu],
        },
        "client_cpu_total_s": [round(r["cpu_total_s"], 1) for r in results],
        "client_max_rss_mib": [round(r["max_rss_mib"]) for r in results],
        "machine_busy_pct": round((b1 - b0) / max(j1 - j0, 1) * 100, 1),
        "cpu_by_name_pct": {k: round(v, 1) for k, v in by_name.most_common()},
        "proc_cpu_pct": procs,
        # % of a core per TIMELINE_EVERY_S over the send phase, watched and generator processes
        "cpu_timeline": {
            f"{names.get(pid, '?')} [{pid}]": series
            for pid, series in timeline_pct(sp.timeline).items()
            if sum(series) >= len(series)
        },
        "counts": dict(sorted(counts.items())),
        "valid": not reasons,
        "invalid_reasons": reasons,
        "samples": samples[:ERROR_SAMPLES],
    }


def report(f: dict[str, Any]) -> None:
    m, c, k = f["machine"], f["config"], f["connect"]
    lines = [
        f"fanout  {f['date']}  {m['nproc']} CPUs  {m['cpu_model']}  {m['mem_gib']} GiB  "
        f"calibration sum(range(1000)) {m['cpu_calibration_us']} µs  nofile {m['nofile']}  {m['loop']}",
        f"config  members {c['members']}  online {c['online']}  processes {c['processes']}  "
        f"rate {c['rate']:g}/s  messages {c['messages']}  body {c['body_bytes']} B  {c['url']}"
        + (f"  gateway workers {c['gateway_workers']}" if c["gateway_workers"] else ""),
        f"group   {f['conversation_id']}  member_count {f['member_count']}  set up in {f['setup_s']} s",
        f"connect {k['opened']} opened, {k['failed']} failed ({k['connect_errors']} connect errors) in "
        f"{k['ramp_s']} s ({k['rate_per_s']}/s; per process {k['per_process_s']} s);  "
        f"handshake ms {fmt(k['handshake_ms'])};  listen overflows {k['listen_overflows']}",
        f"probe   {f['probes_sent']} probes (1/s) reached every open socket in {f['probe_all_s']} s"
        + (f"; never reached: {f['no_probe_users']}" if f["no_probe_users"] else ""),
        f"sent    {f['sent']}  acked {f['acked']}  sender echo {f['sender_echo']}  "
        f"sender errors {f['sender_errors']};  stop: {f['stop_reason']}",
        f"deliver expected {f['expected']} (open sockets x sent: {f['expected_open']})  received "
        f"{f['received']}  missing {f['missing']}  duplicates {f['duplicates']}  closed early "
        f"{f['closed_early']}  incomplete messages {f['incomplete_messages']}",
        f"sockets by measured messages received: {f['sockets_by_messages']}"
        + (f"; fewest: {f['fewest_users']}" if len(f["sockets_by_messages"]) > 1 else ""),
        f"latency ms (all deliveries)   {fmt(f['latency_ms'])}",
        f"last member ms (per message)  {fmt(f['last_member_ms'])};  first member "
        f"{fmt(f['first_member_ms'])}",
        "last member ms, each message: " + " ".join(map(str, f["last_member_ms_each"])),
        f"send->ack ms {fmt(f['send_ack_ms'])};  sender lag ms {fmt(f['sender_lag_ms'])}",
        f"sustained {f['sustained_deliveries_per_s']} deliveries/s over {f['span_s']} s "
        f"(offered {f['offered_deliveries_per_s']}/s)",
        f"generator CPU (send phase, % of a core): sender {f['generator_cpu_pct']['sender (parent)']}%, "
        f"clients {f['generator_cpu_pct']['clients']};  client RSS MiB {f['client_max_rss_mib']}",
        f"machine {f['machine_busy_pct']}% of all CPUs busy over the {f['send_window_s']} s send phase; "
        "by process name (% of a core): " + ", ".join(f"{n} {v}" for n, v in f["cpu_by_name_pct"].items()),
    ]
    lines.extend(
        f"        {p['cpu_pct']:6.1f}  {p['name']} [{p['pid']}]{' ' + p['role'] if p['role'] else ''}"
        for p in f["proc_cpu_pct"]
    )
    lines.append(f"CPU timeline (% of a core every {TIMELINE_EVERY_S:g} s of the send phase):")
    lines.extend(f"        {name}: {' '.join(map(str, v))}" for name, v in f["cpu_timeline"].items())
    shown = ("duplicates", "closed_early", "connect_errors")
    other = {n: v for n, v in f["counts"].items() if n not in shown}
    if other:
        lines.append(f"frames  {other}")
    lines.extend(f"sample  {s}" for s in f["samples"])
    lines.append("VALID" if f["valid"] else "INVALID: " + "; ".join(f["invalid_reasons"]))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--members", type=int, default=10000, help="group size M (default 10000)")
    ap.add_argument("--online", type=int, default=None, help="online members K (default M)")
    ap.add_argument("--processes", type=int, default=None, help="client processes (default ceil(K/5000))")
    ap.add_argument("--rate", type=float, default=1.0, help="messages/s to the group (default 1)")
    ap.add_argument("--messages", type=int, default=10, help="messages N (default 10)")
    ap.add_argument("--url", default="ws://127.0.0.1:8787", help="gateway (loopback only)")
    ap.add_argument("--secret", default=None, help="JWT secret (default Settings().resolved_auth_secret())")
    ap.add_argument("--body-bytes", type=int, default=100, help="text body size (default 100)")
    ap.add_argument(
        "--connect-concurrency",
        type=int,
        default=200,
        help="handshakes in flight over all client processes (default 200)",
    )
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between probe and sends (default 2)")
    ap.add_argument(
        "--tail",
        type=float,
        default=30.0,
        help="at most this long after the last send for deliveries (default 30)",
    )
    ap.add_argument(
        "--watch-pids",
        default="",
        help="comma-separated pids (e.g. gateway, worker) marked with their descendants",
    )
    ap.add_argument("--gateway-workers", type=int, default=None, help="recorded in the report only")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = ap.parse_args(argv)
    if args.online is None:
        args.online = args.members
    if args.processes is None:
        args.processes = max(1, math.ceil(args.online / 5000))
    if args.members < 2 or not 1 <= args.online <= args.members:
        ap.error("need --members >= 2 and 1 <= --online <= --members")
    if args.processes < 1 or math.ceil(args.online / args.processes) > MAX_CONNS_PER_PROCESS:
        ap.error(f"--processes must be >= 1 and leave <= {MAX_CONNS_PER_PROCESS} connections per process")
    if args.rate <= 0 or args.messages < 1 or args.settle < 0 or args.tail <= 0:
        ap.error("--rate and --tail must be positive, --messages >= 1, --settle >= 0")
    if not 30 <= args.body_bytes <= 4000:
        ap.error("--body-bytes must be 30..4000")
    if urlsplit(args.url).hostname not in LOOPBACK_HOSTS or urlsplit(args.url).scheme not in ("ws", "wss"):
        ap.error("--url must be ws://127.0.0.1:PORT (this generator only loads a local gateway)")
    try:
        watch = {int(p) for p in args.watch_pids.split(",") if p.strip()}
    except ValueError:
        ap.error("--watch-pids takes comma-separated integers")
    secret = args.secret
    if secret is None:
        from tidings.settings import Settings

        secret = Settings().resolved_auth_secret()

    started = dt.datetime.now(dt.UTC)
    calib_us = cpu_calibration_us()
    args.watch_set = descendants(watch) if watch else set()
    out = run(args, secret)
    figures = summarize(args, out, started, calib_us, args.watch_set)
    report(figures)
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_NON_STR_KEYS).decode())
    sys.stdout.flush()
    return 0 if figures["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
