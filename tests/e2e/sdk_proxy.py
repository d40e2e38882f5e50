"""A TCP relay between a client and the real gateway that can go deaf on purpose: after
``mute_server()`` the bytes the server sends on the connections open at that moment are
dropped (an ack lost on the way, a half-open connection), while the client's still go through.
Connections opened later relay both ways."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class Proxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.host = host
        self.port = 0
        self._server: asyncio.Server | None = None
        self._muted: set[int] = set()
        self._live: dict[int, asyncio.StreamWriter] = {}
        self._next = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._live.values()):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def mute_server(self) -> None:
        """Drop from now on what the server sends on the connections open now."""
        self._muted |= set(self._live)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._next
        self._next += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._live[number] = writer
        to_server = asyncio.create_task(self._pump(reader, up_writer, number, from_server=False))
        to_client = asyncio.create_task(self._pump(up_reader, writer, number, from_server=True))
        self._tasks |= {to_server, to_client}
        await asyncio.wait({to_server, to_client}, return_when=asyncio.FIRST_COMPLETED)
        for task in (to_server, to_client):
            task.cancel()
        for w in (writer, up_writer):
            w.close()
        self._live.pop(number, None)
        self._tasks -= {to_server, to_client}

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int, *, from_server: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if from_server and number in self._muted:
                    continue
                writer.write(data)
                await writer.drain()
