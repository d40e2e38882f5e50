"""Apply the CQL migrations in ``schema.MIGRATIONS`` that a keyspace has not seen yet."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cassandra.cluster import Session

from projections.schema import BOOTSTRAP, MIGRATIONS


def migrate_cassandra(
    session: Session, keyspace: str, *, replication_factor: int, echo: Callable[[str], None] = print
) -> list[int]:
    """Blocking. Returns the versions applied by this call (empty when up to date)."""
    for cql in BOOTSTRAP:
        session.execute(cql.format(ks=keyspace, rf=replication_factor), timeout=60)
    done = {row.version for row in session.execute(f"SELECT version FROM {keyspace}.schema_migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for cql in migration.statements:
            session.execute(cql.format(ks=keyspace), timeout=60)
        session.execute(
            f"INSERT INTO {keyspace}.schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
            (migration.version, migration.name, datetime.now(UTC)),
        )
        echo(f"cassandra: applied migration {migration.version} ({migration.name})")
        applied.append(migration.version)
    return applied
