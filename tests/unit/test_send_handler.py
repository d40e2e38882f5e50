import pytest

from commands import Limits, SendMessage, send_message
from commands.memory import MemoryDirectory, MemoryEventLog, MemoryIdempotencyStore
from events import MessageSent, snowflake_ts
from events.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unavailable
from events.ids import Snowflake


@pytest.fixture
def ports() -> dict[str, object]:
    return {
        "log": MemoryEventLog(),
        "idempotency": MemoryIdempotencyStore(),
        "ids": Snowflake(1),
        "limits": Limits(max_body_chars=10),
        "directory": MemoryDirectory(),
    }


def _cmd(**overrides: object) -> SendMessage:
    fields: dict[str, object] = dict(
        sender_id="alice", device_id="phone", conversation_id="dm:alice:bob", client_msg_id="c-1", body="hi"
    )
    fields.update(overrides)
    return SendMessage(**fields)  # type: ignore[arg-type]


async def test_send_appends_one_event_with_the_ids(ports: dict) -> None:
    result = await send_message(_cmd(), **ports)
    [event] = ports["log"].events
    assert isinstance(event, MessageSent)
    assert event.message_id == result.message_id
    assert event.ts == snowflake_ts(result.message_id) == result.ts
    assert (event.sender_id, event.sender_device, event.body) == ("alice", "phone", "hi")


async def test_retry_with_same_client_msg_id_sends_nothing_twice(ports: dict) -> None:
    first = await send_message(_cmd(), **ports)
    again = await send_message(_cmd(device_id="laptop"), **ports)
    assert again.message_id == first.message_id
    assert len(ports["log"].events) == 1


async def test_retry_after_a_failed_append_reappends_the_same_event(ports: dict) -> None:
    ports["log"].fail_next = 1
    with pytest.raises(Unavailable):
        await send_message(_cmd(), **ports)
    assert ports["log"].events == []
    result = await send_message(_cmd(), **ports)
    [event] = ports["log"].events
    recorded = ports["idempotency"].records[("alice", "c-1")]
    assert recorded.appended and recorded.event == event
    assert event.message_id == result.message_id


async def test_same_client_msg_id_for_another_message_is_a_conflict(ports: dict) -> None:
    await send_message(_cmd(), **ports)
    with pytest.raises(Conflict):
        await send_message(_cmd(body="other"), **ports)


async def test_client_msg_ids_are_per_sender(ports: dict) -> None:
    a = await send_message(_cmd(), **ports)
    b = await send_message(_cmd(sender_id="bob"), **ports)
    assert a.message_id != b.message_id


async def test_ids_increase_across_sends(ports: dict) -> None:
    ids = [(await send_message(_cmd(client_msg_id=f"c-{i}"), **ports)).message_id for i in range(20)]
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"sender_id": "carol"}, Forbidden),
        ({"conversation_id": "dm:bob:alice"}, Invalid),
        ({"conversation_id": "g:123"}, NotFound),
        ({"body": "x" * 11}, TooLarge),
        ({"body": "   "}, Invalid),
        ({"kind": "image", "body": ""}, Invalid),
        ({"kind": "image", "media_id": "m1"}, NotFound),
        ({"media_id": "m1"}, Invalid),
    ],
)
async def test_rejected_sends_append_and_record_nothing(ports: dict, overrides: dict, error: type) -> None:
    with pytest.raises(error):
        await send_message(_cmd(**overrides), **ports)
    assert ports["log"].events == []
    assert ports["idempotency"].records == {}


async def test_body_limit_counts_characters_not_bytes(ports: dict) -> None:
    await send_message(_cmd(body="é" * 10), **ports)  # 20 bytes, 10 characters
    assert len(ports["log"].events) == 1
