"""The notifier: which devices get a notification job for each message (docs/push.md).

A stage of the ``notify`` worker over the conversation events (so the projector's retries and
dead letters hold). For each ``MessageSent``: the conversation's members but the sender, those
of them with a registered device, minus those who muted the conversation, minus the devices
with an open socket right now; one job per remaining device goes to the notifications topic,
keyed by user, awaited before the batch's offsets can be committed.

Large groups (at or above the fan-out threshold) take the same path in bounded steps: members
are read 1,000 per page and their registrations 100 users per query, so one message costs
``members / 1000 + members / 100`` reads and jobs only for members with a registered device.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from events import ChatEvent, MessageSent, Role, dm_members
from projections.push import Registration
from streams.push_model import Job, preview_of

MEMBERS_PAGE = 1000


class Members(Protocol):
    async def members_page(
        self, conversation_id: str, *, after: str, limit: int
    ) -> list[tuple[str, Role]]: ...


class PushSettings(Protocol):
    async def registrations(self, user_ids: Sequence[str]) -> list[Registration]: ...
    async def muted(self, conversation_id: str) -> set[str]: ...


class OnlineDevices(Protocol):
    async def online(self, user_ids: Sequence[str]) -> dict[str, set[str]]: ...


Emit = Callable[[Sequence[Job]], Awaitable[None]]


class Notifier:
    name = "notify"

    def __init__(self, *, members: Members, push: PushSettings, online: OnlineDevices, emit: Emit) -> None:
        self._members = members
        self._push = push
        self._online = online
        self._emit = emit
        self.jobs_emitted = 0

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        jobs: list[Job] = []
        sent = [event for event in events if isinstance(event, MessageSent)]
        # A direct message's recipient needs no read: the registrations of all of a batch's
        # direct recipients come in one query (100 users each), not one query per message.
        direct = {
            event.message_id: [u for u in dict.fromkeys(pair) if u != event.sender_id]
            for event in sent
            if (pair := dm_members(event.conversation_id)) is not None
        }
        users = list(dict.fromkeys(u for recipients in direct.values() for u in recipients))
        by_user: dict[str, list[Registration]] = {}
        for registration in await self._push.registrations(users) if users else []:
            by_user.setdefault(registration.user_id, []).append(registration)
        for event in sent:
            recipients = direct.get(event.message_id)
            if recipients is None:
                jobs += await self.jobs_for(event)
            else:
                jobs += await self._jobs(event, [r for u in recipients for r in by_user.get(u, [])])
        if jobs:
            await self._emit(jobs)
            self.jobs_emitted += len(jobs)

    async def _recipients(self, event: MessageSent) -> list[str]:
        pair = dm_members(event.conversation_id)
        if pair is not None:
            return [u for u in dict.fromkeys(pair) if u != event.sender_id]
        out: list[str] = []
        after = ""
        while True:
            page = await self._members.members_page(event.conversation_id, after=after, limit=MEMBERS_PAGE)
            out += [u for u, _ in page if u != event.sender_id]
            if len(page) < MEMBERS_PAGE:
                return out
            after = page[-1][0]

    async def jobs_for(self, event: MessageSent) -> list[Job]:
        recipients = await self._recipients(event)
        if not recipients:
            return []
        return await self._jobs(event, await self._push.registrations(recipients))

    async def _jobs(self, event: MessageSent, registered: list[Registration]) -> list[Job]:
        """The jobs for ``event`` given its recipients' registered devices."""
        if not registered:
            return []
        muted = await self._push.muted(event.conversation_id)
        registered = [r for r in registered if r.user_id not in muted]
        online = await self._online.online(list(dict.fromkeys(r.user_id for r in registered)))
        direct = dm_members(event.conversation_id) is not None
        preview = preview_of(event.kind, event.body)
        return [
            Job(
                user_id=r.user_id,
                device_id=r.device_id,
                conversation_id=event.conversation_id,
                message_id=event.message_id,
                sender_id=event.sender_id,
                preview=preview,
                direct=direct,
                ts=event.ts,
            )
            for r in registered
            if r.device_id not in online.get(r.user_id, set())
        ]
