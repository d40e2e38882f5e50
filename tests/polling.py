"""Waiting in tests for something another task, process or server does: one helper for all."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def until(
    check: Callable[[], Any], within: float = 10.0, what: str = "", *, every: float = 0.05
) -> Any:
    """Call ``check`` (a function or a coroutine function) every ``every`` seconds until it
    returns something true, and return that. After ``within`` seconds fail, naming ``what``
    (or the check) and its last result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"not within {within:g} s: {what or check} (last: {result!r})")
        await asyncio.sleep(every)
