"""Versioned CQL migrations. Each is applied once, in order, and recorded in
``schema_migrations``; every statement is also ``IF NOT EXISTS`` so a re-run after a crash
between a statement and its record is harmless.

The CQL sticks to what ScyllaDB also speaks (no SAI, vectors or UCS).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "messages",
        (
            # Discord's layout: one partition per conversation and time bucket keeps partitions
            # bounded; newest first so a history page is one slice.
            """CREATE TABLE IF NOT EXISTS {ks}.messages (
                conversation_id text, bucket int, message_id bigint,
                sender_id text, sender_device text, client_msg_id text,
                kind text, body text, media text, ts bigint,
                PRIMARY KEY ((conversation_id, bucket), message_id)
            ) WITH CLUSTERING ORDER BY (message_id DESC)""",
            # Which buckets of a conversation hold messages, so paging skips empty ones.
            """CREATE TABLE IF NOT EXISTS {ks}.conversation_buckets (
                conversation_id text, bucket int,
                PRIMARY KEY (conversation_id, bucket)
            ) WITH CLUSTERING ORDER BY (bucket DESC)""",
        ),
    ),
)

BOOTSTRAP = (
    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
    "{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}",
    "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations ("
    "version int PRIMARY KEY, name text, applied_at timestamp)",
)
