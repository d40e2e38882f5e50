"""Faust's aiokafka consumer with the fetch sizing of a background consumer group.

Faust builds its ``AIOKafkaConsumer`` with ``fetch_min_bytes`` left at 1 (and
``fetch_max_wait_ms=1500`` hard-coded, ``faust/transport/drivers/aiokafka.py``
``_create_worker_consumer``): the broker answers a fetch as soon as one record is there, so at a
few hundred messages a second every consumer group fetches once or twice per message, and
each fetch wakes the broker, aiokafka's thread, Faust's cross-thread ``getmany`` and the agent
for one or two events (docs/benchmarks.md, "issue #19"). A group nobody waits on (persist,
search, notify) can let the broker hold the fetch until ``wait_ms`` has passed or
``FETCH_MIN_BYTES`` have gathered: fetches and batches per second then stay near
1000 / ``wait_ms`` whatever the rate, and each batch carries more events.

While a group is idle such a fetch still ends every ``wait_ms`` (20 empty fetches a second per
group at 50 ms: the largest part of an idle broker's CPU, docs/benchmarks.md "servers"), so
after a fetch that brought nothing the next one waits up to ``IDLE_WAIT_MS`` but returns at the
first record; the fetch after a record gathers again. Idle, a group fetches under once a
second; the first event after a pause is fetched at once instead of up to ``wait_ms`` later;
under load (every fetch brings events) nothing changes. At a trickle (a message every 50 ms
or more) a fetch comes back per message, as with Faust's own sizing.

The delivery group keeps Faust's sizing: its fetch returns as soon as a message is there.

Every group's ``Fetcher`` is a ``LeanFetcher``: aiokafka's request building per fetch without
the work that cannot change its result here (docs/benchmarks.md, "the cost of a Kafka fetch").
"""

from __future__ import annotations

import collections
import logging
import random
from typing import Any

import aiokafka
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.fetcher import log as fetcher_log
from aiokafka.protocol.fetch import FetchRequest
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.adapters import faust_batches, faust_drain, faust_sameloop
from streams.adapters.kafka_fetch_session import FetchSession, SessionReplies

# Far more than arrives in one fetch wait: the wait, not the size, ends a fetch.
FETCH_MIN_BYTES = 4 * 1024 * 1024
# An idle group's fetch: held by the broker this long unless a record comes (Faust's own wait).
IDLE_WAIT_MS = 1500


