"""Push registrations and mutes: what is refused (and then nothing is appended), and what a
valid registration records."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from commands.memory import MemoryEventLog
from commands.push import AllowedHosts, RegisterPush, register_push, set_muted, unregister_push
from events import ChatEvent, ConversationMuted, PushRegistered, PushUnregistered, decode_event, encode_event
from events.errors import Forbidden, Invalid, Unavailable

HOSTS = AllowedHosts(webhook=["127.0.0.1", "hooks.example"], webpush=["push.example"])


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


P256DH = b64(
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
)
AUTH = b64(b"0123456789abcdef")


class Store:
    def __init__(self, *, down: bool = False) -> None:
        self.events: list[ChatEvent] = []
        self.down = down

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        if self.down:
            raise Unavailable("cassandra down")
        self.events += events


def cmd(provider: str = "webhook", **kw: str | None) -> RegisterPush:
    base: dict[str, object] = {"user_id": "alice", "token_device_id": "phone", "device_id": "phone"}
    return RegisterPush(provider=provider, **{**base, **kw})  # type: ignore[arg-type]


BAD = [
    (cmd(endpoint="http://10.0.0.1/hook"), Invalid),  # host not allowed
    (cmd(endpoint="http://169.254.169.254/latest"), Invalid),
    (cmd(endpoint="ftp://127.0.0.1/x"), Invalid),
    (cmd(endpoint="not a url"), Invalid),
    (cmd(endpoint="http://user:pw@127.0.0.1/x"), Invalid),
    (cmd(endpoint="http://127.0.0.1:99999/x"), Invalid),
    (cmd(endpoint=None), Invalid),
    (cmd(endpoint="http://127.0.0.1.evil.example/x"), Invalid),
    (cmd(device_id="tablet", endpoint="http://127.0.0.1/x"), Forbidden),  # another device
    (cmd("webpush", endpoint="https://push.example/s/1", p256dh=P256DH), Invalid),  # no auth
    (cmd("webpush", endpoint="https://push.example/s/1", p256dh="!!!", auth=AUTH), Invalid),
    (
        cmd("webpush", endpoint="https://push.example/s/1", p256dh=b64(b"\x04" + b"\x01" * 64), auth=AUTH),
        Invalid,
    ),
    (cmd("webpush", endpoint="https://push.example/s/1", p256dh=P256DH, auth=b64(b"short")), Invalid),
    (cmd("webpush", endpoint="https://evil.example/s/1", p256dh=P256DH, auth=AUTH), Invalid),
    (cmd("fcm", token="short"), Invalid),
    (cmd("fcm", token="has spaces in it, which no token has"), Invalid),
    (cmd("apns", token="zz" * 32), Invalid),  # not hex
    (cmd("apns", token=None), Invalid),
]


@pytest.mark.parametrize(("command", "error"), BAD)
async def test_bad_registrations_are_refused_and_nothing_is_recorded(
    command: RegisterPush, error: type[Exception]
) -> None:
    log, store = MemoryEventLog(), Store()
    with pytest.raises(error):
        await register_push(command, log=log, store=store, hosts=HOSTS, clock=lambda: 1)
    assert log.events == [] and store.events == []


GOOD = [
    cmd(endpoint="http://127.0.0.1:8080/hook"),
    cmd(endpoint="https://HOOKS.example/x?y=1"),
    cmd("webpush", endpoint="https://push.example/s/1", p256dh=P256DH, auth=AUTH),
    cmd("fcm", token="fGx1:APA91bH-abc_def" + "x" * 100),
    cmd("apns", token="ab" * 32),
]


@pytest.mark.parametrize("command", GOOD)
async def test_good_registrations_are_appended_then_written_through(command: RegisterPush) -> None:
    log, store = MemoryEventLog(), Store()
    event = await register_push(command, log=log, store=store, hosts=HOSTS, clock=lambda: 42)
    assert isinstance(event, PushRegistered)
    assert log.events == [event] and store.events == [event]
    assert (event.provider, event.device_id, event.ts) == (command.provider, "phone", 42)
    assert decode_event(encode_event(event)) == event


async def test_a_write_through_failure_still_answers_success() -> None:
    log, store = MemoryEventLog(), Store(down=True)
    await register_push(
        cmd(endpoint="http://127.0.0.1/x"), log=log, store=store, hosts=HOSTS, clock=lambda: 1
    )
    assert len(log.events) == 1  # durable; the worker's projection writes it


async def test_unregister_and_mute_are_events() -> None:
    log, store = MemoryEventLog(), Store()
    with pytest.raises(Forbidden):
        await unregister_push("alice", "phone", "tablet", log=log, store=store, clock=lambda: 1)
    await unregister_push("alice", "phone", "phone", log=log, store=store, clock=lambda: 2)
    await set_muted("alice", "dm:alice:bob", True, log=log, store=store, clock=lambda: 3)
    assert log.events == [
        PushUnregistered(user_id="alice", device_id="phone", reason="deleted", ts=2),
        ConversationMuted(user_id="alice", conversation_id="dm:alice:bob", muted=True, ts=3),
    ]
    assert store.events == log.events
