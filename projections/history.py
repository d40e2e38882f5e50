"""The history query: one page of a conversation, walking the tiers (hot Redis, then warm
Cassandra, then cold Parquet) so the caller never knows where a message lives."""

from __future__ import annotations

from typing import Any, Protocol

from events.errors import Unavailable


class HotTier(Protocol):
    async def newest(
        self, conversation_id: str, *, before: int | None, limit: int
    ) -> list[dict[str, Any]]: ...
    async def all(self, conversation_id: str) -> list[dict[str, Any]]: ...


class WarmTier(Protocol):
    async def page(
        self, conversation_id: str, *, before: int | None, after: int | None, limit: int
    ) -> list[dict[str, Any]]: ...


class ColdTier(Protocol):
    """The archive: the oldest messages of each conversation (a prefix of its log), read-only."""

    async def page(
        self, conversation_id: str, *, before: int | None, after: int | None, limit: int
    ) -> list[dict[str, Any]]: ...


async def history_page(
    conversation_id: str,
    *,
    before: int | None,
    after: int | None,
    limit: int,
    hot: HotTier,
    warm: WarmTier,
    cold: ColdTier | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """``(messages ascending, has_more)`` as the protocol defines them.

    The hot tier holds a contiguous newest suffix of the history, so when it has more than
    ``limit`` messages in the asked range it answers alone; otherwise the warm tier does. A Redis
    outage only costs speed. The cold tier holds each conversation's oldest messages (the warm
    copies of those may be pruned): reading back, it is asked for what is older than the
    oldest warm message when the warm tier runs short; reading forward, it is asked first.
    """
    want = limit + 1
    hot_page: list[dict[str, Any]] = []
    try:
        if after is None:
            hot_page = await hot.newest(conversation_id, before=before, limit=want)
            if len(hot_page) == want:
                return hot_page[1:], True
        else:
            cached = await hot.all(conversation_id)
            newer = [m for m in cached if int(m["message_id"]) > after]
            if cached and int(cached[0]["message_id"]) <= after:
                return newer[:limit], len(newer) > limit
            hot_page = newer
    except Unavailable:
        pass
    warm_page = await warm.page(conversation_id, before=before, after=after, limit=want)
    if (
        hot_page
        and warm_page
        and _hole_between(warm_page, hot_page, exhausted=len(warm_page) < want or after is None)
    ):
        # The warm tier lags behind the whole hot window (or Redis lost it): what lies between
        # is in the log but in neither tier yet. A page with a hole would move the client's
        # cursor past messages it never saw; "try again" keeps the cursor where it is.
        raise Unavailable("history is catching up; try again shortly", retry_after=1)
    # The hot tier is written before the warm one: add what Cassandra does not have yet, so a
    # reader never misses a message it was just pushed.
    merged = {int(m["message_id"]): m for m in warm_page}
    merged.update((int(m["message_id"]), m) for m in hot_page)
    if cold is not None:
        if after is not None:
            # Forward from an old id: the archive holds the oldest; warm rows may be pruned.
            cold_page = await cold.page(conversation_id, before=None, after=after, limit=want)
        elif len(merged) < want:
            oldest = min(merged) if merged else before
            cold_page = await cold.page(conversation_id, before=oldest, after=None, limit=want - len(merged))
        else:
            cold_page = []
        for m in cold_page:
            merged.setdefault(int(m["message_id"]), m)
    page = [merged[k] for k in sorted(merged)]
    if after is None:
        return page[-limit:], len(page) > limit
    return page[:limit], len(page) > limit


def _hole_between(
    warm_page: list[dict[str, Any]], hot_page: list[dict[str, Any]], *, exhausted: bool
) -> bool:
    """Whether the tiers fail to meet: the hot tier is a contiguous newest suffix and the warm
    tier a contiguous prefix, so their union is whole only when they overlap. (An empty warm
    page proves nothing either way: a conversation's first messages are only hot for a moment.)"""
    if not exhausted:
        return False  # the page ends inside the warm tier's rows
    newest_warm = max(int(m["message_id"]) for m in warm_page)
    return min(int(m["message_id"]) for m in hot_page) > newest_warm
