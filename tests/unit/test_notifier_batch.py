"""The notifier reads the registrations of a batch's direct recipients in one query, and
makes the same jobs as one message at a time (issue #19)."""

from __future__ import annotations

from collections.abc import Sequence

from events import MessageSent, Role
from projections.push import Registration
from streams.notify import Notifier
from streams.push_model import Job
from tests.factories import message_sent


def _reg(user: str, device: str) -> Registration:
    return Registration(user, device, "webhook", "http://x", None, None, None, 1)


class Fakes:
    def __init__(self) -> None:
        self.registration_calls: list[list[str]] = []
        self.devices = {"bob": [_reg("bob", "b1"), _reg("bob", "b2")], "carol": [_reg("carol", "c1")]}
        self.muted_in = {"dm:alice:carol": {"carol"}}
        self.online_devices = {"bob": {"b2"}}
        self.jobs: list[Job] = []

    async def members_page(self, conversation_id: str, *, after: str, limit: int) -> list[tuple[str, Role]]:
        members = ["alice", "bob", "carol"] if not after else []
        return [(m, "member") for m in members]

    async def registrations(self, user_ids: Sequence[str]) -> list[Registration]:
        self.registration_calls.append(list(user_ids))
        return [r for u in user_ids for r in self.devices.get(u, [])]

    async def muted(self, conversation_id: str) -> set[str]:
        return self.muted_in.get(conversation_id, set())

    async def online(self, user_ids: Sequence[str]) -> dict[str, set[str]]:
        return {u: self.online_devices[u] for u in user_ids if u in self.online_devices}

    async def emit(self, jobs: Sequence[Job]) -> None:
        self.jobs += jobs


def _notifier(f: Fakes) -> Notifier:
    return Notifier(members=f, push=f, online=f, emit=f.emit)


def _batch() -> list[MessageSent]:
    return [
        message_sent(1),  # alice -> bob: b1 (b2 is online)
        message_sent(2, conversation_id="dm:alice:carol"),  # carol muted it: none
        message_sent(3, conversation_id="dm:bob:dave", sender_id="dave"),  # bob again
        message_sent(4, conversation_id="g:team"),  # a group: bob and carol
        message_sent(5, conversation_id="dm:alice:erin"),  # erin has no device
    ]


async def test_one_registrations_query_for_the_direct_messages_of_a_batch() -> None:
    f = Fakes()
    await _notifier(f).apply(_batch())
    direct_calls = [c for c in f.registration_calls if "erin" in c]
    assert direct_calls == [["bob", "carol", "erin"]]
    assert len(f.registration_calls) == 2  # the direct ones, and the group's own


async def test_same_jobs_as_one_message_at_a_time() -> None:
    batched, single = Fakes(), Fakes()
    await _notifier(batched).apply(_batch())
    for event in _batch():
        await _notifier(single).apply([event])
    assert batched.jobs == single.jobs
    assert [(j.message_id, j.device_id) for j in batched.jobs] == [(1, "b1"), (3, "b1"), (4, "b1"), (4, "c1")]
