import pytest
from pydantic import ValidationError

from events import MessageSent, decode_event, direct_conversation_id, dm_members, encode_event


def _event(**overrides: object) -> MessageSent:
    fields: dict[str, object] = dict(
        conversation_id="dm:alice:bob",
        message_id=7260912345678901234,
        sender_id="alice",
        sender_device="phone",
        client_msg_id="c-1",
        kind="text",
        body="héllo 👋",
        ts=1764283200123,
    )
    fields.update(overrides)
    return MessageSent(**fields)  # type: ignore[arg-type]


def test_round_trip_is_exact() -> None:
    event = _event()
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"type": "message.sent"}', b'{"type": "nope", "v": 1}', b"\xff\xfe"],
)
def test_undecodable_bytes_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_event(raw)


def test_unknown_fields_and_versions_are_rejected() -> None:
    data = encode_event(_event()).replace(b'"v":1', b'"v":2')
    with pytest.raises(ValueError):
        decode_event(data)
    with pytest.raises(ValidationError):
        MessageSent.model_validate({**_event().model_dump(), "extra": 1})


def test_events_are_frozen() -> None:
    with pytest.raises(ValidationError):
        _event().body = "changed"  # type: ignore[misc]


def test_direct_ids_sort_by_bytes() -> None:
    assert direct_conversation_id("alice", "Bob") == "dm:Bob:alice"
    assert direct_conversation_id("bob", "alice") == "dm:alice:bob"
    assert dm_members("dm:Bob:alice") == ("Bob", "alice")
    assert dm_members("dm:alice:alice") == ("alice", "alice")


@pytest.mark.parametrize("cid", ["dm:bob:alice", "dm:alice", "dm:a:b:c", "dm:al ice:bob", "g:1", "dm::bob"])
def test_malformed_direct_ids(cid: str) -> None:
    assert dm_members(cid) is None
