"""The cost of dispatching one batch to the persist worker's read models, without their work:
``CombinedWrites.apply_at`` over five stand-in stages shaped like the persist role's (two that
say their writes with positions, two that say them plainly, one applied alone), writing nothing
(a stand-in ``Cql``), inside ``Projector.handle_decoded``. What is left is the dispatch itself.

    .venv/bin/python -m bench.stage_dispatch --batches 20000

Prints the µs per batch (the best of ``--rounds``). Until 2026-12-07 each batch asked Python's
runtime-checkable protocols which kind each stage is (about 10 µs per ``isinstance`` on 3.11);
now that is asked once, when the stages are put together.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

from bench.common import machine_line
from events import ChatEvent, MessageSent, snowflake_ts
from streams.combined import CombinedWrites
from streams.projector import Projector, Record


class _Cql:
    async def execute_all(self, work: Sequence[Any], *, partitions_per_batch: int) -> None:
        return None


class _At:
    def __init__(self, name: str) -> None:
        self.name = name

    async def writes_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> list[Any]:
        return []

    def after_writes_at(self, events: Sequence[tuple[int, int, ChatEvent]]) -> list[Any]:
        return []

    def written(self, work: Sequence[Any]) -> None:
        return None


class _Plain:
    def __init__(self, name: str) -> None:
        self.name = name

    async def writes(self, events: Sequence[ChatEvent]) -> list[Any]:
        return []


class _Alone:
    name = "alone"

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        return None


class _NoDeadLetters:
    async def send(self, record: Record, error: str) -> None:
        raise AssertionError(error)


async def _run(batches: int, size: int) -> float:
    stages: list[Any] = [_Plain("membership"), _Plain("receipts"), _At("messages"), _Alone(), _At("sync")]
    combined = CombinedWrites(_Cql(), stages)  # type: ignore[arg-type]
    projector = Projector([combined], _NoDeadLetters())
    mid = 388_000_000_000_000_000
    event = MessageSent(
        conversation_id="dm:a:b", message_id=mid, sender_id="a", sender_device="d",
        client_msg_id="c", kind="text", body="x", ts=snowflake_ts(mid),
    )  # fmt: skip
    batch: list[tuple[Record, ChatEvent]] = [(Record("t", 0, i, b"dm:a:b", b""), event) for i in range(size)]
    started = time.perf_counter()
    for _ in range(batches):
        await projector.handle_decoded(batch)
    return (time.perf_counter() - started) / batches * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=20000)
    ap.add_argument("--size", type=int, default=10, help="events per batch")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    best = min(asyncio.run(_run(args.batches, args.size)) for _ in range(args.rounds))
    print(f"stage dispatch: {best:.1f} µs per batch of {args.size}; {machine_line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
