"""Open-loop chat load with reconnecting clients, and the check that nothing acked was lost.

``Load`` keeps every member device of a set of conversations connected (spread over the
gateways), sends at a fixed rate on an intended-time schedule whatever the replies (open loop),
and records what happened to each send. Each device is the project's SDK (``TidingsClient``,
``client/``): it reconnects with backoff, resends unacknowledged sends with the same
``client_msg_id`` (the send is idempotent), retries sends answered ``unavailable``, and after
every (re)connection catches up with ``GET /v1/sync`` from its cursor, as an app does. What the
report needs that an app does not see comes from the SDK's ``wire_tap``, before the SDK's own
handling:

- every ``message`` frame each device receives, counted before the SDK drops duplicates, and
  when the first copy arrived (the delivery latency);
- every message a ``/v1/sync`` page handed the device (caught up, not pushed);
- every transmission of each send (``attempts``: a resent send may be ordered after later ones)
  and every ``error`` answer to one (``unavailable`` answers are retried by the SDK, and counted);
- every ``ack`` (two acks of one send with different ids would be a broken idempotency).

Each send is acked (``send()`` returned its ``message_id``), refused (``send()`` raised the typed
error of a final refusal: its protocol code), or unanswered when the load stops. The messages the
SDK hands the app (``MessageEvent``) are counted too: after its dedup each must come once.

``Load.verify()`` then reads the complete history of every conversation and returns a
``Report``; ``Report.problems()`` lists every broken guarantee.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tidings_client import Backoff, ClientClosed, ConnectionState, MessageEvent, TidingsClient, TidingsError

from events import direct_conversation_id

HISTORY_PAGE = 100


class Target(Protocol):
    """The running system the load drives: ``FaultSystem`` (single-node services) or the
    cluster fault suite's system (tests/cluster_faults, everything through HAProxy)."""

    def ws_urls(self) -> list[str]: ...

    def token(self, user: str, device: str = "default", ttl_s: int = 3600) -> str: ...

    def request(
        self, method: str, path: str, *, user: str | None = None, body: Any = None
    ) -> tuple[int, Any]: ...


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
    errors: Counter[str] = field(default_factory=Counter)  # final refusals (send() raised)
    answers: Counter[str] = field(default_factory=Counter)  # error frames, retried ones too
    acked_ids: set[str] = field(default_factory=set)  # every ack's message_id
    attempts: int = 0  # send frames transmitted
    gave_up: bool = False


@dataclass
class Device:
    user: str
    name: str
    conversations: list[str]
    url_index: int
    client: TidingsClient | None = None
    connected: bool = False
    connections: int = 0  # "connected" events: open and resumed
    refs: dict[str, Sent] = field(default_factory=dict)  # ref of a send frame -> its send
    received: Counter[str] = field(default_factory=Counter)  # message_id -> pushes (before dedup)
    received_at: dict[str, float] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)  # found in a /v1/sync page
    synced_at: dict[str, float] = field(default_factory=dict)  # the first page that had it
    handed: Counter[str] = field(default_factory=Counter)  # message_id -> MessageEvents (after dedup)
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
    duplicate_deliveries: int = 0  # pushes of a message a device already had (before the SDK's dedup)
    app_duplicates: list[str] = field(default_factory=list)  # a message handed to the app twice
    retried: Counter[str] = field(default_factory=Counter)  # error answers the SDK retried past
    reconnects: int = 0
    recovery_s: float | None = None
    outage_s: float = 0.0
    deliver_p50_ms: float = 0.0
    deliver_p99_ms: float = 0.0
    deliver_max_ms: float = 0.0
    # Messages sent during the fault (``Load.fault_window``), first arrival live or by sync.
    fault_messages: int = 0
    fault_p99_ms: float | None = None
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
            "app_duplicates",
        ):
            items = getattr(self, name)
            if items:
                found.append(f"{name}: {len(items)} e.g. {items[:3]}")
        return found

    def line(self) -> str:
        recovery = "n/a" if self.recovery_s is None else f"{self.recovery_s:.1f}s"
        refused = ",".join(f"{k}={v}" for k, v in sorted(self.refused.items())) or "0"
        retried = ",".join(f"{k}={v}" for k, v in sorted(self.retried.items())) or "0"
        fault_p99 = "n/a" if self.fault_p99_ms is None else f"{self.fault_p99_ms:.0f}"
        return (
            f"[{self.scenario}] sent={self.sent} acked={self.acked} lost={len(self.lost)} "
            f"refused={refused} retried={retried} unanswered={self.unanswered} "
            f"dup_in_history={len(self.history_duplicates)} undelivered={len(self.undelivered)} "
            f"live={self.delivered_live} by_sync={self.delivered_by_sync} "
            f"dup_deliveries={self.duplicate_deliveries} dup_to_app={len(self.app_duplicates)} "
            f"reconnects={self.reconnects} "
            f"no_ack_window={self.outage_s:.1f}s recovery={recovery} "
            f"deliver_ms p50={self.deliver_p50_ms:.0f} p99={self.deliver_p99_ms:.0f} "
            f"max={self.deliver_max_ms:.0f} "
            f"during_fault n={self.fault_messages} p99={fault_p99}"
        )


