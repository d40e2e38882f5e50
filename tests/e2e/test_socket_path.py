"""The gateway's lean WebSocket path (``query_api.lean_ws``) against the running gateway: frames
of a connection are answered in the order sent even when pipelined and mixed with frames that
wait on I/O; fragmented messages are assembled; a client that never reads is disconnected with
1013 and costs bounded memory; sockets of one user opening and closing at once are all served
(the hub subscribes in batches)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import struct
import time
import urllib.request
import uuid
from typing import Any

import orjson
import pytest
import websockets

from events import direct_conversation_id
from tests.e2e.conftest import System, user


async def test_pipelined_frames_are_answered_in_the_order_sent(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)
    async with system.connect(alice) as client:
        await client.send({"type": "ping", "ref": "ready"})  # registered: replies flow
        await client.expect("pong", ref="ready")
        expected = []
        frames = []
        for i in range(150):
            ref = str(i)
            if i % 5 == 0:  # waits on Kafka: an ack
                frames.append(
                    {
                        "type": "send",
                        "ref": ref,
                        "client_msg_id": uuid.uuid4().hex,
                        "conversation_id": cid,
                        "kind": "text",
                        "body": f"m{i}",
                    }
                )
                expected.append(("ack", ref))
            elif i % 5 == 1:  # waits on the membership read model: an error
                frames.append({"type": "view", "ref": ref, "conversation_id": "g:404"})
                expected.append(("error", ref))
            elif i % 5 == 2:  # answered on the spot
                frames.append({"type": "warp", "ref": ref})
                expected.append(("error", ref))
            else:
                frames.append({"type": "ping", "ref": ref})
                expected.append(("pong", ref))
        # Sent without reading in between: the gateway receives them in bursts, and the ones
        # waiting on I/O hold the ones behind them.
        for f in frames:
            await client.ws.send(orjson.dumps(f).decode())
        got: list[Any] = []
        while len(got) < len(expected):
            frame = orjson.loads(await asyncio.wait_for(client.ws.recv(), 30))
            if frame["type"] in ("ack", "error", "pong"):
                got.append((frame["type"], frame["ref"]))
        assert got == expected


async def test_a_fragmented_text_message_is_one_frame(system: System) -> None:
    async with system.connect(user()) as client:
        await client.ws.send(['{"type": "pi', 'ng", "re', 'f": "frag"}'])
        await client.expect("pong", ref="frag")
        await client.ws.send([b'{"type": ', b'"ping"}'])  # binary, fragmented
        assert (await client.expect("error"))["code"] == "invalid"


async def test_oversized_binary_and_invalid_utf8_frames_get_their_protocol_answers(system: System) -> None:
    async with system.connect(user()) as client:
        await client.send('{"type": "ping", "ref": "big", "pad": "' + "x" * 70_000 + '"}')
        error = await client.expect("error")
        assert error["code"] == "too_large" and error["ref"] is None
        await client.send(b'{"type": "ping"}')
        assert (await client.expect("error"))["code"] == "invalid"
        await client.send({"type": "ping", "ref": "alive"})
        await client.expect("pong", ref="alive")
    async with system.connect(user()) as client:
        await client.ws.send(b'{"type": "ping", "ref": "\xff"}', text=True)
        # The socket must close rather than answer an invalid UTF-8 frame.
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(client.ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007, closed.value


def _metric(system: System, name: str) -> float:
    with urllib.request.urlopen(f"{system.http}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked frame (text unless told), as a client sends it."""
    mask = os.urandom(4)
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    head = bytes([0x80 | opcode]) + length
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked frames in ``data`` (a truncated tail is left out)."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, n = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if n == 126:
            (n,), at = struct.unpack("!H", data[at : at + 2]), at + 2
        elif n == 127:
            (n,), at = struct.unpack("!Q", data[at : at + 8]), at + 8
        if at + n > len(data):
            break
        frames.append((opcode, data[at : at + n]))
        at += n
    return frames


