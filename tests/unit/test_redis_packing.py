"""The Redis clients pack commands with hiredis (``HiredisPackingConnection``): the same bytes
as redis-py's pure-Python packer of its asyncio client, the same error for what it cannot send."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Connection
from redis.exceptions import DataError

from projections.adapters.redis_client import HiredisPackingConnection, make_redis

# The shapes of the commands Tidings sends: keys and text (ASCII and not), binary payloads,
# script arguments as ints and floats, a multi-word command name, buffers.
COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "idem:{u1}:c1", b'{"appended":false,"event":{}}', "NX", "EX", 86_400, "GET"),
    ("SET", "idem:{u1}:c1", b'{"appended":true}', "XX", "KEEPTTL"),
    ("EVALSHA", "a" * 40, 1, "rate:send:u1", 10.0, 20),
    ("EVALSHA", "b" * 40, 2, "k1", "k2", 1 / 3, -0.0, 2**70, 1e-7, float("inf")),
    ("PUBLISH", "deliver:u:ü", b"m\x00\xff" * 100),
    ("HSET", "presence:{é}", "tokens", "9.75", "at", 1_733_000_000_000),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "gw"),
    ("SET", "big", b"x" * 20_000),
    ("SET", "view", memoryview(b"abc")),
    ("SET", "array", bytearray(b"abc")),
]


def _bytes(chunks: list[Any]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]))
def test_hiredis_packs_the_same_bytes_as_the_python_packer(args: tuple[Any, ...]) -> None:
    assert _bytes(HiredisPackingConnection().pack_command(*args)) == _bytes(Connection().pack_command(*args))


def test_a_pipeline_of_commands_packs_the_same_bytes() -> None:
    assert _bytes(HiredisPackingConnection().pack_commands(COMMANDS)) == _bytes(
        Connection().pack_commands(COMMANDS)
    )


@pytest.mark.parametrize("bad", [True, None, object()])
def test_what_cannot_be_sent_is_the_same_data_error(bad: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        HiredisPackingConnection().pack_command("SET", "k", bad)


def test_hiredis_is_what_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    def python_packer(self: Any, *args: Any) -> list[bytes]:
        raise AssertionError("the pure-Python packer ran")

    monkeypatch.setattr(Connection, "pack_command", python_packer)
    assert _bytes(HiredisPackingConnection().pack_command("GET", "k")) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


def test_another_encoding_keeps_the_python_packer() -> None:
    latin = HiredisPackingConnection(encoding="latin-1")
    assert _bytes(latin.pack_command("SET", "k", "é")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"


async def test_the_single_instance_client_uses_it() -> None:
    client = make_redis("127.0.0.1", 1)
    try:
        assert client.connection_pool.connection_class is HiredisPackingConnection
    finally:
        await client.aclose()
