"""A stopping gateway closes its clients of Kafka, Cassandra and Redis; one that does not
answer must not keep the process alive for ever (``query_api.deps.close_all``)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from query_api.deps import close_all


async def test_a_closer_that_never_finishes_is_left_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def closer(name: str, *, hang: bool = False, fail: bool = False) -> object:
        async def close() -> None:
            ran.append(name)
            if hang:
                await asyncio.Event().wait()  # a producer flushing to a broker that never answers
            if fail:
                raise RuntimeError("connection reset")

        return close

    with caplog.at_level(logging.ERROR):
        closing = close_all(
            [closer("lease"), closer("cassandra", fail=True), closer("kafka", hang=True), closer("pubsub")],  # type: ignore[list-item]
            timeout_s=0.2,
        )
        await asyncio.wait_for(closing, 5)  # a close that waits for the hung one fails here
    assert ran == ["pubsub", "kafka", "cassandra", "lease"]  # the last opened, the first closed
    messages = [r.getMessage() for r in caplog.records]
    assert any("did not finish closing within" in m for m in messages), messages
    assert any("error while closing" in m for m in messages), messages
