"""Faust's fetch loop alone, per record: Faust's own ``Consumer._drain_messages`` (mode's
``wait_first`` per record) against ``streams.adapters.faust_drain`` (the callback awaited in
the loop's task unless it blocks), in one process, alternating, on uvloop as the workers run.

    .venv/bin/python -m bench.faust_drain --records 20000 --rounds 5
    .venv/bin/python -m bench.faust_drain --path --records 10000 --fetch 50 --rounds 5

Each run drains ``--records`` records of one fetch (``getmany`` faked, no Kafka) into a
callback that returns at once, as the conductor's ``on_message`` does when nothing blocks, and
prints the CPU µs per record of this process and the tasks made per record; the summary takes
each mode's minimum (the run least disturbed by the machine's other load).

``--path``: the whole of Faust's per-record path in the worker's app (``streams.app``): fetches
of ``--fetch`` records, each after the agent has taken the one before, through the conductor
(flow control, the producer's ebb, ``decode``, the stream's queue), the stream and our
``take_events`` into an agent that only counts; first the conductor's parts alone, per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from bench.common import machine_line, run_loop
from events import MessageSent, Snowflake, encode_event, snowflake_ts
from streams.adapters import faust_drain
from streams.adapters.faust_fetch import App as TidingsApp
from streams.app import _faust_app

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


class _Path:
    """The worker's Faust app with one counting agent, assigned one partition, no Kafka."""

    def __init__(self) -> None:
        self.app = _faust_app("bench-drain-path", "127.0.0.1:1", 1, 1, "earliest", 10.0)
        self.app.loop = asyncio.get_running_loop()
        self.tp = TP(TOPIC, 0)
        self.got = 0
        self.want = 0
        self.reached = asyncio.Event()
        topic = self.app.topic(TOPIC, key_type=bytes, value_type=bytes, partitions=1)

        @self.app.agent(topic, concurrency=1, name="count")
        async def count(stream: Any) -> None:
            async for batch in stream.take_events(500, within=0.002):
                self.got += len(batch)
                if self.got >= self.want:
                    self.reached.set()

    async def start(self) -> None:
        self.app.finalize()
        self.app.flow_control.resume()
        for agent in self.app.agents.values():
            await agent.start()
        await asyncio.sleep(0.1)
        await self.app.topics._update_indices()  # type: ignore[attr-defined]
        await self.app.topics.on_partitions_assigned({self.tp})
        mid = Snowflake(1).next_id()
        self.value = encode_event(
            MessageSent(
                conversation_id="dm:a:b",
                message_id=mid,
                sender_id="a",
                sender_device="d",
                client_msg_id="c1",
                kind="text",
                body="x" * 200,
                ts=snowflake_ts(mid),
            )
        )
        self.offset = 0

    def message(self) -> Message:
        self.offset += 1
        return Message(
            TOPIC, 0, self.offset, time.time(), 0, {}, b"k", self.value, None,
            tp=self.tp, generation_id=self.app.consumer_generation_id,
        )  # fmt: skip

    async def parts(self, n: int = 20000) -> str:
        chan = next(iter(self.app.topics._tp_index[self.tp]))  # type: ignore[attr-defined]
        message = self.message()
        out = []
        for name, call in (
            ("flow control", self.app.flow_control.acquire),
            ("producer ebb", self.app.producer.buffer.wait_until_ebb),
            ("decode", lambda: chan.decode(message, propagate=True)),
        ):
            cpu = time.process_time()
            for _ in range(n):
                await call()
            out.append(f"{name} {(time.process_time() - cpu) / n * 1e6:.2f}")
        return "µs per call: " + ", ".join(out)

    async def run(self, mode: str, records: int, fetch: int) -> float:
        consumer: Any = self.app.consumer
        fetcher: Any = SimpleNamespace(_stopped=asyncio.Event())
        fetches, start = records // fetch, self.got

        async def getmany(**_: Any) -> AsyncIterator[tuple[TP, Any]]:
            nonlocal fetches
            await self.reached.wait()
            if fetches == 0:
                fetcher._stopped.set()
                return
            fetches -= 1
            self.reached.clear()
            self.want = self.got + fetch
            for _record in range(fetch):
                yield self.tp, self.message()

        consumer.getmany = getmany
        self.want = self.got
        self.reached.set()
        # Faust's own loop is the method of the class ours overrides.
        drain_class = faust_drain.Consumer if mode == "tidings" else faust_aiokafka.Consumer
        cpu = time.process_time()
        await drain_class._drain_messages(consumer, fetcher)
        cpu = time.process_time() - cpu
        if self.got - start != fetch * (records // fetch):
            raise SystemExit(f"{mode}: the agent took {self.got - start} of {records} records")
        return cpu / (self.got - start) * 1e6


async def main(records: int, rounds: int, path: bool, fetch: int) -> None:
    print(f"faust_drain: {records} records per run, {rounds} rounds; {machine_line()}")
    results: dict[str, list[float]] = {"faust": [], "tidings": []}
    whole = _Path() if path else None
    if whole is not None:
        await whole.start()
        print(f"the worker's app, fetches of {fetch}; the conductor's parts in " + await whole.parts())
    for i in range(rounds):
        for mode in ("faust", "tidings") if i % 2 == 0 else ("tidings", "faust"):
            if whole is not None:
                us = await whole.run(mode, records, fetch)
                results[mode].append(us)
                print(f"  round {i + 1} {mode:8} {us:7.2f} µs CPU per record, the whole path")
                continue
            us, tasks = await one_run(mode, records)
            results[mode].append(us)
            print(f"  round {i + 1} {mode:8} {us:7.2f} µs CPU per record, {tasks:.3f} tasks per record")
    for mode, values in results.items():
        print(f"{mode:8} min {min(values):.2f} µs per record, median {sorted(values)[len(values) // 2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--path", action="store_true", help="the whole per-record path of the worker's app")
    parser.add_argument("--fetch", type=int, default=50, help="with --path: records per fetch")
    args = parser.parse_args()
    run_loop(main(args.records, args.rounds, args.path, args.fetch))
    os._exit(0)  # the consumer and producer threads Faust made for the app, never started
