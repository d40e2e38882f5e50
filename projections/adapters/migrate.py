"""Apply the CQL migrations in ``schema.MIGRATIONS`` that a keyspace has not seen yet."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from cassandra import InvalidRequest
from cassandra.cluster import Session

from projections.schema import BOOTSTRAP, MIGRATIONS, replication_literal, same_replication


def migrate_cassandra(
    session: Session,
    keyspace: str,
    *,
    replication: Mapping[str, str | int],
    echo: Callable[[str], None] = print,
) -> list[int]:
    """Blocking. Creates ``keyspace`` with ``replication`` (a replication map, see
    ``Settings.cassandra_replication_map``) if it does not exist, then applies the migrations it
    has not seen; returns the versions applied by this call (empty when up to date). An existing
    keyspace keeps its replication: a different one is reported through ``echo``, since changing
    it is an ``ALTER KEYSPACE`` followed by a repair on every node, an operator's step."""
    literal = replication_literal(replication)
    for cql in BOOTSTRAP:
        session.execute(cql.format(ks=keyspace, replication=literal), timeout=60)
        _schema_agreed(session)
    row = session.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)
    ).one()
    if row is not None and not same_replication(row.replication, replication):
        echo(
            f"cassandra: WARNING keyspace {keyspace} has replication {dict(row.replication)}, settings "
            f"say {literal}; to change it: ALTER KEYSPACE {keyspace} WITH replication = {literal}, "
            "then nodetool repair on every node"
        )
    done = {row.version for row in session.execute(f"SELECT version FROM {keyspace}.schema_migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for cql in migration.statements:
            try:
                session.execute(cql.format(ks=keyspace), timeout=60)
            except InvalidRequest as exc:
                # ALTER TABLE ... ADD has no IF NOT EXISTS that ScyllaDB also speaks: a column
                # added before a crash (between the statement and the record) is already there.
                if not (cql.startswith("ALTER TABLE") and _already_there(str(exc))):
                    raise
            _schema_agreed(session)
        session.execute(
            f"INSERT INTO {keyspace}.schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
            (migration.version, migration.name, datetime.now(UTC)),
        )
        echo(f"cassandra: applied migration {migration.version} ({migration.name})")
        applied.append(migration.version)
    return applied


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
