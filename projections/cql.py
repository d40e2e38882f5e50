"""A small asyncio face on cassandra-driver: prepared statements, awaited futures, and
driver exceptions translated into ``Unavailable`` (transient) once, here."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from cassandra import (
    DriverException,
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
from cassandra.query import PreparedStatement

from events.errors import Unavailable

# Errors that mean "try again later", as opposed to a statement that can never succeed.
TRANSIENT = (NoHostAvailable, OperationTimedOut, ReadTimeout, WriteTimeout, CassandraUnavailable)


def connect(
    hosts: Sequence[str], port: int, *, protocol_version: int, local_dc: str
) -> tuple[Cluster, Session]:
    """Blocking: call at start-up (or in an executor), never on the event loop's hot path."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
        request_timeout=10,
    )
    cluster = Cluster(
        list(hosts),
        port=port,
        protocol_version=protocol_version,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
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


def connect_to(config: CassandraConfig) -> tuple[Cluster, Session]:
    """``connect`` with the addresses and protocol of ``config``."""
    return connect(
        config.cassandra_hosts,
        config.cassandra_port,
        protocol_version=config.cassandra_protocol_version,
        local_dc=config.cassandra_local_dc,
    )


class Cql:
    def __init__(self, session: Session, keyspace: str) -> None:
        self.session = session
        self.keyspace = keyspace
        self._prepared: dict[str, PreparedStatement] = {}

    def prepare(self, cql: str) -> PreparedStatement:
        """Blocking the first time per statement; cached after."""
        stmt = self._prepared.get(cql)
        if stmt is None:
            stmt = self.session.prepare(cql.format(ks=self.keyspace))
            stmt.is_idempotent = True
            self._prepared[cql] = stmt
        return stmt

    async def execute(self, cql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement and return all rows of its first page."""
        future = self.session.execute_async(self.prepare(cql), params)
        return await _await(future)

    async def execute_paged(self, cql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement and return the rows of every page."""
        rows: list[Any] = []
        paging_state = None
        while True:
            future = self.session.execute_async(self.prepare(cql), params, paging_state=paging_state)
            rows += await _await(future)
            if not future.has_more_pages:
                return rows
            paging_state = future._paging_state  # what ResultSet itself passes on

    async def execute_all(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, in_flight: int = 256
    ) -> None:
        """Run statements concurrently (at most ``in_flight`` at once); raise the first failure
        after all have finished.

        The driver completes futures on its own thread; waking the event loop once per chunk
        instead of once per statement saves most of the cost of a write (the worker spends
        it per event otherwise).
        """
        for start in range(0, len(statements), in_flight):
            chunk = statements[start : start + in_flight]
            futures = [self.session.execute_async(self.prepare(c), p) for c, p in chunk]
            await _await_all(futures)


async def _await_all(futures: Sequence[ResponseFuture]) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    remaining = len(futures)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def finished(exc: BaseException | None) -> None:
        nonlocal remaining
        with lock:
            if exc is not None:
                errors.append(exc)
            remaining -= 1
            last = remaining == 0
        if last:
            loop.call_soon_threadsafe(_settle, done, [], errors[0] if errors else None)

    if not futures:
        return
    for future in futures:
        future.add_callbacks(lambda _rows: finished(None), finished)
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