class LeanFetcher(Fetcher):
    """aiokafka 0.14.0's ``Fetcher._get_actions_per_node`` (called before every fetch, for every
    assigned partition: 36 in the delivery worker, three topics of 12) with the same result
    and three costs less:

    - the partitions of a request are shuffled only when the order can change what the broker
      returns: when their ``max_partition_fetch_bytes`` add up to more than ``fetch_max_bytes``
      (the broker fills a response partition by partition up to that limit). Below it every
      partition gets its full share in any order (36 x 1 MiB < 50 MiB; persist's 60 partitions
      are still shuffled);
    - a partition's node is its leader straight from the cluster metadata while no preferred
      read replica is cached (KIP-392 needs ``client_rack``, which the workers do not set);
    - the per-partition debug log line is built only when debug logging is on;
    - each partition's state object and leader are looked up once per assignment and metadata
      update (``_partition_plan``), not on every call: the state objects live as long as their
      assignment, and aiokafka replaces the metadata's partition table whole on every update
      (``ClusterMetadata.update_metadata``), so the leaders read from the one in use are the
      ones aiokafka would read.

    The rest is aiokafka's code, line for line (``tests/unit/test_faust_fetch_lean.py``
    compares the two on every partition state and pins the aiokafka version).

    With ``_sessions`` (a dict, set by ``use_sessions``) its requests go in incremental fetch
    sessions, one per broker (``streams.adapters.kafka_fetch_session``)."""

    _sessions: dict[int, FetchSession] | None = None
    # (assignment, the metadata's partition table, [(tp, its state, its leader)]) as last built.
    _plan: tuple[Any, Any, list[tuple[Any, Any, int | None]]] | None = None

    def _get_actions_per_node(self, assignment: Any) -> Any:
        fetchable, awaiting_reset, backoff_by_nodes, resume_futures, invalid_metadata = self._sort_partitions(
            assignment
        )
        fetch_requests = []
        for node_id, partition_data in fetchable.items():
            if node_id in backoff_by_nodes:
                # At least one partition is still waiting to be consumed
                continue
            if node_id in awaiting_reset:
                # First the offsets are reset, then the next page fetched
                continue
            fetch_requests.append((node_id, self._fetch_request(node_id, partition_data)))

        backoff: float = (
            min(map(max, backoff_by_nodes.values())) if backoff_by_nodes else self._fetcher_timeout
        )
        return fetch_requests, awaiting_reset, backoff, invalid_metadata, resume_futures

    def _sort_partitions(self, assignment: Any) -> tuple[Any, Any, Any, list[Any], bool]:
        """The loop over the assigned partitions of aiokafka's ``_get_actions_per_node``."""
        fetchable: dict[Any, list[Any]] = collections.defaultdict(list)
        awaiting_reset: dict[Any, list[Any]] = collections.defaultdict(list)
        backoff_by_nodes: dict[Any, list[float]] = collections.defaultdict(list)
        resume_futures = []
        invalid_metadata = False
        records = self._records
        in_flight = self._in_flight
        cluster = self._client.cluster
        # Fetcher._select_read_replica is the leader while nothing is cached (it only caches a
        # replica named in a v11+ response to a client with a rack).
        replica_of = self._select_read_replica if self._preferred_read_replica else None
        debug = fetcher_log.isEnabledFor(logging.DEBUG)

        for tp, tp_state, leader in self._partition_plan(assignment, cluster):
            node_id = leader if replica_of is None else replica_of(tp)
            if records and tp in records:
                # Data not consumed yet: wait for it, with a timeout not to block the others.
                backoff = records[tp].calculate_backoff()
                if backoff:
                    backoff_by_nodes[node_id].append(backoff)
            elif node_id in in_flight:
                continue
            elif node_id is None or node_id == -1:
                fetcher_log.debug("No leader found for partition %s. Waiting metadata update", tp)
                invalid_metadata = True
            elif not tp_state.has_valid_position:
                # ListOffsets must go to the leader (KIP-392).
                leader_id = cluster.leader_for_partition(tp)
                if leader_id is None or leader_id == -1:
                    fetcher_log.debug(
                        "No leader found for partition %s while resetting offset. Waiting metadata update",
                        tp,
                    )
                    invalid_metadata = True
                else:
                    awaiting_reset[leader_id].append(tp)
            elif tp_state.paused:
                resume_futures.append(tp_state.resume_fut)
            else:
                position = tp_state.position
                fetchable[node_id].append((tp, position))
                if debug:
                    fetcher_log.debug("Adding fetch request for partition %s at offset %d", tp, position)
        return fetchable, awaiting_reset, backoff_by_nodes, resume_futures, invalid_metadata

    def _partition_plan(self, assignment: Any, cluster: Any) -> list[tuple[Any, Any, int | None]]:
        """Each assigned partition with its state object and its leader, built again only for
        a new assignment or after a metadata update (a new partition table)."""
        table = cluster._partitions
        plan = self._plan
        if plan is None or plan[0] is not assignment or plan[1] is not table:
            leader_of = cluster.leader_for_partition
            steps = [(tp, assignment.state_value(tp), leader_of(tp)) for tp in assignment.tps]
            plan = self._plan = (assignment, table, steps)
        return plan[2]

    def _fetch_request(self, node_id: int, partition_data: list[Any]) -> FetchRequest:
        sessions = self._sessions
        if sessions is not None:
            session = sessions.get(node_id)
            if session is None:
                session = sessions[node_id] = FetchSession()
            if session.supported:
                # The broker turns a session's partitions round itself (a partition that
                # brought records goes last), so the order of a request matters not.
                return session.request(
                    partition_data,
                    self._max_partition_fetch_bytes,
                    max_wait_ms=self._fetch_max_wait_ms,
                    min_bytes=self._fetch_min_bytes,
                    max_bytes=self._fetch_max_bytes,
                    isolation_level=self._isolation_level,
                    rack_id=self._client_rack or "",
                )
        # aiokafka shuffles "to help get more equal consumption": only a response that cannot
        # hold every partition's share depends on the order.
        if len(partition_data) * self._max_partition_fetch_bytes > self._fetch_max_bytes:
            random.shuffle(partition_data)
        by_topics = collections.defaultdict(list)
        for tp, position in partition_data:
            by_topics[tp.topic].append((tp.partition, position, self._max_partition_fetch_bytes))
        return FetchRequest(
            self._fetch_max_wait_ms,
            self._fetch_min_bytes,
            self._fetch_max_bytes,
            self._isolation_level,
            list(by_topics.items()),
            rack_id=self._client_rack or "",
        )


