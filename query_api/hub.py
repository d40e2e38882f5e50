"""This process's WebSocket connections, and the pub/sub listener that feeds them.

A gateway subscribes to a user's delivery channel while it holds at least one of that user's
sockets (in batches: ``query_api.subscriptions``). A push never waits for a socket: it is
written at once or waits in the socket's bounded backlog, so one slow client never stalls the
listener or other clients; when its backlog is full it is disconnected, and it catches up with
``/v1/sync`` after reconnecting (``query_api.connection``).

Routes (single-instance Redis): the gateway also listens on a channel of its own and, while it
holds a user's sockets, keeps its id in the user's route set, so the deliver stage publishes a
conversation's pushes once per gateway with the recipients' ids (``projections.delivery``) and
the hub hands them to those users' sockets here. A socket counts as registered only once both
the user's channel is subscribed and the route is in Redis: a delivery after that reaches it
by one or the other (the deliver stage's script publishes on the user's channel when it finds
no live route).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from events import keys
from events.errors import Unavailable
from projections.delivery import unrouted
from projections.wire import JOINED, LEFT, MESSAGE, TO_DEVICE, TRACED, TYPING, untag, untyping
from query_api.config import NoSpans, Spans
from query_api.connection import CLOSE_TRY_AGAIN, Connection, TokenBucket
from query_api.metrics import FRAMES_OUT, WS_CONNECTIONS
from query_api.subscriptions import Subscriber, Subscribing, Subscriptions, settled

log = logging.getLogger(__name__)

__all__ = ["CLOSE_TRY_AGAIN", "Connection", "Hub", "Subscriber", "TokenBucket"]

_PUSHED = FRAMES_OUT.labels("push")
# How often the listener's connection is health-checked (a PING once it has been quiet for the
# client's ``health_check_interval``): the pace the 1 s read timeout used to set.
HEALTH_CHECK_S = 1.0

GroupsOf = Callable[[str], Awaitable[set[str]]]


class Routes(Subscribing, Protocol):
    """This gateway's entries in its users' route sets (``projections.adapters.redis_pubsub.
    GatewayRoutes``): ``subscribe``/``unsubscribe`` add and remove users, ``add`` pushes
    entries forward before they expire (``ttl_s``); ``channel`` is the gateway's own."""

    channel: str
    ttl_s: float

    async def add(self, user_ids: Iterable[str]) -> None: ...


