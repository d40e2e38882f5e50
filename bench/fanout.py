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
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import websockets
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import ClientConnection

from bench.common import (
    LOOPBACK_HOSTS,
    cpu_calibration_us,
    cpu_seconds,
    descendants,
    listen_overflows,
    machine_busy_jiffies,
    new_hist,
    pid_ticks,
    proc_cpu_ticks,
    raise_nofile,
    record_us,
    run_loop,
    split,
)
from bench.fanout_client import ERROR_SAMPLES, ClientConfig, _client_child, open_socket
from bench.fanout_report import TIMELINE_EVERY_S, report, summarize
from query_api.auth import issue_token

__all__ = ["main", "open_socket", "ws_url"]

MAX_USERS_PER_REQUEST = 5000  # the gateway's limit per create or add (docs/protocol.md, Groups)
MAX_CONNS_PER_PROCESS = 9500  # 2-core rule of /work/shared/notes/performance.md §4
STALL_S = 10.0  # after the last send: stop when no delivery arrived for this long
PROBE_WAIT_S = 120.0
HTTP_TIMEOUT_S = 300.0
PROBE_EVERY_S = 1.0


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


class Sender:
    """The owner's ``sender`` socket: sends the probes and the measured messages, and reads
    their acks (send-to-ack time of the measured ones)."""

    def __init__(
        self, ws: ClientConnection, sp: SendPhase, *, run_id: str, cid: str, body_bytes: int
    ) -> None:
        self.ws, self.sp = ws, sp
        self.run_id, self.cid, self.body_bytes = run_id, cid, body_bytes
        self.intended: dict[str, int] = {}

    async def send(self, seq: int, at_ns: int) -> None:
        cmid = f"{self.run_id}-{seq}"
        if seq >= 0:
            self.intended[cmid] = at_ns
        frame = {
            "type": "send",
            "ref": cmid,
            "client_msg_id": cmid,
            "conversation_id": self.cid,
            "kind": "text",
            "body": body_for(self.run_id, seq, at_ns, self.body_bytes),
        }
        await self.ws.send(orjson.dumps(frame).decode())

    async def read(self) -> None:
        sp = self.sp
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                now = time.time_ns()
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "ack":
                    t = self.intended.get(str(frame.get("client_msg_id")))
                    if t is not None:
                        sp.acked += 1
                        record_us(sp.ack, now - t)
                elif kind == "message":
                    sp.echo += 1
                elif kind == "error":
                    sp.errors += 1
                    if len(sp.samples) < ERROR_SAMPLES:
                        sp.samples.append(f"sender error frame: {raw!s}"[:300])


async def _probe(sender: Sender, ctl: Control, opened: int, deadline: float) -> None:
    """Probes (seq -1, -2, ...), one a second, until every open socket got at least one. The
    gateway answers the upgrade before it registers the socket with its hub, so a socket is
    "online" for fan-out only once a message reached it; this also waits out the worker's
    backlog of membership events."""
    sp = sender.sp
    t = time.monotonic()
    probe_deadline = min(t + PROBE_WAIT_S, deadline)
    for n in range(int(PROBE_WAIT_S / PROBE_EVERY_S) + 1):
        await sender.send(-1 - n, time.time_ns())
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


async def _send_on_schedule(sender: Sender, messages: int, rate: float) -> None:
    """``messages`` sends at ``rate`` per second on a fixed schedule (open loop); the lag of
    each send behind its intended time in ``sp.lag``."""
    sp = sender.sp
    interval_ns = 1e9 / rate
    sp.t0_ns = t0 = time.time_ns() + 100_000_000
    for seq in range(messages):
        at = t0 + int(seq * interval_ns)
        delay = at - time.time_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        record_us(sp.lag, time.time_ns() - at)
        try:
            await sender.send(seq, at)
        except websockets.ConnectionClosed as exc:
            sp.samples.append(f"sender socket closed: {exc!r}")
            break
        sp.sent += 1


