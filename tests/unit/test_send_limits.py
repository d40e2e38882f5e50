"""What a send answers when it is also over the sender's ``send`` rate limit, row by row.

The limit is asked together with the idempotency claim (one Redis round trip per send), but
the answers are those of the check going first, as before the merge:

| the send                         | under the limit           | over the limit            |
|----------------------------------|---------------------------|---------------------------|
| new                              | ack, appended once        | 429, nothing appended,    |
|                                  |                           | no claim left behind      |
| duplicate, same content          | the recorded ack          | 429, the record kept      |
| duplicate, other content         | 409 conflict              | 429                       |
| invalid (400), too large (413),  | that error, the token     | 429                       |
| not a member (403), unknown (404)| taken all the same        |                           |
| claim store down                 | 503                       | 429                       |
| limiter down (Redis; fails open) | as under the limit        | (integration tier)        |
"""

from __future__ import annotations

from typing import Any

import pytest

from commands import Limits, SendMessage, send_message
from commands.memory import MemoryDirectory, MemoryEventLog, MemoryIdempotencyStore
from commands.ports import SendRecord
from commands.rate_limits import MemoryRateLimiter
from events import GroupCreated, Member
from events.errors import Conflict, Forbidden, Invalid, NotFound, RateLimited, TooLarge, Unavailable
from events.ids import Snowflake

GROUP = "g:1"


class _DownIdempotency(MemoryIdempotencyStore):
    async def claim(self, sender_id: str, client_msg_id: str, record: SendRecord) -> SendRecord | None:
        raise Unavailable("idempotency store down (fake)")


@pytest.fixture
def ports() -> dict[str, Any]:
    directory = MemoryDirectory()
    return {
        "log": MemoryEventLog(),
        "idempotency": MemoryIdempotencyStore(),
        "ids": Snowflake(1),
        "limits": Limits(max_body_chars=10),
        "directory": directory,
        # one send, then one every 100 s: the clock never moves, so the second is refused
        "limiter": MemoryRateLimiter({"send": (0.01, 1)}, clock=lambda: 1000.0),
    }


def _cmd(**overrides: object) -> SendMessage:
    fields: dict[str, object] = dict(
        sender_id="alice", device_id="phone", conversation_id="dm:alice:bob", client_msg_id="c-1", body="hi"
    )
    fields.update(overrides)
    return SendMessage(**fields)  # type: ignore[arg-type]


async def _use_the_token(ports: dict[str, Any]) -> None:
    await send_message(_cmd(client_msg_id="first"), **ports)


async def test_new_send_under_the_limit_is_appended(ports: dict[str, Any]) -> None:
    result = await send_message(_cmd(), **ports)
    [event] = ports["log"].events
    assert event.message_id == result.message_id
    assert ports["idempotency"].records[("alice", "c-1")] == SendRecord(event, True)


async def test_new_send_over_the_limit_is_refused_and_leaves_no_claim(ports: dict[str, Any]) -> None:
    await _use_the_token(ports)
    with pytest.raises(RateLimited) as refused:
        await send_message(_cmd(), **ports)
    assert refused.value.retry_after == 100
    assert len(ports["log"].events) == 1
    # The claim made beside the check is withdrawn: a retry later is a new send.
    assert ("alice", "c-1") not in ports["idempotency"].records


async def test_duplicate_under_the_limit_gets_the_recorded_ack(ports: dict[str, Any]) -> None:
    ports["limiter"] = MemoryRateLimiter({"send": (0.01, 2)}, clock=lambda: 1000.0)
    first = await send_message(_cmd(), **ports)
    again = await send_message(_cmd(device_id="laptop"), **ports)
    assert (again.message_id, again.ts) == (first.message_id, first.ts)
    assert len(ports["log"].events) == 1


async def test_duplicate_over_the_limit_is_refused_and_its_record_kept(ports: dict[str, Any]) -> None:
    first = await send_message(_cmd(), **ports)
    with pytest.raises(RateLimited):
        await send_message(_cmd(), **ports)
    assert ports["idempotency"].records[("alice", "c-1")] == SendRecord(first.event, True)
    assert len(ports["log"].events) == 1


