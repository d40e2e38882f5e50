"""Apply the CQL migrations in ``schema.MIGRATIONS`` that a keyspace has not seen yet."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from cassandra import InvalidRequest, ReadFailure, WriteFailure
from cassandra.cluster import Session

from projections.schema import BOOTSTRAP, MIGRATIONS, replication_literal, same_replication


def migrate_cassandra(
    session: Session,
    keyspace: str,
    *,
    replication: Mapping[str, str | int],
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Blocking. Creates ``keyspace`` with ``replication`` (a replication map, see
    ``Settings.cassandra_replication_map``) if it does not exist, then applies the migrations it
    has not seen; returns the versions applied by this call (empty when up to date). An existing
    keyspace keeps its replication: a different one is reported through ``echo``, since changing
    it is an ``ALTER KEYSPACE`` followed by a repair on every node, an operator's step."""
    literal = replication_literal(replication)

    def run(cql: str, params: Any = None) -> Any:
        return _execute(session, cql, params, sleep)

    for cql in BOOTSTRAP:
        run(cql.format(ks=keyspace, replication=literal))
        _schema_agreed(session)
    row = run("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)).one()
    if row is not None and not same_replication(row.replication, replication):
        echo(
            f"cassandra: WARNING keyspace {keyspace} has replication {dict(row.replication)}, settings "
            f"say {literal}; to change it: ALTER KEYSPACE {keyspace} WITH replication = {literal}, "
            "then nodetool repair on every node"
        )
    done = {row.version for row in run(f"SELECT version FROM {keyspace}.schema_migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for cql in migration.statements:
            try:
                run(cql.format(ks=keyspace))
            except InvalidRequest as exc:
                # ALTER TABLE ... ADD has no IF NOT EXISTS that ScyllaDB also speaks: a column
                # added before a crash (between the statement and the record) is already there.
                if not (cql.startswith("ALTER TABLE") and _already_there(str(exc))):
                    raise
            _schema_agreed(session)
        run(
            f"INSERT INTO {keyspace}.schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
            (migration.version, migration.name, datetime.now(UTC)),
        )
        echo(f"cassandra: applied migration {migration.version} ({migration.name})")
        applied.append(migration.version)
    return applied


# Backoff (s) before each retry of a statement that met a node without the schema just made.
_UNKNOWN_RETRIES = (0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0)


def _execute(session: Session, cql: str, params: Any, sleep: Callable[[float], None]) -> Any:
    """``session.execute``, retried while a node does not know a keyspace or table made just
    before. The driver's schema agreement counts only the nodes it has marked up: on a cluster
    whose nodes have just started, a node it had not counted yet could still miss it. The
    coordinator then says so ("Keyspace ... doesn't exist", CI once, right after CREATE
    KEYSPACE), or a replica does, and the read or write fails with ``INCOMPATIBLE_SCHEMA`` (CI
    once, the first read of ``schema_migrations``: the replica learned the table 1.5 s later).
    Every statement here may run twice (IF NOT EXISTS, reads, an upsert of the record)."""
    for backoff in _UNKNOWN_RETRIES:
        try:
            return session.execute(cql, params, timeout=60)
        except InvalidRequest as exc:
            if not _not_known_yet(str(exc)):
                raise
        except (ReadFailure, WriteFailure) as exc:
            if "INCOMPATIBLE_SCHEMA" not in str(exc):
                raise
        sleep(backoff)
        _schema_agreed(session)
    return session.execute(cql, params, timeout=60)  # the last try: its error is the caller's


def _not_known_yet(message: str) -> bool:
    lowered = message.lower()
    return "doesn't exist" in lowered or "does not exist" in lowered or "unconfigured table" in lowered


def _schema_agreed(session: Session, wait_s: float = 120) -> None:
    """Wait until every node has the schema change just made. The driver waits 10 s by itself
    (``max_schema_agreement_wait``) and then goes on regardless; on a cluster whose nodes have
    just started that was too short: the next statement reached a node that did not know the new
    keyspace yet ("Keyspace ... doesn't exist"). A single node agrees at once."""
    if not session.cluster.control_connection.wait_for_schema_agreement(wait_time=wait_s):
        raise RuntimeError(f"the Cassandra nodes did not agree on the schema within {wait_s:.0f} s")


def _already_there(message: str) -> bool:
    """Whether an ``ALTER TABLE ... ADD`` failed because the column exists (Cassandra's and
    ScyllaDB's wordings)."""
    lowered = message.lower()
    return "conflicts with an existing column" in lowered or "already exists" in lowered
