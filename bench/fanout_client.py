"""One client process of ``bench.fanout``: opens its share of the online members' sockets,
records each delivery of the group's messages (latency from the intended send time, and per
message the first and last receive), reports progress to the parent over a queue, and returns
its figures when told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import ClientConnection

from bench.common import SOURCE_ADDRESSES, cpu_seconds, new_hist, raise_nofile, record_us, run_loop
from query_api.auth import issue_token

PROGRESS_EVERY_S = 0.1
ERROR_SAMPLES = 8


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


async def _connect_all(
    cfg: ClientConfig, st: ClientState
) -> tuple[list[ClientConnection | None], HdrHistogram]:
    """Open a socket per user (``None`` where three attempts failed), at most
    ``connect_concurrency`` handshakes at once; the handshake times in a histogram."""
    connect_hist = new_hist()
    sem = asyncio.Semaphore(cfg.connect_concurrency)

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
    return list(opened), connect_hist


async def _report_until_stopped(
    cfg: ClientConfig, st: ClientState, ctl: Any, go: Any, stop: Any, deadline: float
) -> float | None:
    """Report progress to the parent until it says stop (or the budget runs out); returns this
    process's CPU use over the send phase (% of a core), ``None`` if it never began."""
    cpu_go = wall_go = None
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
    if cpu_go is None or wall_go is None:
        return None
    return (cpu_stop - cpu_go) / max((wall_stop - wall_go) / 1e9, 1e-9) * 100


async def _close_all(
    socks: list[ClientConnection], readers: list[asyncio.Task[None]], st: ClientState
) -> None:
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


async def run_client(cfg: ClientConfig, ctl: Any, go: Any, stop: Any) -> dict[str, Any]:
    nofile = raise_nofile()
    deadline = time.monotonic() + cfg.budget_s
    st = ClientState(cfg.run_id, cfg.cid)
    t_start = time.monotonic_ns()
    opened, connect_hist = await _connect_all(cfg, st)
    socks = [ws for ws in opened if ws is not None]
    connect_s = (time.monotonic_ns() - t_start) / 1e9
    readers = [
        asyncio.create_task(_client_reader(ws, u, st))
        for ws, u in zip(opened, cfg.users, strict=True)
        if ws is not None
    ]
    ready = {
        "opened": len(socks),
        "failed": len(cfg.users) - len(socks),
        "connect_s": connect_s,
        "connect_hist": connect_hist.encode(),
        "nofile": nofile,
    }
    ctl.put(("ready", cfg.index, ready))
    cpu_ready = cpu_seconds()
    send_cpu_pct = await _report_until_stopped(cfg, st, ctl, go, stop, deadline)
    await _close_all(socks, readers, st)
    return {
        "index": cfg.index,
        "connections": len(cfg.users),
        "opened": len(socks),
        "connect_s": connect_s,
        **_received(st),
        "cpu_connect_s": cpu_ready,
        "send_cpu_pct": send_cpu_pct,
        "cpu_total_s": cpu_seconds(),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _received(st: ClientState) -> dict[str, Any]:
    """What the sockets got, and (to name sockets that missed messages) a few users that got
    fewest and a few the probe never reached."""
    measured = {u: sum(1 for x in seen if x >= 0) for u, seen in st.seen_by_user.items()}
    got_counts = Counter(measured.values())
    fewest = min(got_counts, default=0)
    short_users = [u for u, n in measured.items() if n == fewest][:5]
    no_probe = [u for u, seen in st.seen_by_user.items() if not any(x < 0 for x in seen)]
    return {
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
    }


def _client_child(cfg: ClientConfig, ctl: Any, go: Any, stop: Any) -> None:
    try:
        result = run_loop(run_client(cfg, ctl, go, stop))
    except BaseException as exc:  # report, never hang the parent
        ctl.put(("fatal", cfg.index, repr(exc)))
        raise
    ctl.put(("result", cfg.index, result))