async def test_duplicate_with_other_content_over_the_limit_is_refused(ports: dict[str, Any]) -> None:
    await send_message(_cmd(), **ports)
    with pytest.raises(RateLimited):
        await send_message(_cmd(body="other"), **ports)


async def test_duplicate_with_other_content_under_the_limit_is_a_conflict(ports: dict[str, Any]) -> None:
    ports["limiter"] = MemoryRateLimiter({"send": (0.01, 2)}, clock=lambda: 1000.0)
    await send_message(_cmd(), **ports)
    with pytest.raises(Conflict):
        await send_message(_cmd(body="other"), **ports)


REJECTED = [
    ({"body": "   "}, Invalid),
    ({"body": "x" * 11}, TooLarge),
    ({"conversation_id": GROUP}, Forbidden),
    ({"conversation_id": "g:404"}, NotFound),
    ({"conversation_id": "dm:bob:alice"}, Invalid),
]


async def _with_group(ports: dict[str, Any]) -> None:
    """A group alice is not in."""
    members = (Member(user_id="bob", role="owner"), Member(user_id="carol", role="member"))
    created = GroupCreated(
        conversation_id=GROUP, event_id=1, actor_id="bob", ts=1, title="t", members=members, member_count=2
    )
    await ports["directory"].apply([created])


@pytest.mark.parametrize(("overrides", "error"), REJECTED)
async def test_a_rejected_send_takes_its_token(ports: dict[str, Any], overrides: dict, error: type) -> None:
    await _with_group(ports)
    with pytest.raises(error):
        await send_message(_cmd(**overrides), **ports)
    with pytest.raises(RateLimited):  # the rejected send used the only token
        await send_message(_cmd(client_msg_id="next"), **ports)
    assert ports["log"].events == [] and ports["idempotency"].records == {}


@pytest.mark.parametrize(("overrides", "error"), REJECTED)
async def test_a_rejected_send_over_the_limit_is_refused(
    ports: dict[str, Any], overrides: dict, error: type
) -> None:
    await _with_group(ports)
    await _use_the_token(ports)
    with pytest.raises(RateLimited):
        await send_message(_cmd(**overrides), **ports)
    assert len(ports["log"].events) == 1 and list(ports["idempotency"].records) == [("alice", "first")]


async def test_claim_store_down_is_unavailable_under_the_limit_or_refused(ports: dict[str, Any]) -> None:
    ports["idempotency"] = _DownIdempotency()
    with pytest.raises(Unavailable):
        await send_message(_cmd(), **ports)
    with pytest.raises(RateLimited):  # the failed send took the token
        await send_message(_cmd(client_msg_id="next"), **ports)
    assert ports["log"].events == []


async def test_a_claim_written_over_since_is_not_withdrawn() -> None:
    store = MemoryIdempotencyStore()
    ours = SendRecord(_event(1), False)
    assert await store.claim("alice", "c-1", ours) is None
    await store.mark_appended("alice", "c-1", SendRecord(_event(1), True))
    await store.withdraw("alice", "c-1", ours)
    assert store.records[("alice", "c-1")] == SendRecord(_event(1), True)
    await store.withdraw("alice", "c-1", SendRecord(_event(1), True))
    assert store.records == {}


def _event(message_id: int) -> Any:
    from tests.factories import message_sent

    return message_sent(message_id)


async def test_messaging_refuses_a_bad_command_over_the_limit(ports: dict[str, Any]) -> None:
    """What fails before ``send_message`` (here the command itself: a conversation id too long
    for it) is refused as rate_limited over the limit too, as when the check went first."""
    from pydantic import ValidationError

    from projections.wire import SendFields
    from query_api.services import Messaging

    messaging = Messaging(
        event_log=ports["log"],
        idempotency=ports["idempotency"],
        ids=ports["ids"],
        limits=ports["limits"],
        directory=ports["directory"],
        watermarks=None,  # type: ignore[arg-type]  # no receipts here
        limiter=ports["limiter"],
    )
    fields = SendFields(client_msg_id="c-1", kind="text", body="hi")
    too_long = "dm:alice:" + "b" * 300
    with pytest.raises(ValidationError):
        await messaging.send("alice", "phone", too_long, fields)
    with pytest.raises(RateLimited):
        await messaging.send("alice", "phone", too_long, fields)
    assert ports["log"].events == [] and ports["idempotency"].records == {}
