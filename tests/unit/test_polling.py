"""tests.polling.until, the one wait every test shares."""

from __future__ import annotations

import asyncio

import pytest

from tests.polling import until


async def test_returns_the_first_true_result_of_a_plain_or_a_coroutine_check() -> None:
    calls: list[int] = []

    def plain() -> list[int]:
        calls.append(1)
        return calls if len(calls) == 3 else []

    assert await until(plain, 1, every=0.001) == [1, 1, 1]

    async def coroutine() -> str:
        await asyncio.sleep(0)
        return "ready"

    assert await until(coroutine, 1) == "ready"


async def test_fails_after_the_deadline_naming_what_it_waited_for_and_the_last_result() -> None:
    with pytest.raises(AssertionError, match=r"not within 0.05 s: the moon \(last: 0\)"):
        await until(lambda: 0, 0.05, "the moon", every=0.01)