def _upgraded(system: System) -> socket.socket:
    """A raw TCP connection through the WebSocket upgrade, with a small receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.connect(("127.0.0.1", system.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/ws?token={system.token(user())} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_a_client_that_never_reads_is_closed_with_1013_and_memory_stays_bounded(system: System) -> None:
    gateway_pid = system.procs["gateway"].pid
    before_mb = _rss_mb(gateway_pid)
    slow_before = _metric(system, "tidings_ws_slow_client_disconnects_total")
    sock = _upgraded(system)
    # Each frame is answered by a 4 KB error frame (its ref echoed) that this client never
    # reads: 6,000 of them (24 MB) are far more than the socket buffers and the gateway's
    # backlog of 1,024 frames hold.
    frame = _client_frame(orjson.dumps({"type": "warp", "ref": "r" * 4000}))
    sock.settimeout(30)
    sent = 0
    try:
        for _ in range(6000):
            sock.sendall(frame)
            sent += 1
    except OSError:
        pass  # the gateway gave up on us first: closed, or reset
    deadline = time.monotonic() + 30
    while _metric(system, "tidings_ws_slow_client_disconnects_total") <= slow_before:
        assert time.monotonic() < deadline, f"not disconnected after {sent} frames"
        time.sleep(0.2)
    grown_mb = _rss_mb(gateway_pid) - before_mb
    data = b""
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except OSError:
        pass  # reset after the close timeout: what was read is what counts
    sock.close()
    closes = [payload for opcode, payload in _server_frames(data) if opcode == 0x8]
    assert closes and struct.unpack("!H", closes[0][:2])[0] == 1013, (len(data), closes[:1])
    assert b"send queue full" in closes[0]
    print(f"gateway RSS grew {grown_mb:.1f} MB while a client did not read")
    assert grown_mb < 60, grown_mb


def test_a_client_that_pings_and_never_reads_is_no_longer_read(system: System) -> None:
    # WebSocket pings are answered by the protocol layer, past the connection's backlog: the
    # gateway must stop reading such a client instead of buffering its pongs without end.
    gateway_pid = system.procs["gateway"].pid
    before_mb = _rss_mb(gateway_pid)
    sock = _upgraded(system)
    ping = _client_frame(b"p" * 125, opcode=0x9)
    burst = ping * 1000  # 131 KB of pings, answered by 127 KB of pongs
    sock.settimeout(5)
    sent = 0
    try:
        while sent < 400:  # 52 MB of pongs if the gateway kept reading
            sock.sendall(burst)
            sent += 1
    except TimeoutError:
        pass  # the gateway stopped reading: our sends stall
    grown_mb = _rss_mb(gateway_pid) - before_mb
    sock.close()
    print(f"gateway stopped reading after {sent * 1000} pings; RSS grew {grown_mb:.1f} MB")
    assert sent < 400, "the gateway read 400,000 pings from a client that reads nothing"
    assert grown_mb < 30, grown_mb


async def test_sockets_of_one_user_opening_and_closing_at_once_all_get_pushes(system: System) -> None:
    alice, bob = user(), user()
    cid = direct_conversation_id(alice, bob)

    async def opened(device: str) -> Any:
        ws = await websockets.connect(f"{system.ws}?token={system.token(alice, device)}", max_size=None)
        await ws.send(orjson.dumps({"type": "ping", "ref": "up"}).decode())
        while orjson.loads(await asyncio.wait_for(ws.recv(), 20)) != {"type": "pong", "ref": "up"}:
            pass  # a pong means the socket is registered: pushes reach it from now on
        return ws

    first = await asyncio.gather(*(opened(f"a{i}") for i in range(12)))
    # half of them close while as many new ones open, all at once
    later = await asyncio.gather(*(ws.close() for ws in first[:6]), *(opened(f"b{i}") for i in range(6)))
    live = [*first[6:], *(ws for ws in later if ws is not None)]
    assert len(live) == 12
    try:
        async with system.connect(bob) as sender:
            ack = await sender.send_message(cid, "to every device")
        for ws in live:
            while True:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
                if frame["type"] == "message":
                    assert frame["message"]["message_id"] == ack["message_id"]
                    break
    finally:
        await asyncio.gather(*(ws.close() for ws in live))
