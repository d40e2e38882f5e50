"""An acknowledged message survives the worker dying: it is in the log, and a restarted worker
projects it. It restarts the shared workers (both roles)."""

from __future__ import annotations

import asyncio

from events import direct_conversation_id
from tests.e2e.conftest import System, user, wait_until


async def _history(system: System, cid: str, reader: str) -> list[str]:
    status, page = system.request("GET", f"/v1/conversations/{cid}/messages?limit=100", user=reader)
    assert status == 200
    return [m["message_id"] for m in page["messages"]]


async def test_acked_messages_survive_kill_9_of_the_worker(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with system.connect(alice) as client:
        # A burst, and kill -9 the worker right after the last ack.
        for i in range(30):
            await client.send(
                {
                    "type": "send",
                    "ref": f"b{i}",
                    "client_msg_id": f"b{i}",
                    "conversation_id": cid,
                    "body": f"burst {i}",
                }
            )
        burst = [await client.expect("ack", ref=f"b{i}") for i in range(30)]
        system.kill("deliver")
        system.kill("persist")
        # Sent while no worker runs: acked (durable in Kafka) but not projected anywhere yet.
        orphan = await client.send_message(cid, "while the worker is dead")
    # The behaviour under test, not a wait: with no worker running, nothing projects the
    # orphan within a second.
    await asyncio.sleep(1.0)
    assert orphan["message_id"] not in await _history(system, cid, bob)

    system.start("deliver")
    system.start("persist")
    expected = sorted([a["message_id"] for a in burst] + [orphan["message_id"]], key=int)

    async def projected() -> bool:
        return await _history(system, cid, bob) == expected

    # the restarted worker needs a group rebalance first
    await wait_until(projected, timeout=60, interval=0.2)
    assert await _history(system, cid, bob) == expected
