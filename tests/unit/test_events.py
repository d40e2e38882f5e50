from typing import Any

import pytest
from pydantic import ValidationError

from events import MessageSent, decode_event, direct_conversation_id, dm_members, encode_event
from tests.factories import message_sent


def _event(**overrides: Any) -> MessageSent:
    fields: dict[str, Any] = dict(
        message_id=7260912345678901234,
        sender_device="phone",
        client_msg_id="c-1",
        body="héllo 👋",
        ts=1764283200123,
    )
    return message_sent(**{**fields, **overrides})


def test_round_trip_is_exact() -> None:
    event = _event()
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"type": "message.sent"}', b'{"type": "nope", "v": 1}', b"\xff\xfe"],
)
def test_undecodable_bytes_raise_value_error(raw: bytes) -> None:
    # Any ValueError (orjson's, pydantic's or ours) is decode_event's documented contract: the
    # callers dead-letter on the type, never on the message.
    with pytest.raises(ValueError):  # noqa: PT011
        decode_event(raw)


def test_unknown_fields_and_versions_are_rejected() -> None:
    data = encode_event(_event()).replace(b'"v":1', b'"v":2')
    with pytest.raises(ValueError):  # noqa: PT011 - as above
        decode_event(data)
    with pytest.raises(ValidationError):
        MessageSent.model_validate({**_event().model_dump(), "extra": 1})


def test_events_are_frozen() -> None:
    with pytest.raises(ValidationError):
        _event().body = "changed"


def test_direct_ids_sort_by_bytes() -> None:
    assert direct_conversation_id("alice", "Bob") == "dm:Bob:alice"
    assert direct_conversation_id("bob", "alice") == "dm:alice:bob"
    assert dm_members("dm:Bob:alice") == ("Bob", "alice")
    assert dm_members("dm:alice:alice") == ("alice", "alice")


@pytest.mark.parametrize("cid", ["dm:bob:alice", "dm:alice", "dm:a:b:c", "dm:al ice:bob", "g:1", "dm::bob"])
def test_malformed_direct_ids(cid: str) -> None:
    assert dm_members(cid) is None


def test_every_event_type_has_a_topic_and_a_key_field() -> None:
    """A new event type that no route names goes to the conversation topic: it must then carry
    a ``conversation_id`` (else it belongs in ``events.topics._ROUTES``)."""
    import typing

    from events.catalogue import ChatEvent
    from events.topics import _ROUTES, Topics

    union = typing.get_args(ChatEvent)[0]
    kinds = typing.get_args(union)
    assert len(kinds) > 10
    topics = Topics("t.")
    for kind in kinds:
        topic, field = _ROUTES.get(kind, ("conversation_events", "conversation_id"))
        assert field in kind.model_fields, (kind.__name__, field)
        assert getattr(topics, topic) in topics.all(), (kind.__name__, topic)
