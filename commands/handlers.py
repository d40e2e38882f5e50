"""Thin async handlers: take a command and the ports, decide, append."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from commands.membership import member_role
from commands.model import Limits, SendMessage, decide_send
from commands.ports import Directory, EventLog, IdempotencyStore, IdGenerator, SendRecord
from commands.rate_limits import NoLimits, RateLimiter, limit_wins
from events import DM_PREFIX, MediaRef, MessageSent, snowflake_ts
from events.errors import Conflict, RateLimited, Unavailable

log_ = logging.getLogger(__name__)
_NO_LIMITS = NoLimits()


@dataclass(frozen=True)
class SendResult:
    message_id: int
    conversation_id: str
    ts: int
    client_msg_id: str
    event: MessageSent


async def send_message(
    cmd: SendMessage,
    *,
    log: EventLog,
    idempotency: IdempotencyStore,
    ids: IdGenerator,
    limits: Limits,
    directory: Directory,
    media: MediaRef | None = None,
    limiter: RateLimiter = _NO_LIMITS,
) -> SendResult:
    """Append a ``MessageSent``, at most once per ``(sender, client_msg_id)``, within the
    sender's ``send`` rate limit.

    The key is recorded before the append. A retry finds the record and answers with the same
    ``message_id``; if the first attempt is not known to have reached the log (it failed, or is
    still in flight), the retry appends the recorded event again. The log may then hold it
    twice, which projections and clients absorb by ``message_id``.

    The rate limit is decided first, whatever else is wrong with the send (``rate_limited``
    wins over every other answer, the recorded ack of a duplicate included), but it is asked
    for together with the claim: one Redis round trip per send instead of two (issue #19).
    So the claim is made before the answer is read, and withdrawn when the send was refused.
    A send refused before its claim (invalid, not a member, ...) asks the limiter alone.
    """
    async with limit_wins(limiter, "send", cmd.sender_id):
        event = await _decide(cmd, ids=ids, limits=limits, directory=directory, media=media)
    taken = limiter.take("send", cmd.sender_id)  # queued now: it goes out with the claim
    try:
        existing = await idempotency.claim(cmd.sender_id, cmd.client_msg_id, SendRecord(event, False))
    except Exception:
        await taken  # a refusal wins over the claim's failure, as when the check went alone first
        raise
    except BaseException:
        taken.close()
        raise
    try:
        await taken
    except RateLimited:
        if existing is None:
            await _withdraw(idempotency, cmd, SendRecord(event, False))
        raise
    if existing is not None:
        prior = existing.event
        if (prior.conversation_id, prior.body, prior.ciphertext) != (
            event.conversation_id,
            event.body,
            event.ciphertext,
        ):
            raise Conflict("client_msg_id was already used for a different message")
        event = prior
        if existing.appended:
            return _result(event)
    await log.append(event)
    try:
        await idempotency.mark_appended(cmd.sender_id, cmd.client_msg_id, SendRecord(event, True))
    except Unavailable:
        # The message is durably in the log: the sender must hear so (an `unavailable` would say
        # nothing was accepted). Unmarked, a retry appends the recorded event again, which
        # readers drop by message_id.
        log_.warning("send %s is in the log but not marked in the idempotency store", event.message_id)
    return _result(event)


async def _decide(
    cmd: SendMessage, *, ids: IdGenerator, limits: Limits, directory: Directory, media: MediaRef | None
) -> MessageSent:
    """The event a send appends, once its sender is known to be a member."""
    if cmd.conversation_id.startswith(DM_PREFIX):
        # A direct chat's members are in its id: nothing to read beside the flag, and a gather
        # would cost two tasks and a loop round per send (issue #19).
        await member_role(directory, cmd.conversation_id, cmd.sender_id)
        encrypted = await directory.encrypted(cmd.conversation_id)
    else:
        # Both on the path of every send: read together.
        _, encrypted = await asyncio.gather(
            member_role(directory, cmd.conversation_id, cmd.sender_id),
            directory.encrypted(cmd.conversation_id),
        )
    message_id = ids.next_id()
    return decide_send(
        cmd,
        message_id=message_id,
        ts=snowflake_ts(message_id),
        limits=limits,
        media=media,
        encrypted=encrypted,
    )


async def _withdraw(idempotency: IdempotencyStore, cmd: SendMessage, record: SendRecord) -> None:
    try:
        await idempotency.withdraw(cmd.sender_id, cmd.client_msg_id, record)
    except Unavailable:
        # Left in place, the claim of a refused send is taken up by the client's retry (same
        # content, or 409): the message is sent once, with this attempt's id and time.
        log_.warning("claim of a send refused by its rate limit not withdrawn; a retry appends its event")


def _result(event: MessageSent) -> SendResult:
    return SendResult(event.message_id, event.conversation_id, event.ts, event.client_msg_id, event)
