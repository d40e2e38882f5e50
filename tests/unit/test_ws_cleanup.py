"""A closing socket is always unregistered, even when Sanic cancels its handler (it does when
the TCP connection goes) while presence is still settling."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from query_api import ws


class _Presence:
    def __init__(self) -> None:
        self.left: list[Any] = []

    async def disconnected(self, conn: Any) -> None:
        await asyncio.sleep(0.05)  # a Redis round trip on a busy server
        self.left.append(conn)


class _Hub:
    def __init__(self) -> None:
        self.unregistered: list[Any] = []

    async def unregister(self, conn: Any) -> None:
        await asyncio.sleep(0)
        self.unregistered.append(conn)


async def test_a_cancelled_handler_still_settles_presence_and_unregisters() -> None:
    deps: Any = SimpleNamespace(presence=_Presence(), hub=_Hub())
    conn: Any = object()  # a stand-in the fakes only pass around
    handler = asyncio.create_task(ws._unregister(deps, conn))
    await asyncio.sleep(0.01)
    handler.cancel()
    await asyncio.sleep(0.01)
    handler.cancel()  # and again: the clean-up still finishes
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert deps.presence.left == [conn] and deps.hub.unregistered == [conn]


async def test_the_socket_is_unregistered_even_if_presence_fails() -> None:
    class Broken(_Presence):
        async def disconnected(self, conn: Any) -> None:
            raise RuntimeError("bug")

    deps: Any = SimpleNamespace(presence=Broken(), hub=_Hub())
    conn: Any = "conn"
    with pytest.raises(RuntimeError):
        await ws._unregister(deps, conn)
    assert deps.hub.unregistered == ["conn"]
