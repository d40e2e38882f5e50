"""The 1:1 generator's last check: a message not pushed within the straggler wait is looked for
in its conversation's history, to tell late from lost (bench/e2e_1to1.py)."""

from __future__ import annotations

from typing import Any

from bench.e2e_1to1 import Pending, find_in_history, late_or_lost


class History:
    """Conversations' histories served a page at a time, ascending by message_id, where
    ``arrivals`` are stored on the given look at the conversation (a backlog draining)."""

    def __init__(
        self, stored: dict[str, list[str]], arrivals: dict[str, list[tuple[int, str]]] | None = None
    ) -> None:
        self.stored = {cid: list(ids) for cid, ids in stored.items()}
        self.arrivals = arrivals or {}
        self.looks: dict[str, int] = {}
        self.pages = 0
        self.page_size = 2

    async def page(self, cid: str, after: int) -> tuple[list[dict[str, Any]], bool]:
        self.pages += 1
        if after == 0:  # a new look at the conversation, from its start
            self.looks[cid] = self.looks.get(cid, 0) + 1
            for look, cmid in self.arrivals.get(cid, []):
                if look == self.looks[cid]:
                    self.stored.setdefault(cid, []).append(cmid)
        rows = [
            {"message_id": str(i + 1), "client_msg_id": c} for i, c in enumerate(self.stored.get(cid, []))
        ]
        newer = [r for r in rows if int(r["message_id"]) > after]
        return newer[: self.page_size], len(newer) > self.page_size


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_every_page_is_read_and_a_stored_message_is_found_at_the_first_look() -> None:
    history = History({"dm:a:b": ["m1", "m2", "m3", "m4", "m5"]})
    clock = Clock()
    found, unread = await find_in_history(
        {"dm:a:b": {"m5", "m2"}}, history.page, wait_s=60, clock=clock, sleep=clock.sleep
    )
    assert (found, unread) == ({"m2", "m5"}, set())
    assert history.pages == 3  # m5 is on the third page of two
    assert clock.sleeps == []


async def test_a_message_stored_late_is_found_on_a_later_look() -> None:
    history = History({"dm:a:b": ["m1"], "dm:c:d": ["m9"]}, arrivals={"dm:a:b": [(3, "m2")]})
    clock = Clock()
    found, _ = await find_in_history(
        {"dm:a:b": {"m2"}, "dm:c:d": {"m9"}},
        history.page,
        wait_s=60,
        pause_s=2,
        clock=clock,
        sleep=clock.sleep,
    )
    assert found == {"m2", "m9"}
    assert history.looks == {"dm:a:b": 3, "dm:c:d": 1}  # a conversation found whole is not read again
    assert clock.sleeps == [2, 2]


async def test_a_message_never_stored_is_missing_once_the_wait_is_over() -> None:
    history = History({"dm:a:b": ["m1", "m2"]})
    clock = Clock()
    found, unread = await find_in_history(
        {"dm:a:b": {"m2", "m3"}}, history.page, wait_s=10, pause_s=2, clock=clock, sleep=clock.sleep
    )
    assert (found, unread) == ({"m2"}, set())
    assert history.looks == {"dm:a:b": 6}  # at 0, 2, 4, 6, 8 and 10 s
    assert clock.now == 10


async def test_nothing_wanted_reads_nothing() -> None:
    history = History({"dm:a:b": ["m1"]})
    assert await find_in_history({"dm:a:b": set()}, history.page, wait_s=10) == (set(), set())
    assert history.pages == 0


async def test_a_conversation_whose_history_cannot_be_read_is_neither_found_nor_missing() -> None:
    history = History({"dm:a:b": ["m1"], "dm:c:d": ["m8"]}, arrivals={"dm:c:d": [(2, "m9")]})
    errors = {"dm:a:b": 99, "dm:c:d": 1}  # reads that fail, per conversation

    async def flaky(cid: str, after: int) -> tuple[list[dict[str, Any]], bool]:
        if errors[cid]:
            errors[cid] -= 1
            history.looks[cid] = history.looks.get(cid, 0) + 1
            raise OSError("HTTP Error 503: Service Unavailable")
        return await history.page(cid, after)

    clock = Clock()
    found, unread = await find_in_history(
        {"dm:a:b": {"m1"}, "dm:c:d": {"m9"}}, flaky, wait_s=10, pause_s=2, clock=clock, sleep=clock.sleep
    )
    assert found == {"m9"}  # read again after its failure, and stored meanwhile
    assert unread == {"m1"}  # never read: not counted as lost


def test_only_measured_messages_neither_delivered_nor_refused_are_looked_for() -> None:
    def pending(measured: bool, delivered: bool = False, failed: bool = False) -> Pending:
        p = Pending(0, measured, "dm:a:b")
        p.delivered, p.failed = delivered, failed
        return p

    items = [
        ("warmup", pending(False)),
        ("delivered", pending(True, delivered=True)),
        ("refused", pending(True, failed=True)),
        ("late", pending(True)),
    ]
    assert late_or_lost(items) == {"dm:a:b": {"late"}}
