"""Versioned CQL migrations. Each is applied once, in order, and recorded in
``schema_migrations``; every statement is also ``IF NOT EXISTS`` so a re-run after a crash
between a statement and its record is harmless.

The CQL sticks to what ScyllaDB also speaks (no SAI, vectors or UCS).
"""

from __future__ import annotations

from collections.abc import Mapping
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
    Migration(
        2,
        "conversations, members, inbox",
        (
            # One row per conversation: metadata, the count decided by the write side, and the
            # newest message (stored once, whatever the group's size).
            """CREATE TABLE IF NOT EXISTS {ks}.conversations (
                conversation_id text PRIMARY KEY, kind text, title text, owner_id text,
                member_count int, created_ts bigint,
                last_message_id bigint, last_sender_id text, last_preview text, last_ts bigint
            )""",
            """CREATE TABLE IF NOT EXISTS {ks}.members (
                conversation_id text, user_id text, role text, joined_ts bigint,
                PRIMARY KEY (conversation_id, user_id)
            )""",
            # A user's inbox rows. The newest-message columns are written per member only for
            # direct chats and groups below the fan-out threshold; large groups read theirs from
            # `conversations`. read_up_to is the user's read watermark (a message_id).
            """CREATE TABLE IF NOT EXISTS {ks}.user_conversations (
                user_id text, conversation_id text, kind text, joined_ts bigint,
                last_message_id bigint, last_sender_id text, last_preview text, last_ts bigint,
                read_up_to bigint,
                PRIMARY KEY (user_id, conversation_id)
            )""",
        ),
    ),
    Migration(
        3,
        "receipts",
        (
            # Per member watermarks (message ids). Written with the watermark's own time as the
            # write timestamp, so the highest wins whatever order the writes arrive in.
            """CREATE TABLE IF NOT EXISTS {ks}.receipts (
                conversation_id text, user_id text, delivered bigint, read bigint,
                PRIMARY KEY (conversation_id, user_id)
            )""",
        ),
    ),
    Migration(
        4,
        "presence",
        (
            # Each user's last presence transition, written with the transition's own time
            # (µs) as the write timestamp, so the newest wins in any order. Redis holds the live
            # state; this keeps last_seen when Redis loses it.
            """CREATE TABLE IF NOT EXISTS {ks}.presence (
                user_id text PRIMARY KEY, state text, last_seen bigint, at bigint
            )""",
        ),
    ),
    Migration(
        5,
        "sync log",
        (
            # Every conversation event in log order: by conversation, clustered by its offset
            # in the conversation's Kafka partition, in buckets of 2^20 offsets so partitions
            # stay bounded. `/v1/sync` reads what lies between a device's cursor and the
            # applied watermark.
            """CREATE TABLE IF NOT EXISTS {ks}.conversation_log (
                conversation_id text, bucket int, log_offset bigint, event blob,
                PRIMARY KEY ((conversation_id, bucket), log_offset)
            )""",
            """CREATE TABLE IF NOT EXISTS {ks}.conversation_log_buckets (
                conversation_id text, bucket int,
                PRIMARY KEY (conversation_id, bucket)
            )""",
            # Joins and removals per user, so a sync reports a conversation the user left.
            """CREATE TABLE IF NOT EXISTS {ks}.user_log (
                user_id text, log_partition int, log_offset bigint, conversation_id text, change text,
                PRIMARY KEY (user_id, log_partition, log_offset)
            )""",
            # Per partition, the offset up to which every event is applied to every read model;
            # written with the offset as the write timestamp, so it never moves back.
            """CREATE TABLE IF NOT EXISTS {ks}.sync_watermarks (
                log_partition int PRIMARY KEY, applied bigint
            )""",
        ),
    ),
    Migration(
        6,
        "sync heads",
        (
            # Per conversation, the highest log offset in conversation_log (written with the
            # offset as the write timestamp, so it never moves back). A sync reads only the
            # conversations whose head is past the device's cursor, instead of all of the
            # user's. A conversation without a row (written before this table) is read.
            """CREATE TABLE IF NOT EXISTS {ks}.conversation_heads (
                conversation_id text PRIMARY KEY, head bigint
            )""",
        ),
    ),
    Migration(
        7,
        "media",
        (
            # One row per upload (projections/media.py): where its bytes are, what they are, its
            # thumbnail and the copy other members download. `deleted` rows stay as tombstones.
            """CREATE TABLE IF NOT EXISTS {ks}.media (
                media_id text PRIMARY KEY, uploader_id text, object_key text, content_type text,
                size bigint, sha256 text, width int, height int, created_ts bigint,
                processed boolean, thumbnail_key text, shared_key text, location_removed boolean,
                deleted boolean
            )""",
            # The access read model: the conversations a message carrying the media was sent
            # to (from MessageSent), so their members may read it.
            """CREATE TABLE IF NOT EXISTS {ks}.media_access (
                media_id text, conversation_id text, message_id bigint,
                PRIMARY KEY (media_id, conversation_id)
            )""",
        ),
    ),
    Migration(
        8,
        "push registrations and mutes",
        (
            # Where each device's offline notifications go (one row per device), from the
            # user-events topic; written and deleted USING TIMESTAMP of the event (µs), so the
            # newest change wins whatever the order of arrival.
            """CREATE TABLE IF NOT EXISTS {ks}.push_registrations (
                user_id text, device_id text, provider text, endpoint text, device_token text,
                p256dh text, auth text, registered_ts bigint,
                PRIMARY KEY (user_id, device_id)
            )""",
            # Mutes by conversation, so the notifier reads a conversation's muted members in one
            # query; same write-time rule.
            """CREATE TABLE IF NOT EXISTS {ks}.conversation_mutes (
                conversation_id text, user_id text, muted boolean,
                PRIMARY KEY (conversation_id, user_id)
            )""",
        ),
    ),
    Migration(
        9,
        "e2ee key directory",
        (
            # Number 9: 8 is the push notifications branch's. projections/keys.py: device keys,
            # one-time keys (claimed_by set once handed out), the fallback key per device.
            """CREATE TABLE IF NOT EXISTS {ks}.device_keys (
                user_id text, device_id text, identity_key text, signing_key text, signature text,
                ts bigint, PRIMARY KEY (user_id, device_id)
            )""",
            """CREATE TABLE IF NOT EXISTS {ks}.one_time_keys (
                user_id text, device_id text, key_id text, key text, signature text, claimed_by text,
                PRIMARY KEY ((user_id, device_id), key_id)
            )""",
            """CREATE TABLE IF NOT EXISTS {ks}.fallback_keys (
                user_id text, device_id text, key_id text, key text, signature text,
                PRIMARY KEY ((user_id, device_id))
            )""",
            # The claims' lightweight transactions: one partition per key, so concurrent claims
            # of one device's keys contend only when they pick the same key.
            """CREATE TABLE IF NOT EXISTS {ks}.one_time_claims (
                user_id text, device_id text, key text, claimed_by text, claim_id uuid,
                PRIMARY KEY ((user_id, device_id, key))
            )""",
        ),
    ),
    Migration(
        10,
        "e2ee encrypted conversations",
        (
            # projections/encryption.py: a row per end-to-end encrypted conversation, never
            # deleted (encryption cannot be turned off).
            """CREATE TABLE IF NOT EXISTS {ks}.conversation_encryption (
                conversation_id text PRIMARY KEY, encrypted boolean
            )""",
            # An encrypted message's ciphertext and how to decrypt it (kind 'encrypted', body
            # empty); null for every other kind. An ALTER ... ADD of a column that is already
            # there (a re-run) is skipped by the migration runner.
            "ALTER TABLE {ks}.messages ADD ciphertext text",
            "ALTER TABLE {ks}.messages ADD algorithm text",
            "ALTER TABLE {ks}.messages ADD session_id text",
        ),
    ),
)

BOOTSTRAP = (
    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}",
    "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations ("
    "version int PRIMARY KEY, name text, applied_at timestamp)",
)


def replication_literal(replication: Mapping[str, str | int]) -> str:
    """A keyspace replication map as CQL, e.g. ``{'class': 'SimpleStrategy', 'replication_factor': 1}``
    (settings check the map's shape; this quotes it)."""

    def quoted(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    items = [
        f"{quoted(str(key))}: {quoted(str(value)) if key == 'class' else int(value)}"
        for key, value in replication.items()
    ]
    return "{" + ", ".join(items) + "}"


def same_replication(current: Mapping[str, str], wanted: Mapping[str, str | int]) -> bool:
    """Whether a keyspace's replication as ``system_schema.keyspaces`` shows it (full class
    name, text values) is ``wanted``."""

    def normal(replication: Mapping[str, object]) -> dict[str, str]:
        return {k: str(v).rsplit(".", 1)[-1] if k == "class" else str(v) for k, v in replication.items()}

    return normal(current) == normal(wanted)