class IdleAwareFetcher(LeanFetcher):
    """aiokafka's ``Fetcher`` whose next fetch gathers (``FETCH_MIN_BYTES``, ``batch_wait_ms``)
    after one that brought records, and answers at the first record (1 byte,
    ``IDLE_WAIT_MS``) after one that brought nothing. Each fetch request is built from
    ``_fetch_min_bytes`` and ``_fetch_max_wait_ms`` when it is sent
    (``Fetcher._get_actions_per_node``), and a partition is fetched again only once the
    previous fetch's records were handed on, so the setting always follows the last answer."""

    batch_wait_ms: int

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        brought = bool(await super()._proc_fetch_request(assignment, node_id, request))
        # True also for an error handed to the consumer; the next fetch then gathers, as before.
        self._fetch_min_bytes = FETCH_MIN_BYTES if brought else 1
        self._fetch_max_wait_ms = self.batch_wait_ms if brought else IDLE_WAIT_MS
        return brought


def use_sessions(fetcher: LeanFetcher) -> None:
    """``fetcher``'s requests from now on in fetch sessions, its client's answers handed to them."""
    fetcher._sessions = {}
    fetcher._client = SessionReplies(fetcher._client)


class _DeliverConsumer(aiokafka.AIOKafkaConsumer):
    """The consumer of a group that waits on its events (delivery): a ``LeanFetcher``."""

    sessions = True

    async def start(self) -> None:
        await super().start()
        # As _BackgroundConsumer's below: the class is looked up per fetch.
        self._fetcher.__class__ = LeanFetcher
        if self.sessions:
            use_sessions(self._fetcher)


class _BackgroundConsumer(aiokafka.AIOKafkaConsumer):
    """The consumer of a group nobody waits on: its ``Fetcher`` is an ``IdleAwareFetcher``."""

    sessions = True

    async def start(self) -> None:
        await super().start()
        # start() builds the Fetcher (aiokafka.consumer.consumer); its fetch loop looks up
        # _proc_fetch_request per fetch, so the subclass takes over from the next one.
        fetcher = self._fetcher
        fetcher.__class__ = IdleAwareFetcher
        fetcher.batch_wait_ms = self._fetch_max_wait_ms
        if self.sessions:
            use_sessions(fetcher)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_wait_ms", 0)
        if wait_ms > 0:
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher; set before start.
            consumer._fetch_min_bytes = FETCH_MIN_BYTES
            consumer._fetch_max_wait_ms = wait_ms
            consumer.__class__ = _BackgroundConsumer
        elif getattr(self.app, "lean_fetch", True):
            consumer.__class__ = _DeliverConsumer
        else:
            return consumer
        consumer.sessions = getattr(self.app, "fetch_sessions", True)
        return consumer


class _SameLoopConsumer(faust_sameloop.InLoop, _ConsumerThread):
    """The same consumer, run in the agents' loop (``streams.adapters.faust_sameloop``)."""


class _Consumer(faust_batches.Consumer, faust_drain.Consumer):
    """Also hands the batch agents' topics on a fetch at a time (``streams.adapters.faust_batches``),
    drains the rest without a task per record (``streams.adapters.faust_drain``), and runs its
    aiokafka consumer in the agents' loop unless the app's ``consumer_in_loop`` is False."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        if getattr(self.app, "consumer_in_loop", True):
            return _SameLoopConsumer(self, loop=self.loop, beacon=self.beacon)
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class App(faust_batches.App):
    """A ``faust.App`` with batch agents (``streams.adapters.faust_batches``) whose consumer
    fetches for up to ``fetch_wait_ms`` (0: Faust's own), in the agents' loop
    (``consumer_in_loop``; False: in Faust's consumer thread, as before)."""

    fetch_wait_ms: int = 0
    # Read when the app builds its consumer (app.consumer, first used at start); set it on the
    # class or the app before that. Kept for comparing the two (tests, bench), not a setting.
    consumer_in_loop: bool = True
    # False: the delivery group fetches with aiokafka's own Fetcher, not the LeanFetcher (for
    # comparing the two in bench.faust_consumer; not a setting).
    lean_fetch: bool = True
    # False: every fetch names every partition, as aiokafka's do (no KIP-227 session; for
    # comparing the two in bench.faust_consumer; not a setting).
    fetch_sessions: bool = True

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
