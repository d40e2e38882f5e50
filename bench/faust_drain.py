"""Faust's fetch loop alone, per record: Faust's own ``Consumer._drain_messages`` (mode's
``wait_first`` per record) against ``streams.adapters.faust_drain`` (the callback awaited in
the loop's task unless it blocks), in one process, alternating, on uvloop as the workers run.

    .venv/bin/python -m bench.faust_drain --records 20000 --rounds 5

Each run drains ``--records`` records of one fetch (``getmany`` faked, no Kafka) into a
callback that returns at once, as the conductor's ``on_message`` does when nothing blocks, and
prints the CPU µs per record of this process and the tasks made per record; the summary takes
each mode's minimum (the run least disturbed by the machine's other load).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import faust
from faust.types import TP

from bench.common import machine_line, run_loop
from streams.adapters.faust_fetch import App as TidingsApp

TOPIC = "bench-drain"


def _consumer(mode: str) -> Any:
    app_class = TidingsApp if mode == "tidings" else faust.App
    app = app_class("bench-drain", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    app.loop = asyncio.get_running_loop()
    return app.consumer


async def one_run(mode: str, records: int) -> tuple[float, float]:
    """(CPU µs per record, tasks made per record) for one drain of ``records``."""
    consumer = _consumer(mode)
    tp = TP(TOPIC, 0)
    messages = [(tp, SimpleNamespace(topic=TOPIC, offset=i, key=b"k", value=b"v")) for i in range(records)]
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    handed = 0

    async def getmany(**_: Any) -> AsyncIterator[tuple[TP, Any]]:
        for message in messages:
            yield message
        fetcher._stopped.set()

    async def callback(message: Any) -> None:
        nonlocal handed
        handed += 1

    consumer.getmany = getmany
    consumer.callback = callback
    loop = asyncio.get_running_loop()
    made = 0
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal made
        made += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    cpu = time.process_time()
    try:
        await consumer._drain_messages(fetcher)
    finally:
        cpu = time.process_time() - cpu
        loop.set_task_factory(previous)
        thread_loop = getattr(getattr(consumer, "_thread", None), "thread_loop", None)
        if thread_loop is not None and not thread_loop.is_running():
            thread_loop.close()
    if handed != records:
        raise SystemExit(f"{mode}: {handed} of {records} records handed to the callback")
    return cpu / records * 1e6, made / records


async def main(records: int, rounds: int) -> None:
    print(f"faust_drain: {records} records per run, {rounds} rounds; {machine_line()}")
    results: dict[str, list[float]] = {"faust": [], "tidings": []}
    for i in range(rounds):
        for mode in ("faust", "tidings") if i % 2 == 0 else ("tidings", "faust"):
            us, tasks = await one_run(mode, records)
            results[mode].append(us)
            print(f"  round {i + 1} {mode:8} {us:7.2f} µs CPU per record, {tasks:.3f} tasks per record")
    for mode, values in results.items():
        print(f"{mode:8} min {min(values):.2f} µs per record, median {sorted(values)[len(values) // 2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run_loop(main(args.records, args.rounds))
