"""Waiting in tests for something another task, process or server does: one polling loop for
all, in two forms. ``wait_until`` hands back the last result for the caller's own assertion;
``until`` fails by itself, naming what it waited for."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def wait_until(
    probe: Callable[[], Awaitable[T]],
    timeout: float = 10,  # noqa: ASYNC109
    interval: float = 0.1,
) -> T: ...
@overload
async def wait_until(
    probe: Callable[[], T],
    timeout: float = 10,  # noqa: ASYNC109
    interval: float = 0.1,
) -> T: ...
async def wait_until(
    probe: Callable[[], Any],
    timeout: float = 10,  # noqa: ASYNC109
    interval: float = 0.1,
) -> Any:
    """Call ``probe`` (a function or a coroutine function) until it returns something true, and
    return that; after ``timeout`` seconds return its last (false) result, for the caller's
    assertion to report what was seen."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(interval)


async def until(
    check: Callable[[], Any], within: float = 10.0, what: str = "", *, every: float = 0.05
) -> Any:
    """``wait_until`` that fails by itself: ``check``'s first true result, or after ``within``
    seconds an ``AssertionError`` naming ``what`` (or the check) and its last result."""
    result = await wait_until(check, within, every)
    if not result:
        raise AssertionError(f"not within {within:g} s: {what or check} (last: {result!r})")
    return result
