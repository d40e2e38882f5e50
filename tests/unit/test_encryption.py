"""Encrypted conversations on the write side, with the in-memory ports: the send rules, turning a
direct chat's encryption on (once), the read model's statements, and the events' encoding."""

from __future__ import annotations

import base64

import pytest

from commands import Limits, SendMessage, send_message
from commands.encryption import enable_direct_encryption
from commands.groups import CreateGroup, decide_create
from commands.memory import MemoryDirectory, MemoryEventLog, MemoryIdempotencyStore
from events import EncryptionEnabled, GroupCreated, MessageSent, decode_event, encode_event
from events.errors import Conflict, Invalid, TooLarge
from events.ids import Snowflake
from projections import encryption
from projections.wire import message_object

CID = "dm:alice:bob"
GOOD = {
    "kind": "encrypted",
    "ciphertext": base64.b64encode(b"\x03" * 90).decode().rstrip("="),
    "algorithm": "megolm.v1",
    "session_id": "c2Vzc2lvbi1pZA",
    "sender_device": "phone",
}


@pytest.fixture
def ports() -> dict[str, object]:
    return {
        "log": MemoryEventLog(),
        "idempotency": MemoryIdempotencyStore(),
        "ids": Snowflake(1),
        "limits": Limits(max_body_chars=10),
        "directory": MemoryDirectory(),
    }


def _cmd(n: int = 1, /, **fields: object) -> SendMessage:
    base: dict[str, object] = {"sender_id": "alice", "device_id": "phone", "conversation_id": CID}
    return SendMessage(**base, client_msg_id=f"c{n}", **fields)  # type: ignore[arg-type]


async def _encrypt(ports: dict) -> None:
    await enable_direct_encryption(
        "bob", CID, log=ports["log"], directory=ports["directory"], ids=ports["ids"]
    )


async def test_an_encrypted_send_carries_the_ciphertext_unchanged_and_no_body(ports: dict) -> None:
    await _encrypt(ports)
    await send_message(_cmd(**GOOD), **ports)
    event = ports["log"].events[-1]
    assert isinstance(event, MessageSent) and event.kind == "encrypted" and event.body == ""
    assert (event.ciphertext, event.algorithm, event.session_id) == (
        GOOD["ciphertext"],
        GOOD["algorithm"],
        GOOD["session_id"],
    )
    obj = message_object(event)
    assert obj["body"] is None and obj["sender_device"] == "phone" and obj["ciphertext"] == GOOD["ciphertext"]
    assert list(obj)[-1] == "ts"  # message_frame_ts reads it from the frame's tail


async def test_the_kind_must_match_the_conversation(ports: dict) -> None:
    with pytest.raises(Invalid):
        await send_message(_cmd(**GOOD), **ports)  # plaintext conversation
    await send_message(_cmd(2, body="before"), **ports)
    await _encrypt(ports)
    with pytest.raises(Invalid):
        await send_message(_cmd(3, body="after"), **ports)
    assert [e.kind for e in ports["log"].events if isinstance(e, MessageSent)] == ["text"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"ciphertext": "not base64!"}, Invalid),
        ({"ciphertext": "QUJD=QUJD"}, Invalid),
        ({"ciphertext": "QUJDR"}, Invalid),  # a length base64 never has
        ({"ciphertext": "QUJD===="}, Invalid),
        ({"ciphertext": "A" * (64 * 1024 + 4)}, TooLarge),
        ({"ciphertext": None}, Invalid),
        ({"ciphertext": ""}, Invalid),
        ({"algorithm": None}, Invalid),
        ({"algorithm": "megolm v1"}, Invalid),
        ({"algorithm": "a" * 65}, Invalid),
        ({"session_id": None}, Invalid),
        ({"session_id": "s" * 129}, Invalid),
        ({"session_id": "bad id"}, Invalid),
        ({"sender_device": None}, Invalid),
        ({"sender_device": "another-device"}, Invalid),
        ({"body": "the plaintext"}, Invalid),
        ({"media_id": "m1"}, Invalid),
    ],
)
async def test_malformed_encrypted_sends_are_refused_and_nothing_is_appended(
    ports: dict, change: dict[str, object], error: type[Exception]
) -> None:
    await _encrypt(ports)
    before = list(ports["log"].events)
    with pytest.raises(error):
        await send_message(_cmd(**{**GOOD, **change}), **ports)
    assert ports["log"].events == before


async def test_envelope_fields_on_a_plaintext_send_are_refused(ports: dict) -> None:
    with pytest.raises(Invalid):
        await send_message(_cmd(body="hi", ciphertext="QUJD"), **ports)


async def test_a_retry_with_other_ciphertext_is_a_conflict(ports: dict) -> None:
    await _encrypt(ports)
    await send_message(_cmd(**GOOD), **ports)
    with pytest.raises(Conflict):
        await send_message(_cmd(**{**GOOD, "ciphertext": "QUJDRA"}), **ports)


async def test_encryption_of_a_direct_chat_is_one_event_whoever_asks_again(ports: dict) -> None:
    await _encrypt(ports)
    again = await enable_direct_encryption(
        "alice", CID, log=ports["log"], directory=ports["directory"], ids=ports["ids"]
    )
    assert again is None
    assert [type(e) for e in ports["log"].events] == [EncryptionEnabled]
    with pytest.raises(Invalid):
        await enable_direct_encryption(
            "carol", CID, log=ports["log"], directory=ports["directory"], ids=ports["ids"]
        )
    with pytest.raises(Invalid):
        await enable_direct_encryption(
            "alice", "g:1", log=ports["log"], directory=ports["directory"], ids=ports["ids"]
        )


def test_the_read_model_rows_come_from_the_flag_only() -> None:
    plain = decide_create(CreateGroup(actor_id="a", title="t"), event_id=5, ts=1, max_members=10)
    secret = decide_create(
        CreateGroup(actor_id="a", title="t", encrypted=True), event_id=6, ts=1, max_members=10
    )
    assert encryption.statements(plain) == []
    assert encryption.statements(secret) == [(encryption._INSERT, ("g:6",))]
    enabled = EncryptionEnabled(conversation_id=CID, event_id=7, actor_id="alice", ts=1)
    assert encryption.statements(enabled) == [(encryption._INSERT, (CID,))]


def test_plaintext_events_are_encoded_as_before_and_encrypted_ones_round_trip() -> None:
    text = MessageSent(
        conversation_id=CID,
        message_id=1,
        sender_id="a",
        sender_device="d",
        client_msg_id="c",
        kind="text",
        body="x",
        ts=1,
    )
    assert b"ciphertext" not in encode_event(text) and decode_event(encode_event(text)) == text
    group = decide_create(CreateGroup(actor_id="a", title="t"), event_id=5, ts=1, max_members=10)
    assert b"encrypted" not in encode_event(group) and decode_event(encode_event(group)) == group
    secret = decide_create(
        CreateGroup(actor_id="a", title="t", encrypted=True), event_id=6, ts=1, max_members=10
    )
    assert isinstance(decoded := decode_event(encode_event(secret)), GroupCreated) and decoded.encrypted
    sealed = MessageSent(
        conversation_id=CID,
        message_id=2,
        sender_id="a",
        sender_device="d",
        client_msg_id="c2",
        kind="encrypted",
        body="",
        ts=1,
        ciphertext="QUJD",
        algorithm="megolm.v1",
        session_id="s",
    )
    assert decode_event(encode_event(sealed)) == sealed