class Load:
    def __init__(
        self,
        system: Target,
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
        self.urls = [u.removesuffix("/v1/ws").replace("ws://", "http://", 1) for u in system.ws_urls()]
        self.members: dict[str, list[str]] = {}
        self._plan = (direct, groups, group_size, devices_per_user)
        self.devices: list[Device] = []
        self.by_user: dict[str, list[Device]] = {}
        self.sent: list[Sent] = []
        self.by_cmid: dict[tuple[str, str], Sent] = {}
        self.stopping = False
        self.repaired_at: float | None = None
        # From the fault to the repair (monotonic times), set by the scenario.
        self.fault_window: tuple[float, float] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self.settled_s = 0.0
        self.loop_lag_s = 0.0
        self.disconnects: Counter[str] = Counter()  # why devices' connections ended

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
        self._tasks.append(asyncio.create_task(self._watch_loop()))
        # Each device connects and takes its starting cursor (the SDK's first sync).
        await asyncio.gather(*(self._connect(dev) for dev in self.devices))

    async def _watch_loop(self) -> None:
        """The test client's own event-loop lag: a starved client explains late figures."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            self.loop_lag_s = max(self.loop_lag_s, time.monotonic() - before - 0.1)

    # ------------------------------------------------------------------ devices

    async def _connect(self, dev: Device) -> None:
        # The device starts at its own gateway and moves on to the next one on a failure or a
        # reconnect frame (the SDK's list of URLs; a load balancer does the same).
        urls = self.urls[dev.url_index % len(self.urls) :] + self.urls[: dev.url_index % len(self.urls)]
        client = TidingsClient(
            urls,
            lambda: self.system.token(dev.user, dev.name),
            backoff=Backoff(0.1, 2.0),
            # The fault system closes sockets silent for 8 s (the e2e settings): a ping every 2 s
            # (the hand-rolled client before the SDK relied on its sends and 20 s WebSocket
            # pings, and was closed 4408 when a device sent nothing for 8 s). A pong may take 20 s
            # (what that client's `websockets` allowed): on a loaded 2-core machine a slow pong
            # is not a dead connection.
            heartbeat_s=2.0,
            pong_timeout_s=20.0,
            # The SDK's follow-up syncs after each resume stay as an app gets them: they go on
            # until the read model behind /v1/sync has caught up with the pushes. Without them a
            # run left 50 messages undelivered, and with only two fixed ones (1 s and 5 s) a
            # Kafka scenario run left 14 (not received live, applied by the persist worker after
            # the last follow-up).
            wire_tap=lambda kind, data: self._tap(dev, kind, data),
        )
        client.on(ConnectionState)(lambda event: self._on_state(dev, event))
        client.on(MessageEvent)(lambda event: dev.handed.update([event.message.message_id]))
        dev.client = client
        await client.connect(timeout=60)

    def _on_state(self, dev: Device, event: ConnectionState) -> None:
        dev.connected = event.state == "connected"
        dev.connections += dev.connected
        if not dev.connected and not self.stopping:
            # "closed 4408", "connect failed", ...; a refused upgrade keeps its status
            # ("upgrade refused: HTTP 503"): a gateway or a load balancer said no.
            refused = event.reason.startswith("upgrade refused")
            self.disconnects[event.reason if refused else event.reason.split(":")[0]] += 1

    @property
    def connected_devices(self) -> int:
        return sum(d.connected for d in self.devices)

    def _tap(self, dev: Device, kind: str, data: dict[str, Any]) -> None:
        """What the wire carried, before the SDK's own handling (its dedup above all)."""
        now = time.monotonic()
        if kind == "in":
            frame_type = data.get("type")
            if frame_type == "message":
                mid = str(data["message"]["message_id"])
                dev.received[mid] += 1
                dev.received_at.setdefault(mid, now)
            elif frame_type == "ack":
                dev.refs.pop(str(data.get("ref")), None)
                sent = self.by_cmid.get((dev.user, str(data.get("client_msg_id"))))
                if sent is not None:
                    sent.acked_ids.add(str(data["message_id"]))
            elif frame_type == "error":
                sent = dev.refs.pop(str(data.get("ref")), None)
                if sent is not None:
                    sent.answers[str(data.get("code"))] += 1
        elif kind == "out":
            sent = self.by_cmid.get((dev.user, str(data["client_msg_id"])))
            if sent is not None:
                sent.attempts += 1
                dev.refs[str(data["ref"])] = sent
        elif kind == "sync":
            for m in data.get("messages") or []:
                dev.synced.add(str(m["message_id"]))
                dev.synced_at.setdefault(str(m["message_id"]), now)

    async def _send(self, dev: Device, sent: Sent) -> None:
        assert dev.client is not None
        try:
            message = await dev.client.send(sent.cid, sent.body, client_msg_id=sent.client_msg_id)
        except ClientClosed:
            return  # unanswered when the load stopped
        except TidingsError as exc:
            sent.errors[exc.code] += 1
            sent.gave_up = True  # refused: the app would show it as not sent
            return
        sent.message_id = message.message_id
        sent.acked_at = time.monotonic()

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
            self.by_cmid[(sender, sent.client_msg_id)] = sent
            task = asyncio.create_task(self._send(dev, sent))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

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
            pending = bool(self._sends)
            missing = self._missing()
            if not pending and not missing:
                break
            if missing != last_missing or pending:
                last_change, last_missing = time.monotonic(), missing
            await asyncio.sleep(0.5)
        self.settled_s = time.monotonic() - started
        self.stopping = True
        # Closing a client ends its unacknowledged sends (ClientClosed): they stay unanswered.
        await asyncio.gather(
            *(dev.client.close() for dev in self.devices if dev.client is not None), return_exceptions=True
        )
        await asyncio.gather(*list(self._sends), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
            # The error answers that did not end the send (the SDK retried past them).
            report.retried.update(s.answers - s.errors if s.message_id is None else s.answers)
            if len(s.acked_ids) > 1:
                report.wrong_id.append(f"{s.cid}/{s.client_msg_id}: acked as {sorted(s.acked_ids)}")
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
            report.reconnects += max(0, dev.connections - 1)
            report.duplicate_deliveries += sum(n - 1 for n in dev.received.values() if n > 1)
            report.app_duplicates += [
                f"{dev.user}/{dev.name}:{mid}" for mid, n in dev.handed.items() if n > 1
            ]
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
            f"settled in {self.settled_s:.1f}s; test client loop lag max {self.loop_lag_s:.2f}s; "
            f"disconnects by reason: {dict(self.disconnects.most_common(6))}"
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
        reconnects = {f"{d.user}/{d.name}": max(0, d.connections - 1) for d in self.devices}
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
        """The longest stretch without an ack arriving while the load ran, and how long after the
        repair a message was again delivered within a second of its intended send time. (The
        SDK retries sends answered ``unavailable``, so a send made during an outage is acked after
        it: the window is measured by when acks arrived, not by when their sends were made.)"""
        if self.sent:
            first, last = self.sent[0].intended, self.sent[-1].intended
            acked_times = sorted(
                min(max(s.acked_at, first), last) for s in self.sent if s.acked_at is not None
            )
            edges = [first, *acked_times, last]
            report.outage_s = max(b - a for a, b in itertools.pairwise(edges))
        sent_at = {s.message_id: s.intended for s in self.sent if s.message_id is not None}
        latencies = sorted(
            at - sent_at[mid] for dev in self.devices for mid, at in dev.received_at.items() if mid in sent_at
        )
        if latencies:
            report.deliver_p50_ms = latencies[len(latencies) // 2] * 1000
            report.deliver_p99_ms = latencies[int(len(latencies) * 0.99)] * 1000
            report.deliver_max_ms = latencies[-1] * 1000
        if self.fault_window is not None:
            low, high = self.fault_window
            during = {mid: at for mid, at in sent_at.items() if low <= at <= high}
            arrivals = []
            for dev in self.devices:
                for mid in during:
                    first = min(dev.received_at.get(mid, float("inf")), dev.synced_at.get(mid, float("inf")))
                    if first != float("inf"):
                        arrivals.append(first - during[mid])
            arrivals.sort()
            report.fault_messages = len(during)
            if arrivals:
                report.fault_p99_ms = arrivals[int(len(arrivals) * 0.99)] * 1000
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


def recorder(reports: list[Report]) -> Callable[[Report], None]:
    """The fault suites' ``record`` fixture: keep a scenario's report for the summary and print
    it (with its notes) where it happened in the run's output."""

    def add(report: Report) -> None:
        reports.append(report)
        print(report.line())
        for note in report.notes:
            print(f"    {note}")

    return add


def summarize(terminal: Any, title: str, reports: list[Report], path: Path | None) -> None:
    """The suite's figures at the end of a run (pytest's terminal summary), and as JSON in
    ``path`` when one is given; shared by the single-node and the cluster fault suites."""
    if not reports:
        return
    terminal.section(title)
    for report in reports:
        terminal.write_line(report.line())
        for note in report.notes:
            terminal.write_line(f"    {note}")
    if path is not None:
        path.write_text(
            json.dumps(
                [{"line": r.line(), "problems": r.problems(), "notes": r.notes} for r in reports], indent=2
            )
        )
