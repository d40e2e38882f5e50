"""Read model ``presence`` (Cassandra) and the presence pushes to watchers (Redis pub/sub).

Both consume ``PresenceChanged`` from the presence topic. The live state is in Redis (see
``commands.adapters.redis_presence``); the table keeps each user's last transition and ``last_seen``
durably, written ``USING TIMESTAMP`` of the transition's time, so the newest wins whatever the
order of arrival (two gateways may append one user's transitions out of order).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import RedisError

from events import ChatEvent, PresenceChanged
from events.errors import Unavailable
from projections.adapters.cql import Cql
from projections.adapters.redis_client import RedisClient, publish
from projections.delivery import presence_push
from projections.views import PresenceView

_UPSERT = "UPDATE {ks}.presence USING TIMESTAMP ? SET state = ?, last_seen = ?, at = ? WHERE user_id = ?"
_SELECT = "SELECT user_id, state, last_seen FROM {ks}.presence WHERE user_id IN ?"


class CassandraPresence:
    name = "presence"

    def __init__(self, cql: Cql) -> None:
        self._cql = cql

    def prepare(self) -> None:
        for cql in (_UPSERT, _SELECT):
            self._cql.prepare(cql)

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        work = [
            (_UPSERT, (e.at, e.state, e.last_seen, e.at, e.user_id))
            for e in events
            if isinstance(e, PresenceChanged)
        ]
        await self._cql.execute_all(work)

    async def read(self, user_ids: Sequence[str]) -> dict[str, PresenceView]:
        """The last recorded transitions of those users that have one."""
        rows = await self._cql.execute(_SELECT, (list(user_ids),))
        return {r.user_id: PresenceView(r.user_id, r.state, r.last_seen) for r in rows}


class PresencePushes:
    """Publishes each transition to the user's presence channel, where gateways with a watcher
    of that user listen."""

    name = "presence-push"

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        pushes = [presence_push(e) for e in events if isinstance(e, PresenceChanged)]
        if not pushes:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for push in pushes:
                    publish(pipe, push.channel, push.payload)
                await pipe.execute()
        except RedisError as exc:
            raise Unavailable("Redis did not take the presence pushes") from exc
