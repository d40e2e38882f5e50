"""Open-loop chat load with reconnecting clients, and the check that nothing acked was lost.

``Load`` keeps every member device of a set of conversations connected (spread over the
gateways), sends at a fixed rate on an intended-time schedule whatever the replies (open loop),
and records what happened to each send:

- acked (with its ``message_id``), refused with an error code, or unknown (the socket died
  before the reply; the client resends it with the same ``client_msg_id`` once reconnected, as
  a real client does: the send is idempotent);
- every ``message`` frame each device receives (duplicates counted);
- on every reconnect a device catches up what it missed with ``GET /v1/sync?since=<cursor>``
  (its cursor taken once connected, before the load); where a server has no ``/v1/sync``, by
  reading history from a little before the newest message it had seen, per conversation.

``Load.verify()`` then reads the complete history of every conversation and returns a
``Report``; ``Report.problems()`` lists every broken guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets

from events import direct_conversation_id
from events.ids import SEQUENCE_BITS, WORKER_BITS
from tests.faults.system import FaultSystem

# Catch-up reads from this long before the newest message seen. Ids are drawn before the
# append, and a send that waited out a broker outage lands in the log after messages with
# larger ids: an id cursor needs a margin as long as the longest send (the producer's timeouts).
SYNC_OVERLAP_MS = 120_000
HISTORY_PAGE = 100


@dataclass
class Sent:
    cid: str
    client_msg_id: str
    sender: str
    device: str
    body: str
    intended: float
    seq: int  # order of sends from this device
    message_id: str | None = None
    acked_at: float | None = None
    errors: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    gave_up: bool = False


@dataclass
class Device:
    user: str
    name: str
    conversations: list[str]
    url_index: int
    ws: Any = None
    connected_at: float | None = None
    reconnects: int = 0
    refs: dict[str, Sent] = field(default_factory=dict)
    waiting: list[Sent] = field(default_factory=list)  # to (re)send once connected
    received: Counter[str] = field(default_factory=Counter)  # message_id -> pushes
    received_at: dict[str, float] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)
    newest: dict[str, int] = field(default_factory=dict)  # cid -> newest message id seen
    cursor: str | None = None  # of /v1/sync
    seq: itertools.count[int] = field(default_factory=itertools.count)


@dataclass
class Report:
    scenario: str
    sent: int = 0
    acked: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0
    lost: list[str] = field(default_factory=list)  # acked, not in history
    history_duplicates: list[str] = field(default_factory=list)
    wrong_id: list[str] = field(default_factory=list)  # in history under another id than acked
    order_violations: list[str] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)  # in history, never sent by us
    undelivered: list[str] = field(default_factory=list)  # device missed it, live and by sync
    delivered_live: int = 0
    delivered_by_sync: int = 0
    duplicate_deliveries: int = 0
    reconnects: int = 0
    recovery_s: float | None = None
    outage_s: float = 0.0
    deliver_p50_ms: float = 0.0
    deliver_p99_ms: float = 0.0
    deliver_max_ms: float = 0.0
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = []
        for name in (
            "lost",
            "history_duplicates",
            "wrong_id",
            "order_violations",
            "strangers",
            "undelivered",
        ):
            items = getattr(self, name)
            if items:
                found.append(f"{name}: {len(items)} e.g. {items[:3]}")
        return found

    def line(self) -> str:
        recovery = "n/a" if self.recovery_s is None else f"{self.recovery_s:.1f}s"
        refused = ",".join(f"{k}={v}" for k, v in sorted(self.refused.items())) or "0"
        return (
            f"[{self.scenario}] sent={self.sent} acked={self.acked} lost={len(self.lost)} "
            f"refused={refused} unanswered={self.unanswered} "
            f"dup_in_history={len(self.history_duplicates)} undelivered={len(self.undelivered)} "
            f"live={self.delivered_live} by_sync={self.delivered_by_sync} "
            f"dup_deliveries={self.duplicate_deliveries} reconnects={self.reconnects} "
            f"no_ack_window={self.outage_s:.1f}s recovery={recovery} "
            f"deliver_ms p50={self.deliver_p50_ms:.0f} p99={self.deliver_p99_ms:.0f} "
            f"max={self.deliver_max_ms:.0f}"
        )


def id_minus_ms(message_id: int, ms: int) -> int:
    return max(message_id - (ms << (WORKER_BITS + SEQUENCE_BITS)), 0)


class Load:
    def __init__(
        self,
        system: FaultSystem,
        scenario: str,
        *,
        rate: float,
        direct: int = 30,
        groups: int = 20,
        group_size: int = 4,
        devices_per_user: int = 2,
        seed: int = 7,
    ) -> None:
        self.system = system
        self.scenario = scenario
        self.rate = rate
        self.random = random.Random(seed)
        self.run_id = uuid.uuid4().hex[:6]
        self.urls = system.ws_urls()
        self.members: dict[str, list[str]] = {}
        self._plan = (direct, groups, group_size, devices_per_user)
        self.devices: list[Device] = []
        self.by_user: dict[str, list[Device]] = {}
        self.sent: list[Sent] = []
        self.stopping = False
        self.repaired_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.settled_s = 0.0
        self.loop_lag_s = 0.0
        self._sync_tasks: set[asyncio.Task[None]] = set()
        self.use_sync = True

    # ------------------------------------------------------------------ set-up

    def _user(self, i: int) -> str:
        return f"f{self.run_id}u{i}"

    async def setup(self) -> None:
        direct, groups, group_size, devices_per_user = self._plan
        users = [self._user(i) for i in range(2 * direct)]
        for i in range(direct):
            a, b = users[2 * i], users[2 * i + 1]
            self.members[direct_conversation_id(a, b)] = [a, b]
        for g in range(groups):
            # Sizes alternate around the group size, so with the fan-out threshold at the group
            # size both delivery paths (per member, per gateway) carry load.
            chosen = self.random.sample(users, group_size - 1 + 2 * (g % 2))
            # The previous scenario's repair may still be settling (a producer reconnecting
            # to a restarted broker): the load starts on a working system.
            deadline = time.monotonic() + 120
            while True:
                status, body = await asyncio.to_thread(
                    self.system.request,
                    "POST",
                    "/v1/conversations",
                    user=chosen[0],
                    body={"kind": "group", "title": "faults", "members": chosen[1:]},
                )
                if status != 503 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
            assert status == 201, (status, body)
            self.members[body["conversation"]["conversation_id"]] = chosen
        for n, u in enumerate(users):
            convs = [cid for cid, ms in self.members.items() if u in ms]
            for d in range(devices_per_user):
                dev = Device(u, f"d{d}", convs, url_index=(n + d) % len(self.urls))
                self.devices.append(dev)
                self.by_user.setdefault(u, []).append(dev)
        for dev in self.devices:
            self._tasks.append(asyncio.create_task(self._device_loop(dev)))
        self._tasks.append(asyncio.create_task(self._watch_loop()))
        deadline = time.monotonic() + 60
        while not all(d.ws is not None for d in self.devices):
            assert time.monotonic() < deadline, "devices did not connect"
            await asyncio.sleep(0.1)
        # Each device's starting cursor, now that its socket is subscribed.
        for dev in self.devices:
            status, body = await asyncio.to_thread(self.system.request, "GET", "/v1/sync", user=dev.user)
            if status == 404:
                self.use_sync = False
                break
            assert status == 200, (status, body)
            dev.cursor = body["cursor"]

    async def _watch_loop(self) -> None:
        """The test client's own event-loop lag: a starved client explains late figures."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            self.loop_lag_s = max(self.loop_lag_s, time.monotonic() - before - 0.1)

    # ------------------------------------------------------------------ devices

    async def _device_loop(self, dev: Device) -> None:
        backoff = 0.1
        first = True
        while not self.stopping or dev.refs or dev.waiting:
            url = self.urls[dev.url_index % len(self.urls)]
            token = self.system.token(dev.user, dev.name)
            try:
                # No client-side flow control: a test client that pauses reading would not answer
                # the server's pings, and the server would drop it for a reason of our making.
                ws = await websockets.connect(
                    f"{url}?token={token}", max_size=None, max_queue=None, open_timeout=5
                )
            except (OSError, websockets.InvalidHandshake, TimeoutError):
                dev.url_index += 1  # the load balancer tries another gateway
                await asyncio.sleep(backoff * (0.5 + self.random.random()))
                backoff = min(backoff * 2, 2.0)
                continue
            # Pushes start once the gateway has registered the socket, which on a loaded gateway
            # is later than the upgrade: the first reply (a pong) proves it, and only then does
            # catching up cover everything (found by this suite: messages of the first seconds
            # were neither pushed nor caught up).
            try:
                await ws.send('{"type": "ping", "ref": "registered"}')
                while True:
                    frame = orjson.loads(await ws.recv())
                    if frame.get("type") == "pong" and frame.get("ref") == "registered":
                        break
                    self._on_frame(dev, frame)
            except websockets.ConnectionClosed:
                await asyncio.sleep(backoff)
                continue
            backoff = 0.1
            dev.ws = ws
            dev.connected_at = time.monotonic()
            if not first:
                dev.reconnects += 1
                task = asyncio.create_task(self._catch_up(dev))
                self._sync_tasks.add(task)
                task.add_done_callback(self._sync_tasks.discard)
            first = False
            waiting, dev.waiting = dev.waiting, []
            for sent in waiting:
                await self._transmit(dev, sent)
            try:
                async for raw in ws:
                    self._on_frame(dev, orjson.loads(raw))
            except websockets.ConnectionClosed:
                pass
            finally:
                dev.ws = None
            # Whatever had no reply is unknown: resend with the same client_msg_id.
            dev.waiting.extend(dev.refs.values())
            dev.refs.clear()
            dev.url_index += 1
            if self.stopping and not dev.waiting:
                return

    async def _transmit(self, dev: Device, sent: Sent) -> None:
        ws = dev.ws
        if ws is None:
            dev.waiting.append(sent)
            return
        ref = uuid.uuid4().hex[:12]
        dev.refs[ref] = sent
        sent.attempts += 1
        frame = {
            "type": "send",
            "ref": ref,
            "client_msg_id": sent.client_msg_id,
            "conversation_id": sent.cid,
            "kind": "text",
            "body": sent.body,
        }
        # On a closed socket the reader sees the close and moves the refs to waiting.
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(orjson.dumps(frame).decode())

    def _on_frame(self, dev: Device, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        now = time.monotonic()
        if kind == "ack":
            sent = dev.refs.pop(frame["ref"], None)
            if sent is not None and sent.message_id is None:
                sent.message_id = frame["message_id"]
                sent.acked_at = now
            elif sent is not None and sent.message_id != frame["message_id"]:
                sent.errors["second_ack_other_id"] += 1
        elif kind == "error":
            sent = dev.refs.pop(frame.get("ref") or "", None)
            if sent is not None:
                sent.errors[frame["code"]] += 1
                sent.gave_up = True  # refused: the client would show it as not sent
        elif kind == "message":
            mid = frame["message"]["message_id"]
            cid = frame["message"]["conversation_id"]
            dev.received[mid] += 1
            dev.received_at.setdefault(mid, now)
            dev.newest[cid] = max(dev.newest.get(cid, 0), int(mid))

    async def _catch_up(self, dev: Device) -> None:
        """What a reconnecting client does: read what it missed."""
        if self.use_sync:
            await self._sync(dev)
            return
        for cid in dev.conversations:
            after = id_minus_ms(dev.newest[cid], SYNC_OVERLAP_MS) if cid in dev.newest else 0
            while True:
                try:
                    messages = await self._history(dev.user, cid, after=after)
                    break
                except RuntimeError:
                    await asyncio.sleep(1.0)  # e.g. Cassandra is down: try again
            for m in messages:
                dev.synced.add(m["message_id"])
                dev.newest[cid] = max(dev.newest.get(cid, 0), int(m["message_id"]))

    async def _sync(self, dev: Device) -> None:
        """``/v1/sync`` from the device's cursor until it is up to date."""
        while True:
            status, page = await asyncio.to_thread(
                self.system.request, "GET", f"/v1/sync?since={dev.cursor}&limit=1000", user=dev.user
            )
            if status != 200:
                await asyncio.sleep(1.0)  # e.g. Cassandra is down: try again
                continue
            for m in page["messages"]:
                dev.synced.add(m["message_id"])
            dev.cursor = page["cursor"]
            if not page["has_more"]:
                return

    async def _history(self, reader: str, cid: str, *, after: int = 0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            status, page = await asyncio.to_thread(
                self.system.request,
                "GET",
                f"/v1/conversations/{cid}/messages?after={after}&limit={HISTORY_PAGE}",
                user=reader,
            )
            if status != 200:
                raise RuntimeError(f"history {cid}: {status} {page}")
            out.extend(page["messages"])
            if not page["has_more"]:
                return out
            after = int(page["messages"][-1]["message_id"])

    # ------------------------------------------------------------------ sending

    async def run(self, seconds: float) -> None:
        """Send at ``rate`` for ``seconds``, open loop."""
        conversations = list(self.members)
        start = time.monotonic()
        total = int(seconds * self.rate)
        for i in range(total):
            intended = start + i / self.rate
            delay = intended - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            cid = conversations[i % len(conversations)]
            sender = self.random.choice(self.members[cid])
            dev = self.random.choice(self.by_user[sender])
            sent = Sent(
                cid,
                f"c{i}",
                sender,
                dev.name,
                f"fault {self.scenario} {i}",
                intended,
                next(dev.seq),
            )
            self.sent.append(sent)
            await self._transmit(dev, sent)

    def background(self, seconds: float) -> asyncio.Task[None]:
        return asyncio.create_task(self.run(seconds))

    # ------------------------------------------------------------------ the check

    async def finish(self, settle_s: float = 60.0) -> Report:
        """Wait for replies and deliveries to settle, stop the clients, check everything.

        It waits while things still move: until every device has every acked message of its
        conversations, or nothing more arrived for ``settle_s`` (a shared 2-core machine can be
        slow, and a slow catch-up is not a lost message)."""
        started = time.monotonic()
        last_change, last_missing = time.monotonic(), -1
        while time.monotonic() - last_change < settle_s:
            pending = any(d.refs or d.waiting for d in self.devices)
            missing = self._missing()
            if not pending and not missing and not self._sync_tasks:
                break
            if missing != last_missing or pending:
                last_change, last_missing = time.monotonic(), missing
            await asyncio.sleep(0.5)
        self.settled_s = time.monotonic() - started
        self.stopping = True
        for dev in self.devices:
            if dev.ws is not None:
                with contextlib.suppress(Exception):
                    await dev.ws.close()
        for task in self._tasks:
            task.cancel()
        for task in list(self._sync_tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._sync_tasks, return_exceptions=True)
        return await self.verify()

    def _missing(self) -> int:
        acked = self._acked_by_cid()
        missing = 0
        for dev in self.devices:
            for cid in dev.conversations:
                for mid in acked.get(cid, ()):
                    if mid not in dev.received and mid not in dev.synced:
                        missing += 1
        return missing

    def _acked_by_cid(self) -> dict[str, set[str]]:
        acked: dict[str, set[str]] = {}
        for s in self.sent:
            if s.message_id is not None:
                acked.setdefault(s.cid, set()).add(s.message_id)
        return acked

    async def verify(self) -> Report:
        report = Report(self.scenario, sent=len(self.sent))
        by_key = {(s.sender, s.client_msg_id): s for s in self.sent}
        for s in self.sent:
            if s.message_id is not None:
                report.acked += 1
            elif s.errors:
                report.refused.update(s.errors)
            else:
                report.unanswered += 1
        for cid, members in self.members.items():
            history = await self._complete_history(members[0], cid)
            seen: Counter[tuple[str, str]] = Counter()
            ids = [int(m["message_id"]) for m in history]
            if ids != sorted(set(ids)):
                report.order_violations.append(f"{cid}: history not strictly ascending")
            last_seq: dict[str, int] = {}
            for m in history:
                key = (m["sender_id"], m["client_msg_id"])
                seen[key] += 1
                sent = by_key.get(key)
                if sent is None or sent.cid != cid:
                    report.strangers.append(f"{cid}/{m['message_id']}")
                    continue
                if seen[key] > 1:
                    report.history_duplicates.append(f"{cid}/{key}")
                if sent.message_id is not None and sent.message_id != m["message_id"]:
                    report.wrong_id.append(f"{cid}/{key}: acked {sent.message_id}, stored {m['message_id']}")
                # One socket's frames are handled in order, so its sends keep their order.
                device_key = f"{sent.sender}/{sent.device}"
                if sent.attempts == 1 and last_seq.get(device_key, -1) > sent.seq:
                    report.order_violations.append(f"{cid}/{key}: after a later send of {device_key}")
                last_seq[device_key] = max(last_seq.get(device_key, -1), sent.seq)
            for s in self.sent:
                if s.cid == cid and s.message_id is not None and seen[(s.sender, s.client_msg_id)] == 0:
                    report.lost.append(f"{cid}/{s.client_msg_id}={s.message_id}")
        acked = self._acked_by_cid()
        for dev in self.devices:
            report.reconnects += dev.reconnects
            report.duplicate_deliveries += sum(n - 1 for n in dev.received.values() if n > 1)
            for cid in dev.conversations:
                for mid in acked.get(cid, ()):
                    if mid in dev.received:
                        report.delivered_live += 1
                    elif mid in dev.synced:
                        report.delivered_by_sync += 1
                    else:
                        report.undelivered.append(f"{dev.user}/{dev.name}:{cid}/{mid}")
        self._timing(report)
        report.notes.append(
            f"settled in {self.settled_s:.1f}s; test client loop lag max {self.loop_lag_s:.2f}s"
        )
        if report.undelivered:
            report.notes.append(self._undelivered_detail(report))
        return report

    def _undelivered_detail(self, report: Report) -> str:
        start = self.sent[0].intended
        sent_at = {s.message_id: s.intended - start for s in self.sent if s.message_id is not None}
        by_device: Counter[str] = Counter()
        by_cid: Counter[str] = Counter()
        when: list[float] = []
        for item in report.undelivered:
            device, _, rest = item.partition(":")
            cid, _, mid = rest.rpartition("/")
            by_device[device] += 1
            by_cid[f"{cid}({len(self.members[cid])})"] += 1
            when.append(sent_at.get(mid, -1.0))
        reconnects = {f"{d.user}/{d.name}": d.reconnects for d in self.devices}
        devices = [(d, n, reconnects.get(d)) for d, n in by_device.most_common(5)]
        return (
            f"undelivered: devices(n, reconnects)={devices} conversations={by_cid.most_common(5)} "
            f"sent at s={min(when):.1f}..{max(when):.1f}"
        )

    async def _complete_history(self, reader: str, cid: str) -> list[dict[str, Any]]:
        for _ in range(60):
            try:
                return await self._history(reader, cid)
            except RuntimeError:
                await asyncio.sleep(1.0)
        return await self._history(reader, cid)

    def _timing(self, report: Report) -> None:
        """The longest stretch of sends without an ack, and how long after the repair a
        message was again delivered within a second of its intended send time."""
        acked_times = sorted(s.intended for s in self.sent if s.message_id is not None)
        if self.sent:
            edges = [self.sent[0].intended, *acked_times, self.sent[-1].intended]
            report.outage_s = max(b - a for a, b in itertools.pairwise(edges))
        sent_at = {s.message_id: s.intended for s in self.sent if s.message_id is not None}
        latencies = sorted(
            at - sent_at[mid] for dev in self.devices for mid, at in dev.received_at.items() if mid in sent_at
        )
        if latencies:
            report.deliver_p50_ms = latencies[len(latencies) // 2] * 1000
            report.deliver_p99_ms = latencies[int(len(latencies) * 0.99)] * 1000
            report.deliver_max_ms = latencies[-1] * 1000
        if self.repaired_at is None:
            return
        quick = [
            at
            for dev in self.devices
            for mid, at in dev.received_at.items()
            if mid in sent_at and at >= self.repaired_at and at - sent_at[mid] < 1.0
        ]
        if quick:
            report.recovery_s = min(quick) - self.repaired_at
