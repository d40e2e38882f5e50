"""Incremental fetch sessions (KIP-227) for aiokafka's ``Fetcher``: the client's half.

aiokafka 0.14 sends every fetch without a session (``session_id`` 0, epoch -1,
``aiokafka/protocol/fetch.py``): each request names every assigned partition with its offset
and each response answers for every one of them. The delivery worker's fetch names 36 (three
topics of 12) to bring one or two events, and each partition costs the client and the broker
about 5 µs a fetch (docs/benchmarks.md, "the cost of a Kafka fetch on both ends").

With a session the broker remembers the partitions and their fetch offsets: a request names
only the partitions whose offset changed since the last one (those that brought records) and
those to drop (paused, revoked), and a response only the partitions with news (records, a new
high watermark, an error). The broker's rules are Kafka's (``FetchSession.scala``); the
client's here follow Kafka's Java client (``FetchSessionHandler``):

- a full request with session 0 and epoch 0 asks for a new session; its response names it
  (0: the broker keeps none, and the next request asks again);
- each later request carries the session and the next epoch (1, 2, ..., wrapping to 1), the
  partitions whose ``(offset, max_bytes)`` differ from the last request answered, and the
  partitions no longer fetched as forgotten;
- a response with a top-level error (the session evicted, a wrong epoch), or a request with no
  response (an error, a timeout, cancelled by a seek or a rebalance), ends the session on this
  side: the next request is full and asks for a new one. The broker expires the old one.

Nothing else changes for aiokafka: the request's ``topics`` are the full view (every partition
of the fetch with the offset it is fetched from), which aiokafka matches the response's
partitions against, and a partition whose position moved is named again with its new offset.
"""

from __future__ import annotations

import collections
from typing import Any

from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition

INITIAL_EPOCH = 0
_MAX_EPOCH = 2**31 - 1

# (topic, [(partition, offset, max_bytes)]): aiokafka's layout of a request's partitions
Topics = list[tuple[str, list[tuple[int, int, int]]]]


class FetchSession:
    """This side of one broker's fetch session: its id, the next epoch, and the partitions
    (with offset and max bytes) the broker holds for it."""

    def __init__(self) -> None:
        self.session_id = 0
        self.epoch = INITIAL_EPOCH
        self.partitions: dict[TopicPartition, tuple[int, int]] = {}
        # False once the broker's Fetch version has no sessions (< 7): full requests from then on.
        self.supported = True

    def request(
        self,
        partitions: list[tuple[TopicPartition, int]],
        max_partition_bytes: int,
        *,
        max_wait_ms: int,
        min_bytes: int,
        max_bytes: int,
        isolation_level: int,
        rack_id: str,
    ) -> SessionFetchRequest:
        """The next request for ``partitions`` (``(tp, position)``, every one this fetch reads
        from this broker)."""
        wanted = {tp: (offset, max_partition_bytes) for tp, offset in partitions}
        if self.session_id == 0:
            send, forgotten = wanted, []
        else:
            held = self.partitions
            send = {tp: state for tp, state in wanted.items() if held.get(tp) != state}
            forgotten = [tp for tp in held if tp not in wanted]
        return SessionFetchRequest(
            self,
            (self.session_id, self.epoch),
            wanted,
            _topics(send),
            _grouped(forgotten),
            max_wait_ms=max_wait_ms,
            min_bytes=min_bytes,
            max_bytes=max_bytes,
            isolation_level=isolation_level,
            rack_id=rack_id,
        )

    def answered(self, request: SessionFetchRequest, response: Any) -> None:
        """The broker's answer to ``request``: the session goes on, starts, or ends."""
        if not request.sent_with_session:
            return
        if response.error_code != 0:
            self.reset()
            return
        self.partitions = request.wanted
        if request.session_metadata[0] == 0:
            self.session_id, self.epoch = response.session_id, 1
            if response.session_id == 0:
                self.reset()  # the broker keeps no session for us (its cache full): ask again
        else:
            self.epoch = self.epoch + 1 if self.epoch < _MAX_EPOCH else 1

    def reset(self) -> None:
        """Forget the session: the next request is full and asks for a new one."""
        self.session_id, self.epoch, self.partitions = 0, INITIAL_EPOCH, {}


class SessionFetchRequest(FetchRequest):
    """A fetch in a session: ``topics`` is the full view (what aiokafka checks the response
    against); what is sent is the session's part (``build``)."""

    def __init__(
        self,
        session: FetchSession,
        metadata: tuple[int, int],
        wanted: dict[TopicPartition, tuple[int, int]],
        send: Topics,
        forgotten: list[tuple[str, list[int]]],
        *,
        max_wait_ms: int,
        min_bytes: int,
        max_bytes: int,
        isolation_level: int,
        rack_id: str,
    ) -> None:
        super().__init__(max_wait_ms, min_bytes, max_bytes, isolation_level, _topics(wanted), rack_id=rack_id)
        self.session = session
        self.session_metadata = metadata
        self.wanted = wanted
        self.send = send
        self.forgotten = forgotten
        self.sent_with_session = False

    def build(self, request_struct_class: Any) -> Any:
        if request_struct_class.API_VERSION < 7:
            self.session.supported = False
            return super().build(request_struct_class)
        part = FetchRequest(
            self._max_wait_ms,
            self._min_bytes,
            self._max_bytes,
            self._isolation_level,
            self.send,
            self._rack_id,
        ).build(request_struct_class)
        part.session_id, part.session_epoch = self.session_metadata
        part.forgotten_topics_data = self.forgotten
        self.sent_with_session = True
        return part


def _topics(partitions: dict[TopicPartition, tuple[int, int]]) -> Topics:
    by_topic: dict[str, list[tuple[int, int, int]]] = collections.defaultdict(list)
    for tp, (offset, max_bytes) in partitions.items():
        by_topic[tp.topic].append((tp.partition, offset, max_bytes))
    return list(by_topic.items())


def _grouped(partitions: list[TopicPartition]) -> list[tuple[str, list[int]]]:
    by_topic: dict[str, list[int]] = collections.defaultdict(list)
    for tp in partitions:
        by_topic[tp.topic].append(tp.partition)
    return list(by_topic.items())


class SessionReplies:
    """The fetcher's client: aiokafka's own, which hands each answer to a session fetch (or its
    failure) to the request's session before aiokafka reads it. Everything else is the client's."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def send(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        if not isinstance(request, SessionFetchRequest):
            return await self._client.send(node_id, request, **kwargs)
        try:
            response = await self._client.send(node_id, request, **kwargs)
        except BaseException:
            # No answer (an error, a timeout, or cancelled): the broker may have moved the
            # session's epoch on, or not; start afresh.
            request.session.reset()
            raise
        request.session.answered(request, response)
        return response