class Hub:
    """Routes pub/sub payloads (see ``projections.wire`` for their envelope) to sockets.

    A user's own channel is subscribed while this process holds one of their sockets. Large
    groups' messages arrive on shard channels that every gateway listens to from the start, and
    go to the local members of that group: the hub keeps which groups its users belong to,
    loaded when a user's first socket arrives and then kept current by the join and leave
    payloads on the user's channel, which reach it in log order with the messages.
    """

    def __init__(
        self,
        subscriber: Subscriber,
        groups_of: GroupsOf,
        *,
        shards: int,
        spans: Spans | None = None,
        routes: Routes | None = None,
    ) -> None:
        self._subscriber = subscriber
        # A traced delivery (``projections.wire.traced``) gets a ``gateway.deliver`` span.
        self._spans = spans if spans is not None else NoSpans()
        self._groups_of = groups_of
        self._shards = shards
        self._by_user: dict[str, set[Connection]] = {}
        self._group_members: dict[str, set[str]] = {}
        self._user_groups: dict[str, set[str]] = {}
        # Joins and leaves seen while a user's groups are being loaded, replayed after the load.
        self._loading: dict[str, list[tuple[bytes, str]]] = {}
        # Per user with a socket here: the one load of their groups (done once loaded).
        self._group_loads: dict[str, asyncio.Future[None]] = {}
        # Presence watchers: watched user -> sockets here, and the newest transition time seen
        # for each (a transition older than it arrived late and is dropped).
        self._watchers: dict[str, set[Connection]] = {}
        self._presence_at: dict[str, int] = {}
        self._subscriptions = Subscriptions(subscriber, self._wanted)
        # The users whose route set holds this gateway, batched like the channels.
        self._route_store = routes
        self._routes = Subscriptions(routes, self._by_user.__contains__) if routes is not None else None
        self._refresh_now = asyncio.Event()
        self._user_prefix = keys.user_channel("")
        self._presence_prefix = keys.presence_channel("")

    @property
    def connections(self) -> int:
        return sum(len(c) for c in self._by_user.values())

    async def start(self) -> None:
        """Subscribe to the group shard channels (this also opens the pub/sub connection)."""
        channels = [keys.group_shard_channel(n) for n in range(self._shards)]
        if self._route_store is not None:
            channels.append(self._route_store.channel)
        await self._subscriber.subscribe(*channels)

    def _wanted(self, channel: str) -> bool:
        """Whether this process must hear ``channel`` now (asked at each subscription flush)."""
        if channel.startswith(self._user_prefix):
            return channel[len(self._user_prefix) :] in self._by_user
        if channel.startswith(self._presence_prefix):
            return channel[len(self._presence_prefix) :] in self._watchers
        return False

    async def register(self, conn: Connection) -> None:
        """Start routing to ``conn``. All or nothing: if Redis or the membership read model
        fails, nothing is left registered and ``Unavailable`` is raised; if the registration is
        cancelled (the client went away meanwhile: Sanic cancels the handler), nothing is left
        either. Registrations that arrive together share one SUBSCRIBE (see
        ``query_api.subscriptions``); every socket of a user waits for the one load of the
        user's groups (the first socket's), which no cancelled registration stops."""
        user_id = conn.user_id
        self._by_user.setdefault(user_id, set()).add(conn)
        # Counted from here: it receives its user's pushes as soon as the user's channel is
        # subscribed, before its registration ends (the groups may still be loading).
        WS_CONNECTIONS.inc()
        load = self._group_loads.get(user_id)
        if load is None:
            changes: list[tuple[bytes, str]] = []
            self._loading[user_id] = changes
            load = self._group_loads[user_id] = asyncio.ensure_future(self._load_groups(user_id, changes))
            load.add_done_callback(_retrieve)
        try:
            # Also for a later socket of the user: the first one's SUBSCRIBE may still be in
            # flight (or have failed), and this one must not count as registered before it is.
            pending = self._subscriptions.ensure(keys.user_channel(user_id))
            route = self._routes.ensure(user_id) if self._routes is not None else None
            if pending is not None:
                await settled(pending)
            if route is not None:
                await settled(route)
            await asyncio.shield(load)
        except Exception as exc:
            WS_CONNECTIONS.dec()
            if self._forget(conn):
                self._drop_route(user_id)
                await self._release([keys.user_channel(user_id)])
            raise Unavailable("cannot subscribe to deliveries or load the user's groups") from exc
        except BaseException:
            # Cancelled: a socket left in the hub would keep the user's later sockets here
            # from loading the groups (they would get no large-group pushes), for good.
            WS_CONNECTIONS.dec()
            if self._forget(conn):
                self._drop_route(user_id)
                self._subscriptions.changed(keys.user_channel(user_id))
            raise

    async def _load_groups(self, user_id: str, changes: list[tuple[bytes, str]]) -> None:
        """The user's groups, then the joins and leaves that arrived meanwhile (``changes``)."""
        try:
            groups = await self._groups_of(user_id)
        finally:
            if self._loading.get(user_id) is changes:
                del self._loading[user_id]
        if user_id in self._by_user:
            for cid in groups:
                self._join(user_id, cid)
            for kind, cid in changes:
                self._change(user_id, kind, cid)

    def _forget(self, conn: Connection) -> bool:
        """Drop ``conn``; True when it was its user's last socket here."""
        conns = self._by_user.get(conn.user_id)
        if conns is None:
            return False
        conns.discard(conn)
        if conns:
            return False
        del self._by_user[conn.user_id]
        load = self._group_loads.pop(conn.user_id, None)
        if load is not None and not load.done():
            load.cancel()
        self._loading.pop(conn.user_id, None)
        for cid in self._user_groups.pop(conn.user_id, set()):
            members = self._group_members.get(cid)
            if members is not None:
                members.discard(conn.user_id)
                if not members:
                    del self._group_members[cid]
        return True

    async def unregister(self, conn: Connection) -> None:
        WS_CONNECTIONS.dec()
        changed = [keys.presence_channel(u) for u in self._unwatch(conn, conn.watching)]
        conn.watching = frozenset()
        if self._forget(conn):
            changed.append(keys.user_channel(conn.user_id))
            self._drop_route(conn.user_id)
        await self._release(changed)

    def _drop_route(self, user_id: str) -> None:
        """The user's last socket here went: the next route flush removes this gateway from
        their route set (best effort: an entry left behind expires, and a push it still
        brings here finds no socket)."""
        if self._routes is not None:
            self._routes.changed(user_id)

    async def watch(self, conn: Connection, user_ids: set[str]) -> set[str]:
        """Make ``user_ids`` the users whose presence changes ``conn`` receives; returns those
        newly watched. Raises ``Unavailable`` (watch list unchanged) if Redis fails."""
        added = user_ids - conn.watching
        removed = conn.watching - user_ids
        for user_id in added:
            self._watchers.setdefault(user_id, set()).add(conn)
            conn.watch_pending[user_id] = None
        pending = {
            id(f): f
            for f in (self._subscriptions.ensure(keys.presence_channel(u)) for u in added)
            if f is not None
        }
        try:
            for flush in pending.values():
                await settled(flush)
        except Exception as exc:
            for user_id in self._unwatch(conn, added):
                self._subscriptions.changed(keys.presence_channel(user_id))
            for user_id in added:
                conn.watch_pending.pop(user_id, None)
            raise Unavailable("cannot subscribe to presence changes") from exc
        conn.watching = frozenset(user_ids)
        await self._release([keys.presence_channel(u) for u in self._unwatch(conn, removed)])
        return added

    async def _release(self, channels: list[str]) -> None:
        """Mark channels nobody here may need any more, and wait for the flush that drops
        them. Best effort (a flush never fails an unsubscribe), and cheap: many closes share
        one round."""
        flushes = {id(f): f for f in map(self._subscriptions.changed, channels)}
        for flush in flushes.values():
            with contextlib.suppress(Exception):
                await settled(flush)

    def _unwatch(self, conn: Connection, user_ids: Iterable[str]) -> list[str]:
        """Drop ``conn`` as a watcher of ``user_ids``; returns those nobody here watches now."""
        idle = []
        for user_id in user_ids:
            watchers = self._watchers.get(user_id)
            if watchers is None:
                continue
            watchers.discard(conn)
            if not watchers:
                del self._watchers[user_id]
                self._presence_at.pop(user_id, None)
                idle.append(user_id)
        return idle

    def deliver_presence(self, user_id: str, payload: bytes) -> int:
        """Route a presence payload ``p<at>\0<frame>`` to the user's watchers here."""
        at_bytes, frame = untag(payload)
        at = int(at_bytes)
        if at <= self._presence_at.get(user_id, -1):
            return 0  # an older transition, appended after a newer one
        watchers = self._watchers.get(user_id, ())
        if watchers:
            self._presence_at[user_id] = at
        for conn in watchers:
            if conn.is_pending_watch(user_id):
                held = conn.watch_pending[user_id]
                if held is None or held[0] < at:
                    conn.watch_pending[user_id] = (at, frame)
            else:
                conn.push(frame)
        return len(watchers)

    def watch_settled(self, conn: Connection, snapshot: list[tuple[str, int, bytes]]) -> None:
        """Send the newly watched users' current states ``(user_id, at, frame)``, then any
        change that arrived while they were read and is newer than what was read."""
        for user_id, at, frame in snapshot:
            conn.push(frame)
            held = conn.watch_pending.pop(user_id, None)
            if held is not None and held[0] > at:
                conn.push(held[1])
            if user_id in self._watchers:
                self._presence_at[user_id] = max(self._presence_at.get(user_id, -1), at)
        conn.watch_pending.clear()

    def deliver_to_user(self, user_id: str, payload: bytes) -> int:
        """Route a user-channel payload; returns how many sockets got the frame."""
        kind = payload[:1]
        if kind == MESSAGE:
            frame = payload[1:]
        elif kind == TYPING:
            cid, typist, frame = untyping(payload)
            return self._push_typing(self._by_user.get(user_id, ()), cid, typist, frame)
        elif kind == TO_DEVICE:
            device_bytes, frame = untag(payload)
            device = device_bytes.decode()
            mine = [c for c in self._by_user.get(user_id, ()) if c.device_id == device]
            for conn in mine:
                conn.push(frame)
            return len(mine)
        elif kind == TRACED:
            # (partial, not a lambda: a closure would make user_id a cell on every call)
            return self._traced(payload, functools.partial(self.deliver_to_user, user_id), user_id)
        else:
            cid_bytes, frame = untag(payload)
            cid = cid_bytes.decode()
            if user_id in self._loading:
                self._loading[user_id].append((kind, cid))
            self._change(user_id, kind, cid)
        conns = self._by_user.get(user_id, ())
        for conn in conns:
            conn.push(frame)
        return len(conns)

    def deliver_to_group(self, payload: bytes) -> int:
        """Route a group-shard payload to this process's sockets of the group's members."""
        kind = payload[:1]
        if kind != MESSAGE:  # a message costs the one test it cost before tracing existed
            if kind == TYPING:
                cid, typist, frame = untyping(payload)
                members = self._group_members.get(cid, ())
                conns = [c for uid in members for c in self._by_user.get(uid, ())]
                return self._push_typing(conns, cid, typist, frame)
            if kind == TRACED:
                return self._traced(payload, self.deliver_to_group, None)
        cid_bytes, frame = untag(payload)
        sent = 0
        for user_id in self._group_members.get(cid_bytes.decode(), ()):
            for conn in self._by_user.get(user_id, ()):
                conn.push(frame)
                sent += 1
        return sent

    def _traced(self, payload: bytes, route: Callable[[bytes], int], recipient: str | None) -> int:
        """Route the payload a traced one wraps, in a ``gateway.deliver`` span (child of the
        worker's ``deliver.push``) around the fan-out to this process's sockets and the writes."""
        traceparent, inner = untag(payload)
        attributes = (
            {"tidings.recipient": recipient} if recipient is not None else {"tidings.channel": "group"}
        )
        with self._spans.child_of(traceparent, "gateway.deliver", attributes) as span:
            sent = route(inner)
            if span is not None:
                span.set_attribute("tidings.sockets", sent)
        return sent

    @staticmethod
    def _push_typing(conns: Iterable[Connection], cid: str, typist: str, frame: bytes) -> int:
        sent = 0
        for conn in conns:
            if conn.view == cid and conn.user_id != typist:
                conn.push(frame)
                sent += 1
        return sent

    def _change(self, user_id: str, kind: bytes, cid: str) -> None:
        if kind == JOINED:
            self._join(user_id, cid)
        elif kind == LEFT:
            self._group_members.get(cid, set()).discard(user_id)
            self._user_groups.get(user_id, set()).discard(cid)

    def _join(self, user_id: str, cid: str) -> None:
        if user_id in self._by_user:
            self._group_members.setdefault(cid, set()).add(user_id)
            self._user_groups.setdefault(user_id, set()).add(cid)

    async def resubscribed(self, connection: object) -> None:
        """The pub/sub connection was lost (and may be back): whatever was published meanwhile
        is gone, so every socket here is told to reconnect and catch up. Also registered as
        redis-py's connect callback, since it reconnects and resubscribes by itself."""
        self._refresh_now.set()  # a Redis that came back empty lost the routes too
        conns = [c for cs in self._by_user.values() for c in cs]
        if conns:
            log.warning("pub/sub connection lost; sending %d sockets to reconnect and catch up", len(conns))
        for conn in conns:
            conn.send_to_catch_up("deliveries interrupted; reconnect and sync")

    async def listen(self) -> None:
        """Forward pub/sub messages to sockets until cancelled; survives Redis restarts.

        Each read blocks without a timeout: a read with one (redis-py's ``get_message(timeout=t)``)
        arms and cancels an ``asyncio.timeout`` per message, about a tenth of the gateway's CPU
        at 1,000 msgs/s (docs/benchmarks.md, issue #19 session 9). What the periodic timeout
        did besides, redis-py's health check (a PING on the connection after
        ``health_check_interval`` s without a reply, so that a dead connection shows as an
        error), ``_health`` does every ``HEALTH_CHECK_S``."""
        user_prefix = keys.user_channel("")
        presence_prefix = keys.presence_channel("")
        delay = 0.1
        health = asyncio.ensure_future(self._health())
        refresh = asyncio.ensure_future(self._refresh_routes())
        try:
            await self._forward(user_prefix, presence_prefix, delay)
        finally:
            health.cancel()
            refresh.cancel()

    async def _refresh_routes(self) -> None:
        """Push this gateway's route entries forward every third of their TTL (at once after
        a pub/sub reconnect: Redis may have come back without them). If they may have expired
        meanwhile (no refresh succeeded for the TTL less one period), pushes to users who also
        have sockets on another gateway may have gone there only: sockets here catch up."""
        store, routes = self._route_store, self._routes
        if store is None or routes is None:
            return
        period = store.ttl_s / 3
        last_ok = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._refresh_now.wait()
            self._refresh_now.clear()
            users = [u for u in self._by_user if routes.is_subscribed(u)]
            try:
                await store.add(users)
            except Exception as exc:  # noqa: BLE001 - retried next period; sockets catch up if late
                log.warning("could not push %d route entries forward (%r)", len(users), exc)
                if time.monotonic() - last_ok >= store.ttl_s - period:
                    await self.resubscribed(None)
                    self._refresh_now.clear()
                continue
            last_ok = time.monotonic()

    async def _health(self) -> None:
        check = getattr(self._subscriber, "check_health", None)
        if check is None:
            return  # the sharded subscriber's readers, and the fakes
        while True:
            await asyncio.sleep(HEALTH_CHECK_S)
            try:
                await check()
            except Exception as exc:  # noqa: BLE001 - the blocked read meets the same error and recovers
                log.debug("pub/sub health check failed (%r)", exc)

    async def _forward(self, user_prefix: str, presence_prefix: str, delay: float) -> None:
        gateway_channel = self._route_store.channel if self._route_store is not None else None
        while True:
            try:
                message = await self._subscriber.get_message(ignore_subscribe_messages=True, timeout=None)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: pushes pause, clients catch up from history
                log.warning("pub/sub listener error (%r); retrying in %.1fs", exc, delay)
                await self.resubscribed(None)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            # "smessage": a sharded channel's, on a Redis Cluster
            if message is None or message.get("type") not in ("message", "smessage"):
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if channel == gateway_channel:
                recipients, payload = unrouted(message["data"])
                sent = 0
                for user_id in recipients:
                    sent += self.deliver_to_user(user_id, payload)
            elif channel.startswith(user_prefix):
                sent = self.deliver_to_user(channel[len(user_prefix) :], message["data"])
            elif channel.startswith(presence_prefix):
                sent = self.deliver_presence(channel[len(presence_prefix) :], message["data"])
            else:
                sent = self.deliver_to_group(message["data"])
            _PUSHED.inc(sent)


def _retrieve(future: asyncio.Future[None]) -> None:
    """A load nobody waits for any more (its sockets went) logs no "never retrieved"."""
    if not future.cancelled():
        future.exception()