async def _until_delivered(sp: SendPhase, ctl: Control, opened: int, tail_s: float, deadline: float) -> None:
    """Until every open socket got every sent message (and every send was acked), or the tail,
    a stall or the overall budget ran out; the reason in ``sp.stop_reason``."""
    last_send = time.monotonic()
    expected = opened * sp.sent
    while True:
        now = time.monotonic()
        if ctl.received() >= expected and sp.acked >= sp.sent:
            sp.stop_reason = "all delivered"
            break
        if now - last_send > tail_s:
            sp.stop_reason = f"tail of {tail_s:g} s after the last send ran out"
            break
        if now - max(ctl.last_change, last_send) > STALL_S:
            sp.stop_reason = f"no delivery for {STALL_S:g} s"
            break
        if now > deadline:
            sp.stop_reason = "overall budget ran out"
            break
        await asyncio.sleep(0.02)


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
    token = issue_token(secret, owner, device_id="sender", ttl_s=7200)
    ws = await open_socket(ws_url(args.url), token, "127.0.0.1")
    sender = Sender(ws, sp, run_id=run_id, cid=cid, body_bytes=args.body_bytes)
    reader_task = asyncio.create_task(sender.read())
    await _probe(sender, ctl, opened, deadline)
    await asyncio.sleep(args.settle)

    sp.marks["jiffies0"], sp.marks["procs0"] = machine_busy_jiffies(), proc_cpu_ticks()
    sp.marks["cpu0"], sp.marks["wall0"] = cpu_seconds(), time.monotonic_ns()
    go.set()
    sampler = asyncio.create_task(sample_cpu(timeline_pids, sp.timeline))
    await _send_on_schedule(sender, args.messages, args.rate)
    await _until_delivered(sp, ctl, opened, args.tail, deadline)
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


def _client_configs(
    args: argparse.Namespace, secret: str, run_id: str, cid: str, online: list[str], budget: float
) -> list[ClientConfig]:
    """The online members spread over the client processes, and the handshakes in flight."""
    shares = [n for n in split(len(online), args.processes) if n > 0]
    conc = split(args.connect_concurrency, len(shares))
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
    return cfgs


def _until_ready(ctl: Control, processes: int, ramp_deadline: float) -> None:
    while len(ctl.ready) < processes:
        if ctl.fatal:
            raise SystemExit(f"client process failed: {ctl.fatal}")
        if time.monotonic() > ramp_deadline:
            raise SystemExit(f"only {len(ctl.ready)}/{processes} client processes got ready in time")
        time.sleep(0.05)


def _until_reported(ctl: Control, processes: int) -> None:
    result_deadline = time.monotonic() + 60
    while len(ctl.results) + len(ctl.fatal) < processes and time.monotonic() < result_deadline:
        time.sleep(0.05)
    if ctl.fatal:
        raise SystemExit(f"client process failed: {ctl.fatal}")
    if len(ctl.results) < processes:
        raise SystemExit(f"only {len(ctl.results)}/{processes} client processes reported")


def _stop_all(procs: list[Any], ctl: Control, stop: Any) -> None:
    stop.set()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join()
    ctl.close()


def run(args: argparse.Namespace, secret: str) -> dict[str, Any]:
    raise_nofile()
    run_id = uuid.uuid4().hex[:8]
    owner = f"fo{run_id}"
    members = [owner] + [f"fm{run_id}n{i}" for i in range(1, args.members)]
    http = Http(http_base(args.url), issue_token(secret, owner, ttl_s=7200))
    cid, member_count, setup_s = create_group(http, run_id, members[1:])

    online = members[: args.online]
    budget = 120 + len(online) / 20 + PROBE_WAIT_S + args.settle + args.messages / args.rate + args.tail + 60
    deadline = time.monotonic() + budget
    cfgs = _client_configs(args, secret, run_id, cid, online, budget)
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
        _until_ready(ctl, len(cfgs), t_ramp + 120 + len(online) / 20)
        ramp_s = time.monotonic() - t_ramp
        overflows = listen_overflows() - overflows0
        opened = sum(r["opened"] for r in ctl.ready.values())
        pids = args.watch_set | {os.getpid()} | {p.pid for p in procs if p.pid is not None}
        phase = send_phase(
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
            timeline_pids=pids,
        )
        sp: SendPhase = run_loop(phase)
        stop.set()
        _until_reported(ctl, len(cfgs))
    finally:
        _stop_all(procs, ctl, stop)
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


def _parser() -> argparse.ArgumentParser:
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
    return ap


def _checked(ap: argparse.ArgumentParser, args: argparse.Namespace) -> set[int]:
    """Fill the defaults that depend on other arguments and refuse what cannot run; returns the
    pids to watch."""
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
    return watch


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    watch = _checked(ap, args)
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
