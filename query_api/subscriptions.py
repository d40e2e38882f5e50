"""The pub/sub channels this gateway process listens to, changed in batches.

Every socket that connects or closes may change what the process must hear (its user's
channel, the presence channels it watches). One SUBSCRIBE per socket, one at a time, capped the
connect rate near 400 sockets/s: each waited a round trip behind the others. Here a change only
marks the channel; one flusher task sends a single SUBSCRIBE and a single UNSUBSCRIBE for every
channel marked since its last round, deciding each from the hub's state *at flush time*
(``wanted``), so a user who leaves and comes back before the flush costs nothing, and the last
word always wins whatever the order of concurrent registrations.

Whoever needs a channel to be subscribed awaits the future of the flush that carries it; when
that SUBSCRIBE fails, every waiter of the batch gets the error (and may refuse its socket), and
the channels stay unsubscribed until someone asks again. Unsubscribing is best effort: if Redis
is gone, the subscriptions went with its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Subscribing(Protocol):
    """What ``Subscriptions`` batches: channels (redis-py's ``PubSub``), or the users of the
    gateway's route sets (``projections.adapters.redis_pubsub.GatewayRoutes``)."""

    def subscribe(self, *args: Any) -> Awaitable[Any]: ...
    def unsubscribe(self, *args: Any) -> Awaitable[Any]: ...


class Subscriber(Subscribing, Protocol):
    """The slice of redis-py's ``PubSub`` the hub uses (a fake implements it in tests)."""

    async def get_message(
        self,
        ignore_subscribe_messages: bool = ...,
        timeout: float | None = ...,  # noqa: ASYNC109 - redis-py's signature
    ) -> dict[str, Any] | None: ...


class Subscriptions:
    def __init__(self, subscriber: Subscribing, wanted: Callable[[str], bool]) -> None:
        self._subscriber = subscriber
        self._wanted = wanted
        # What Redis was told (a SUBSCRIBE that succeeded, not yet unsubscribed).
        self._subscribed: set[str] = set()
        # Marked since the flusher took its last batch, and the future of the next batch.
        self._dirty: set[str] = set()
        self._next: asyncio.Future[None] | None = None
        # Channels being subscribed by the batch in flight, and that batch's future.
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.rounds = 0  # flushes that sent at least one command (tests and metrics)

    def changed(self, channel: str) -> asyncio.Future[None]:
        """``channel`` may have to be subscribed or unsubscribed: the next flush decides.
        Returns that flush's future (its error is the SUBSCRIBE's)."""
        self._dirty.add(channel)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            # Retrieved here so that a batch nobody waits for (only unsubscribes, or waiters
            # that went away) does not log "exception never retrieved"; waiters still get it.
            self._next.add_done_callback(_retrieve)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="pubsub-subscriptions")
        return self._next

    def ensure(self, channel: str) -> asyncio.Future[None] | None:
        """A future to await before ``channel`` is surely subscribed, or None when it is."""
        inflight = self._inflight.get(channel)
        if inflight is not None:
            return inflight
        if channel in self._subscribed:
            return None  # a pending unsubscribe will find it wanted and leave it
        return self.changed(channel)

    def is_subscribed(self, channel: str) -> bool:
        return channel in self._subscribed

    async def _flush(self) -> None:
        try:
            while self._dirty:
                dirty, self._dirty = self._dirty, set()
                done, self._next = self._next, None
                assert done is not None
                try:
                    error = await self._round(dirty, done)
                except BaseException:  # cancelled: whoever waits must not wait forever
                    _settle(done, ConnectionError("pub/sub subscriptions stopped"))
                    raise
                _settle(done, error)
        finally:
            self._flusher = None
            if self._dirty:
                self._dirty.clear()
                pending, self._next = self._next, None
                if pending is not None:
                    _settle(pending, ConnectionError("pub/sub subscriptions stopped"))

    async def _round(self, dirty: set[str], done: asyncio.Future[None]) -> BaseException | None:
        """One SUBSCRIBE and one UNSUBSCRIBE for the marked channels; the SUBSCRIBE's error."""
        subscribe = [c for c in dirty if c not in self._subscribed and self._wanted(c)]
        unsubscribe = [c for c in dirty if c in self._subscribed and not self._wanted(c)]
        error: BaseException | None = None
        if subscribe:
            self._inflight = dict.fromkeys(subscribe, done)
            try:
                await self._subscriber.subscribe(*subscribe)
            except Exception as exc:  # noqa: BLE001 - handed to every waiter of the batch
                error = exc
            else:
                self._subscribed.update(subscribe)
            finally:
                self._inflight = {}
        if unsubscribe:
            self._subscribed.difference_update(unsubscribe)
            # Best effort: if Redis is gone, the subscriptions went with the connection.
            with contextlib.suppress(Exception):
                await self._subscriber.unsubscribe(*unsubscribe)
        if subscribe or unsubscribe:
            self.rounds += 1
        return error


async def settled(future: asyncio.Future[None]) -> None:
    """Wait for a flush without cancelling it for the other waiters if this one is cancelled."""
    await asyncio.shield(future)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
