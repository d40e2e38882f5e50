"""A small asyncio face on cassandra-driver: prepared statements, awaited futures, and
driver exceptions translated into ``Unavailable`` (transient) once, here."""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cassandra import (
    ConsistencyLevel,
    DriverException,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    WriteTimeout,
)
from cassandra import Unavailable as CassandraUnavailable
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, BoundStatement, PreparedStatement, Statement

from events.errors import Unavailable

S = TypeVar("S")

# Errors that mean "try again later", as opposed to a statement that can never succeed.
TRANSIENT = (NoHostAvailable, OperationTimedOut, ReadTimeout, WriteTimeout, CassandraUnavailable)


CONTROL_CONNECTION_TIMEOUT_S = 15.0


def connect(
    hosts: Sequence[str],
    port: int,
    *,
    protocol_version: int,
    local_dc: str,
    consistency: str = "LOCAL_ONE",
) -> tuple[Cluster, Session]:
    """Blocking: call at start-up (or in an executor), never on the event loop's hot path.
    ``consistency`` (a ``ConsistencyLevel`` name) applies to every statement of the session."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
        request_timeout=10,
        consistency_level=ConsistencyLevel.name_to_value[consistency],
    )
    cluster = Cluster(
        list(hosts),
        port=port,
        protocol_version=protocol_version,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        # The control connection reads the whole schema at connect (every keyspace on the
        # server: 113 keyspaces, 2,201 tables on the shared dev box) within this timeout, 2 s by
        # default: at load 7-40 that took 3-7 s and every process start failed with "Cassandra
        # is not reachable" (docs/benchmarks.md, issue #19 session 8). A server that is down
        # still refuses at once.
        control_connection_timeout=CONTROL_CONNECTION_TIMEOUT_S,
    )
    try:
        return cluster, cluster.connect()
    except (NoHostAvailable, OperationTimedOut) as exc:
        cluster.shutdown()
        raise Unavailable("Cassandra is not reachable") from exc


class CassandraConfig(Protocol):
    """Where Cassandra is (``tidings.settings.Settings`` is one)."""

    @property
    def cassandra_hosts(self) -> list[str]: ...
    @property
    def cassandra_port(self) -> int: ...
    @property
    def cassandra_protocol_version(self) -> int: ...
    @property
    def cassandra_local_dc(self) -> str: ...
    @property
    def cassandra_consistency(self) -> str: ...


def connect_to(config: CassandraConfig) -> tuple[Cluster, Session]:
    """``connect`` with the addresses and protocol of ``config``."""
    return connect(
        config.cassandra_hosts,
        config.cassandra_port,
        protocol_version=config.cassandra_protocol_version,
        local_dc=config.cassandra_local_dc,
        consistency=config.cassandra_consistency,
    )


# One partition key's batch is one mutation: Cassandra checks batch size thresholds only for
# batches over several partitions (CASSANDRA-10876); ScyllaDB warns from 128 KiB. Bounded so
# that one request stays well under those and under the request timeout.
MAX_BATCH_ROWS = 200
MAX_BATCH_BYTES = 64 * 1024
# Small groups of several partitions may share one UNLOGGED batch (``execute_all``'s
# ``partitions_per_batch``): then Cassandra does check the batch, and warns (in its log and to
# the client, which the driver logs per request) past
# ``unlogged_batch_across_partitions_warn_threshold`` partitions or ``batch_size_warn_threshold``
# bytes of mutations, and refuses it past ``batch_size_fail_threshold``. Upstream's values are
# 10, 5 KiB and 50 KiB; Tidings' own node raises them (tidings/services/cassandra.py). The
# client reads the node's values once (``Cql.batch_limits``) and stays below them: as many
# partitions as the threshold, and 4/5 of the warning's bytes as Cassandra counts them,
# estimated as the bound values plus ``CELL_BYTES`` per value (null ones too: a null is a
# tombstone cell). Measured: ten 1:1 message rows of ~100 bytes of values (13 columns) counted
# 6,110 bytes on Cassandra 5.0 (tests/integration/test_persist_round.py).
MIXED_BATCH_PARTITIONS = 10
MIXED_BATCH_BYTES = 4 * 1024
CELL_BYTES = 40


@dataclass(frozen=True)
class BatchLimits:
    """A node's batch thresholds (cassandra.yaml), and the bounds a mixed batch keeps to."""

    partitions: int  # unlogged_batch_across_partitions_warn_threshold
    warn_bytes: int  # batch_size_warn_threshold
    fail_bytes: int  # batch_size_fail_threshold

    @property
    def mixed_bytes(self) -> int:
        """What ``_size`` may estimate for one mixed batch: 4/5 of the warning's bytes (the
        estimate's margin), and below the refusal."""
        return min(self.warn_bytes * 4 // 5, self.fail_bytes // 2)


# Upstream Cassandra's defaults: assumed of a node that does not say (ScyllaDB and Cassandra
# before 4.0 have no system_views.settings).
UPSTREAM_LIMITS = BatchLimits(MIXED_BATCH_PARTITIONS, 5 * 1024, 50 * 1024)
_LIMIT_SETTINGS = (
    "unlogged_batch_across_partitions_warn_threshold",
    "batch_size_warn_threshold",
    "batch_size_fail_threshold",
)
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_UNIT = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_limits(settings: dict[str, str]) -> BatchLimits:
    """``BatchLimits`` from system_views.settings' rows (name: value, e.g. ``'64KiB'``); a
    value missing or not understood keeps upstream's."""

    def size(name: str, default: int) -> int:
        match = _SIZE.match(settings.get(name) or "")
        return int(match[1]) * _UNIT[match[2]] if match else default

    count = (settings.get(_LIMIT_SETTINGS[0]) or "").strip()
    partitions = int(count) if count.isdigit() and int(count) > 0 else UPSTREAM_LIMITS.partitions
    return BatchLimits(
        partitions=partitions,
        warn_bytes=size(_LIMIT_SETTINGS[1], UPSTREAM_LIMITS.warn_bytes),
        fail_bytes=size(_LIMIT_SETTINGS[2], UPSTREAM_LIMITS.fail_bytes),
    )


_WRITE = re.compile(r"^\s*(?:INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_CONDITIONAL = re.compile(r"\bIF\b", re.IGNORECASE)


class Cql:
    def __init__(self, session: Session, keyspace: str) -> None:
        self.session = session
        self.keyspace = keyspace
        self._prepared: dict[str, PreparedStatement] = {}
        # what execute_all sent: statements, and the requests (batches or single) they took;
        # and the statements it left out, shadowed by another of their call
        self.statements_shadowed = 0
        self.statements_sent = 0
        self.requests_sent = 0
        # requests of execute / execute_paged (reads, and the odd single write), one per page
        self.single_requests_sent = 0
        self._limits: BatchLimits | None = None

    async def batch_limits(self) -> BatchLimits:
        """The node's batch thresholds, read once from system_views.settings (one request the
        first time; upstream's defaults where the table is missing). A batch refused as too
        large makes the next call read them again (a node restarted with lower ones)."""
        if self._limits is None:
            query = "SELECT name, value FROM system_views.settings WHERE name IN ?"
            try:
                rows = await self.execute(query, (list(_LIMIT_SETTINGS),))
            except InvalidRequest:  # no such table: not Cassandra 4.0+
                rows = []
            self._limits = parse_limits({row.name: row.value for row in rows})
        return self._limits

    def prepare(self, cql: str) -> PreparedStatement:
        """Blocking the first time per statement; cached after."""
        stmt = self._prepared.get(cql)
        if stmt is None:
            stmt = self.session.prepare(cql.format(ks=self.keyspace))
            stmt.is_idempotent = True
            self._prepared[cql] = stmt
        return stmt

    def bind(self, cql: str, params: Sequence[Any]) -> BoundStatement:
        """``prepare(cql).bind(params)``, the same bytes for a fraction of the cost (see
        ``_values``)."""
        prepared = self.prepare(cql)
        values = _values(prepared, params)
        if values is None:
            return prepared.bind(params)
        return _bound(prepared, params, values)

    async def execute(self, cql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement and return all rows of its first page."""
        self.single_requests_sent += 1
        future = self.session.execute_async(self.prepare(cql), params)
        return await _await(future)

    async def execute_paged(self, cql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement and return the rows of every page."""
        rows: list[Any] = []
        paging_state = None
        while True:
            self.single_requests_sent += 1
            future = self.session.execute_async(self.prepare(cql), params, paging_state=paging_state)
            rows += await _await(future)
            if not future.has_more_pages:
                return rows
            paging_state = future._paging_state  # what ResultSet itself passes on

    async def execute_all(
        self,
        statements: Sequence[tuple[str, Sequence[Any]]],
        *,
        in_flight: int = 64,
        max_rows: int = MAX_BATCH_ROWS,
        max_bytes: int = MAX_BATCH_BYTES,
        partitions_per_batch: int = 1,
    ) -> None:
        """Run write statements, grouped into one UNLOGGED batch per partition key, with at
        most ``in_flight`` requests at once; raise the first failure after the requests in
        flight have ended. With ``partitions_per_batch`` > 1, small groups of up to that many
        partition keys share a batch (``batches``), within the node's thresholds
        (``batch_limits``: at most its partitions, and ``BatchLimits.mixed_bytes``).

        Only idempotent upserts and deletes may come here, whose outcome does not depend on the
        order they are applied in (``USING TIMESTAMP`` from the event, or the same values for
        the same key): the batches of one call run concurrently, as single statements did
        before. The rows of one partition key (in any table of the keyspace: Cassandra applies
        them as one mutation, on one replica set) cost one request instead of one each; most
        of a write's client CPU is the request, not the row. A write another one of the call
        shadows is left out (``unshadowed``).
        """
        kept = unshadowed(statements)
        mixed_bytes = MIXED_BATCH_BYTES
        if partitions_per_batch > 1 and kept:
            limits = await self.batch_limits()
            partitions_per_batch = min(partitions_per_batch, limits.partitions)
            mixed_bytes = limits.mixed_bytes
        requests = self.batches(
            kept,
            max_rows=max_rows,
            max_bytes=max_bytes,
            partitions_per_batch=partitions_per_batch,
            mixed_bytes=mixed_bytes,
        )
        self.statements_shadowed += len(statements) - len(kept)
        self.statements_sent += len(kept)
        self.requests_sent += len(requests)
        try:
            await _run_window(self.session, requests, in_flight)
        except InvalidRequest as exc:
            if "batch too large" in str(exc).lower():
                self._limits = None  # the node's thresholds changed: read them again
            raise

    def batches(
        self,
        statements: Sequence[tuple[str, Sequence[Any]]],
        *,
        max_rows: int = MAX_BATCH_ROWS,
        max_bytes: int = MAX_BATCH_BYTES,
        partitions_per_batch: int = 1,
        mixed_bytes: int = MIXED_BATCH_BYTES,
    ) -> list[Statement]:
        """The requests ``execute_all`` sends: statements bound and grouped by partition key
        (the serialized key: the same bytes in two tables are one mutation), in their given
        order, each group cut into batches of at most ``max_rows`` statements and about
        ``max_bytes`` of bound values; a group of one is sent as the plain statement, and so
        are statements a batch must not carry (reads, conditional writes).

        With ``partitions_per_batch`` > 1, groups of at most ``mixed_bytes`` (``_size``) share
        batches of up to that many partition keys (and ``mixed_bytes`` in all), routed to
        the first key's replicas: most of a write's client CPU, and much of the server's, is
        the request, and a 1:1 message's rows fall in five partitions (its two inbox rows, the
        message, the conversation's head, its log row)."""
        groups: dict[bytes, list[_Row]] = {}
        alone: list[Statement] = []
        for cql, params in statements:
            prepared = self.prepare(cql)
            values = _values(prepared, params) if _batchable(cql) else None
            key = _routing_key(prepared, values) if values is not None else None
            if values is None or key is None:
                alone.append(self.bind(cql, params))
                continue
            groups.setdefault(key, []).append((prepared, params, values))
        out: list[Statement] = []
        mixed: list[tuple[bytes, list[_Row], int]] = []
        for key, group in groups.items():
            for chunk in _chunks(group, max_rows, max_bytes):
                size = _size(chunk)
                if partitions_per_batch > 1 and size <= mixed_bytes:
                    mixed.append((key, chunk, size))
                else:
                    out.append(_request(key, chunk))
        pack: list[tuple[bytes, list[_Row], int]] = []
        packed = 0
        for item in mixed:
            if pack and (len(pack) >= partitions_per_batch or packed + item[2] > mixed_bytes):
                out.append(_request(pack[0][0], [row for _, rows, _ in pack for row in rows]))
                pack, packed = [], 0
            pack.append(item)
            packed += item[2]
        if pack:
            out.append(_request(pack[0][0], [row for _, rows, _ in pack for row in rows]))
        return out + alone


def _request(key: bytes, rows: list[_Row]) -> Statement:
    """One row as its plain statement, else an UNLOGGED batch routed by ``key``."""
    if len(rows) == 1:
        return _bound(*rows[0])
    # What BatchStatement.add(bound) records, without a BoundStatement per row.
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    batch.routing_key = key  # token-aware: sent to the partition's replicas
    batch.keyspace = rows[0][0].column_metadata[0].keyspace_name
    batch._statements_and_parameters.extend((True, prepared.query_id, values) for prepared, _, values in rows)
    batch.is_idempotent = True
    return batch


def _size(rows: list[_Row]) -> int:
    """About the size Cassandra gives ``rows``' mutations (``BatchLimits.mixed_bytes``)."""
    return sum(len(v) + CELL_BYTES if v is not None else CELL_BYTES for row in rows for v in row[2])


# ``UPDATE <table> USING TIMESTAMP ? SET a = ?, b = ? WHERE k = ? AND c = ?``: plain
# assignments (no counter or collection arithmetic) of one row named by its whole key.
_TIMESTAMPED_UPDATE = re.compile(
    r"^\s*UPDATE\s+\S+\s+USING\s+TIMESTAMP\s+\?\s+SET\s+(?P<set>.+?)\s+WHERE\s+(?P<where>.+?)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_ASSIGNMENT = re.compile(r"^\s*\w+\s*=\s*\?\s*$")
_KEY_EQUALS = re.compile(r"^\s*\w+\s*=\s*\?(?:\s+AND\s+\w+\s*=\s*\?)*\s*$", re.IGNORECASE)


def unshadowed(statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[str, Sequence[Any]]]:
    """``statements`` without the writes that others of them shadow, in their order.

    Cassandra keeps, per cell, the write with the highest timestamp, whatever the order they
    arrive in. Two runs of one ``UPDATE ... USING TIMESTAMP ? SET <plain assignments> WHERE
    <the row's key>`` for the same key write the same cells, so the one with the lower
    timestamp is never the one kept: leaving it out changes no row. On equal timestamps
    Cassandra compares the values, so both are kept. A replay batch writes a conversation's
    row, its members' inbox rows and watermarks once per event; most of them are shadowed
    within the batch.
    """
    newest: dict[tuple[str, tuple[Any, ...]], tuple[int, Any]] = {}
    shadowed: set[int] = set()
    for index, (cql, params) in enumerate(statements):
        keyed = _key_params(cql)
        if keyed is None:
            continue
        key = (cql, tuple(params[-keyed:]))
        seen = newest.get(key)
        if seen is None:
            newest[key] = (index, params[0])
        elif params[0] > seen[1]:
            shadowed.add(seen[0])
            newest[key] = (index, params[0])
        elif params[0] < seen[1]:
            shadowed.add(index)
    if not shadowed:
        return list(statements)
    return [statement for index, statement in enumerate(statements) if index not in shadowed]


@functools.cache
def _key_params(cql: str) -> int | None:
    """How many trailing parameters name the row, for an update ``unshadowed`` may drop; else
    None."""
    match = _TIMESTAMPED_UPDATE.match(cql)
    if match is None or not _KEY_EQUALS.match(match["where"]):
        return None
    if not all(_ASSIGNMENT.match(part) for part in match["set"].split(",")):
        return None
    return match["where"].count("?")


# (prepared statement, its parameters, their serialized values)
_Row = tuple[PreparedStatement, Sequence[Any], list[bytes | None]]


def _values(prepared: PreparedStatement, params: Sequence[Any]) -> list[bytes | None] | None:
    """The serialized values ``prepared.bind(params)`` would send, or None when only the
    driver's ``bind`` will do (a column encryption policy, missing or extra values). The
    driver's own ``bind`` builds a named tuple per value to look the policy up, which costs
    more than the serializing."""
    columns = prepared.column_metadata
    if prepared.column_encryption_policy is not None or len(params) != len(columns):
        return None
    version = prepared.protocol_version
    return [
        None if value is None else column.type.serialize(value, version)
        for value, column in zip(params, columns, strict=True)
    ]


def _bound(prepared: PreparedStatement, params: Sequence[Any], values: list[bytes | None]) -> BoundStatement:
    bound = BoundStatement(prepared)
    bound.raw_values = params
    bound.values = values
    return bound


def _routing_key(prepared: PreparedStatement, values: list[bytes | None]) -> bytes | None:
    """The partition key as the driver routes it (``BoundStatement.routing_key``)."""
    indexes = prepared.routing_key_indexes
    if not indexes:
        return None
    parts = [values[i] for i in indexes]
    if any(part is None for part in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    return b"".join(len(part).to_bytes(2, "big") + part + b"\x00" for part in parts if part is not None)


@functools.cache
def _batchable(cql: str) -> bool:
    """A plain write: not a read, nor a conditional (LWT) write, which a batch must not carry."""
    return _WRITE.match(cql) is not None and _CONDITIONAL.search(cql) is None


def _chunks(group: list[_Row], max_rows: int, max_bytes: int) -> Iterator[list[_Row]]:
    chunk: list[_Row] = []
    size = 0
    for row in group:
        n = sum(len(v) for v in row[2] if v is not None)
        if chunk and (len(chunk) >= max_rows or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += n
    if chunk:
        yield chunk


async def _run_window(session: Session, requests: Sequence[Statement], in_flight: int) -> None:
    """Send ``requests`` with at most ``in_flight`` outstanding; the driver's own thread sends
    the next one as each completes, and the event loop is woken once, at the end. After a
    failure nothing more is sent (the caller retries or bisects the whole call, and every
    statement is idempotent); the first failure is raised once the requests in flight ended."""
    if not requests:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    lock = threading.Lock()
    pending = iter(requests)
    remaining = len(requests)
    errors: list[BaseException] = []

    def send_next() -> None:
        with lock:
            request = None if errors else next(pending, None)
        if request is None:
            return
        try:
            future = session.execute_async(request)
        except Exception as exc:  # noqa: BLE001 - raised on the loop once the rest ended
            finished(exc)
            return
        future.add_callbacks(lambda _rows: finished(None), finished)

    def finished(exc: BaseException | None) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            if exc is not None:
                errors.append(exc)
                if len(errors) == 1:
                    remaining -= sum(1 for _ in pending)  # never sent
            last = remaining == 0
        if last:
            loop.call_soon_threadsafe(_settle, done, [], errors[0] if errors else None)
        elif exc is None:
            send_next()

    for _ in range(min(in_flight, len(requests))):
        send_next()
    await _translated(done)


async def _await(future: ResponseFuture) -> list[Any]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Any]] = loop.create_future()

    def ok(rows: Any) -> None:
        loop.call_soon_threadsafe(_settle, done, list(rows or []), None)

    def err(exc: BaseException) -> None:
        loop.call_soon_threadsafe(_settle, done, None, exc)

    future.add_callbacks(ok, err)
    rows: list[Any] = await _translated(done)
    return rows


async def _translated(done: asyncio.Future[Any]) -> Any:
    """Await a driver result, turning outages into ``Unavailable`` (raised from the cause)."""
    try:
        return await done
    except TRANSIENT as exc:
        raise Unavailable("Cassandra did not answer") from exc
    except DriverException as exc:
        if "connection" in str(exc).lower():
            raise Unavailable("Cassandra connection lost") from exc
        raise


def _settle(fut: asyncio.Future[Any], rows: list[Any] | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(rows or [])


def distinct_writes(events: Iterable[Any], statements_of: Callable[[Any], Iterable[S]]) -> list[S]:
    """The writes ``events`` cause, each once, in order: rows that many events of a batch share
    (a conversation's bucket, a device's row) are written once."""
    return list(dict.fromkeys(s for event in events for s in statements_of(event)))
