"""Notifications under load while the notify worker is killed (-9) and restarted: every
acknowledged message is in exactly one notification id, and a notification that arrives
twice carries the same id and the same messages.

Used by ``tests/e2e/test_push.py`` (the shared e2e system) and by the fault suite
(``tests/faults/test_scenarios.py``, its own services).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from events import direct_conversation_id
from tests.e2e.conftest import System, wait_until
from tests.e2e.push_receiver import Receiver


@dataclass
class PushReport:
    acked: int = 0
    notifications: int = 0  # distinct ids
    deliveries: int = 0  # POSTs, duplicates included
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"push kill -9: {self.acked} messages acked, {self.notifications} notifications "
            f"({self.deliveries} POSTs, {self.deliveries - self.notifications} duplicates by id), "
            f"{len(self.problems)} problems"
        )


# A load run: send, kill and restart on a timeline, then count.
async def kill_notify_under_load(  # noqa: C901
    system: System,
    receiver: Receiver,
    *,
    receivers: int = 20,
    per_receiver: int = 12,
    send_s: float = 12.0,
    kills: tuple[tuple[float, str], ...] = ((4.0, "notify"),),
    down_s: float = 2.0,
    settle_s: float = 60.0,
) -> PushReport:
    """``receivers`` offline users with a webhook each get ``per_receiver`` messages spread
    over ``send_s``; at each of ``kills`` (seconds into the load, process) that process
    (``notify``: the notifier, ``push``: the sender) is killed -9 and started again ``down_s``
    later."""
    sender = f"s{uuid.uuid4().hex[:10]}"
    users = [f"r{uuid.uuid4().hex[:10]}" for _ in range(receivers)]
    for u in users:
        status, payload = system.request(
            "PUT",
            "/v1/devices/phone/push",
            token=system.token(u, "phone"),
            body={"provider": "webhook", "endpoint": receiver.url("ok", f"load-{u}")},
        )
        assert status == 200, payload
    acked: dict[str, list[str]] = defaultdict(list)
    started = time.monotonic()

    # The sleeps of chaos() and of the send loop are the load's timeline, not waits.
    async def chaos() -> None:
        for at, name in kills:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            system.kill(name)
            await asyncio.sleep(down_s)
            system.start(name)

    chaos_task = asyncio.create_task(chaos())
    total = receivers * per_receiver
    for i in range(total):
        await asyncio.sleep(max(0.0, started + send_s * i / total - time.monotonic()))
        u = users[i % receivers]
        # Over HTTP: a socket the gateway sends away (to reconnect) would interrupt the load.
        status, ack = await asyncio.to_thread(
            system.request,
            "POST",
            f"/v1/conversations/{direct_conversation_id(sender, u)}/messages",
            user=sender,
            body={"client_msg_id": f"c{i}", "kind": "text", "body": f"load {i}"},
        )
        assert status == 202, ack
        acked[u].append(ack["message_id"])
    await chaos_task
    report = PushReport(acked=sum(len(v) for v in acked.values()))

    def all_covered() -> bool:
        covered = {u: _covered(receiver, u) for u in users}
        return all(sum(c.values()) >= len(acked[u]) for u, c in covered.items())

    if await wait_until(all_covered, timeout=settle_s, interval=0.5):
        # Not a wait for a condition: late duplicates would show within it.
        await asyncio.sleep(3.0)
    for u in users:
        posts = receiver.to("ok", f"load-{u}")
        report.deliveries += len(posts)
        by_id: dict[str, list[Any]] = defaultdict(list)
        for post in posts:
            by_id[post.json["notification_id"]].append(post.json["conversations"])
        report.notifications += len(by_id)
        for nid, copies in by_id.items():
            if any(c != copies[0] for c in copies):
                report.problems.append(f"{u}: notification {nid} arrived with different messages: {copies}")
        count = sum(copies[0][0]["count"] for copies in by_id.values())
        if count != len(acked[u]):
            seen = sorted(
                (int(c[0][0]["last_message_id"]), c[0][0]["count"], n[:8]) for n, c in by_id.items()
            )
            report.problems.append(
                f"{u}: {len(acked[u])} messages acked, {count} in notifications: acked {acked[u]}, "
                f"notified (last id, count, id) {seen}"
            )
        last = max((int(c[0][0]["last_message_id"]) for c in by_id.values()), default=None)
        if last != max(int(m) for m in acked[u]):
            report.problems.append(f"{u}: the last message is in no notification")
    return report


def _covered(receiver: Receiver, user: str) -> dict[str, int]:
    return {
        p.json["notification_id"]: p.json["conversations"][0]["count"]
        for p in receiver.to("ok", f"load-{user}")
    }
