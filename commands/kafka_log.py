"""``EventLog`` on Kafka: an aiokafka producer with acks=all and idempotence."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from events import ChatEvent, PresenceChanged, Topics, encode_event, partition_key
from events.errors import Unavailable

# topic -> a span around one append, yielding the record headers that carry its trace context
TraceAppend = Callable[[str], AbstractContextManager[list[tuple[str, bytes]]]]


class KafkaEventLog:
    def __init__(
        self, producer: AIOKafkaProducer, topics: Topics, *, trace: TraceAppend | None = None
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._trace = trace

    @classmethod
    def producer(
        cls, bootstrap: str, *, linger_ms: int, request_timeout_ms: int = 10_000
    ) -> AIOKafkaProducer:
        """The producer every appender uses: durable (acks=all, idempotent), briefly batched."""
        return AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            client_id="tidings-gateway",
        )

    async def append(self, event: ChatEvent) -> None:
        if isinstance(event, PresenceChanged):
            topic, key = self._topics.presence_events, event.user_id
        else:
            topic, key = self._topics.conversation_events, event.conversation_id
        try:
            if self._trace is None:
                await self._producer.send_and_wait(topic, value=encode_event(event), key=partition_key(key))
                return
            with self._trace(topic) as headers:
                await self._producer.send_and_wait(
                    topic, value=encode_event(event), key=partition_key(key), headers=headers
                )
        except KafkaError as exc:
            raise Unavailable("the event log did not confirm the write") from exc
