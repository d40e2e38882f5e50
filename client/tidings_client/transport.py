"""The WebSocket under the client, behind a small interface so that unit tests can put a fake
server there. The real one is the ``websockets`` library."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus


class TransportClosed(Exception):
    """The socket closed; ``code`` is the close code received (``None``: none, e.g. a reset)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason}".strip())
        self.code = code
        self.reason = reason


class HandshakeRejected(Exception):
    """The server answered the upgrade with an HTTP error (``status``, its headers and body)."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"upgrade refused with HTTP {status}")
        self.status = status
        self.headers = dict(headers)
        self.body = body


class Transport(Protocol):
    async def send(self, text: str) -> None:
        """Send one text frame (``TransportClosed`` if the socket is gone)."""
        ...

    async def recv(self) -> str:
        """The next text frame (``TransportClosed`` when the socket closes)."""
        ...

    async def close(self) -> None:
        """Close the socket (idempotent)."""
        ...


Connector = Callable[[str, Mapping[str, str]], Awaitable[Transport]]


class WebsocketsTransport:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def recv(self) -> str:
        try:
            frame = await self._ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from exc
        return frame if isinstance(frame, str) else frame.decode("utf-8", errors="replace")

    async def close(self) -> None:
        await self._ws.close()


def _closed(exc: ConnectionClosed) -> TransportClosed:
    if exc.rcvd is not None:
        return TransportClosed(exc.rcvd.code, exc.rcvd.reason)
    return TransportClosed(None, "connection lost")


async def websockets_connect(url: str, headers: Mapping[str, str]) -> Transport:
    """Open ``url`` with ``websockets`` (no library pings: the client sends protocol pings)."""
    try:
        ws = await websockets.connect(
            url,
            additional_headers=dict(headers),
            ping_interval=None,
            max_size=2**20,
            open_timeout=10,
            close_timeout=2,
        )
    except InvalidStatus as exc:
        response = exc.response
        raise HandshakeRejected(response.status_code, response.headers, bytes(response.body or b"")) from exc
    return WebsocketsTransport(ws)
