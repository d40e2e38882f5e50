"""Removing the warm copies of archived events (``tidings archive prune``).

Only events the archive holds in verified files are deleted, and only from ``messages`` (the
warm tier of history) and ``conversation_log`` (the sync log: below the prune watermark, sync
reads the archive); every other read model keeps what the archived events made of it.
A bucket row of ``conversation_buckets`` goes when its bucket has no message left, so paging
back does not query empty partitions.
"""

from __future__ import annotations

from collections.abc import Sequence

from projections.adapters.cql import Cql
from projections.messages import bucket_of

_DELETE = "DELETE FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND message_id = ?"
_ANY = "SELECT message_id FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? LIMIT 1"
_DELETE_BUCKET = "DELETE FROM {ks}.conversation_buckets WHERE conversation_id = ? AND bucket = ?"
_DELETE_LOG = "DELETE FROM {ks}.conversation_log WHERE conversation_id = ? AND bucket = ? AND log_offset < ?"
_INSERT_BUCKET = "INSERT INTO {ks}.conversation_buckets (conversation_id, bucket) VALUES (?, ?)"


async def delete_archived(cql: Cql, bucket_ms: int, rows: Sequence[tuple[str, int]]) -> int:
    """Delete these ``(conversation_id, message_id)`` from ``messages``; returns how many."""
    work = [(_DELETE, (cid, bucket_of(mid, bucket_ms), mid)) for cid, mid in rows]
    await cql.execute_all(work)
    return len(work)


async def delete_archived_log(
    cql: Cql, buckets: Sequence[tuple[str, int, int]], below: dict[int, int]
) -> int:
    """Delete the sync log's rows below ``below[partition]`` in these ``(conversation_id,
    partition, bucket)`` (one range deletion each); returns how many ranges."""
    work = [(_DELETE_LOG, (cid, bucket, below[p])) for cid, p, bucket in buckets]
    await cql.execute_all(work)
    return len(work)


async def drop_empty_buckets(cql: Cql, buckets: Sequence[tuple[str, int]]) -> int:
    """Delete the bucket rows whose bucket is now empty; returns how many."""
    dropped = 0
    for cid, bucket in buckets:
        if await cql.execute(_ANY, (cid, bucket)):
            continue
        await cql.execute(_DELETE_BUCKET, (cid, bucket))
        # A message the worker wrote into this bucket between the check and the delete (only
        # possible when archiving inside the current bucket span) gets its row back.
        if await cql.execute(_ANY, (cid, bucket)):
            await cql.execute(_INSERT_BUCKET, (cid, bucket))
            continue
        dropped += 1
    return dropped
