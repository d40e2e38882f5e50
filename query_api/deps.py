"""What the gateway needs: its ports and services, built once per worker process by the
shell's composition root (``tidings.gateway_root``), and a readiness check over them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from commands.media import MediaService
from commands.ports import Directory
from commands.rate_limits import NoLimits, RateLimiter
from commands.receipts import Watermarks
from events import Role
from projections.adapters.device_lists import RedisDeviceLists
from projections.delivery import Push
from projections.history import ColdTier, HotTier, WarmTier
from projections.inbox import InboxSource, UnreadCounter
from projections.search_query import Hit, Parsed
from projections.sync import SyncContext
from query_api.config import GatewayConfig, NoSpans, Spans
from query_api.hub import Hub
from query_api.presence import Contacts, PresenceTracker
from query_api.services import Conversations, Keys, Messaging, PresenceReads, PushSettings, ToDeviceRelay

log = logging.getLogger(__name__)


class MemberList(Protocol):
    async def members_page(
        self, conversation_id: str, *, after: str, limit: int
    ) -> list[tuple[str, Role]]: ...


class ReceiptView(Watermarks, Protocol):
    async def page(self, conversation_id: str, *, after: str, limit: int) -> list[Any]:
        """Rows with ``user_id``, ``delivered`` and ``read``, by user id after ``after``."""


class SearchShards(Protocol):
    def search(
        self, parsed: Parsed, conversation_ids: Iterable[str], *, before: int | None, limit: int
    ) -> list[Hit]:
        """The newest ``limit`` hits older than ``before`` in ``conversation_ids`` (blocking)."""


@dataclass
class Dependencies:
    """The gateway's ports and services; handlers reach them through ``context.deps_of``."""

    config: GatewayConfig
    secret: str
    messaging: Messaging
    conversations: Conversations
    presence_reads: PresenceReads
    hot: HotTier
    warm: WarmTier
    directory: Directory
    inbox: InboxSource
    members: MemberList
    unread: UnreadCounter
    receipts: ReceiptView
    hub: Hub
    presence: PresenceTracker
    contacts: Contacts
    sync: SyncContext
    # Publishes pushes straight from the gateway (typing: never stored, never in the log).
    publish: Callable[[list[Push]], Awaitable[None]]
    # name -> coroutine that raises when that backing service is not reachable
    probes: dict[str, Callable[[], Awaitable[Any]]] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    cold: ColdTier | None = None  # the Parquet archive, when there is one
    limiter: RateLimiter = field(default_factory=NoLimits)
    media: MediaService | None = None  # uploads and downloads (the object store)
    # push registrations and mutes (write-through); None: the push routes answer 404
    push: PushSettings | None = None
    search: SearchShards | None = None  # the full-text index shards (GET /v1/search)
    keys: Keys | None = None  # the key directory of end-to-end encryption
    to_device: ToDeviceRelay | None = None  # to-device messages relayed and waiting for their devices
    tracer: Spans = field(default_factory=NoSpans)
    # whose device lists changed, per user (E2EE; projections/adapters/device_lists.py)
    device_lists: RedisDeviceLists | None = None

    async def readiness(self) -> dict[str, str]:
        async def check(probe: Callable[[], Awaitable[Any]]) -> str:
            try:
                await asyncio.wait_for(probe(), timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a health check
                return f"down: {type(exc).__name__}"
            return "ok"

        names = list(self.probes)
        results = await asyncio.gather(*(check(self.probes[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        await close_all(self.closers)


# A client of a backing service that does not answer must not keep a stopping process alive for
# ever: an aiokafka producer stopping waits for its unconfirmed batches without end, and a
# gateway worker was seen hanging so after a Kafka timeout storm.
CLOSE_TIMEOUT_S = 10.0


async def close_all(
    closers: Sequence[Callable[[], Awaitable[Any]]], timeout_s: float = CLOSE_TIMEOUT_S
) -> None:
    """Run ``closers``, the last first, each for at most ``timeout_s``; one that fails or does
    not finish is logged, and the next one still runs. By the time they run no request or
    socket is left to answer, so what a producer had not confirmed was acknowledged to nobody."""
    for closer in reversed(closers):
        try:
            await asyncio.wait_for(closer(), timeout_s)
        except TimeoutError:
            log.error("%r did not finish closing within %.0f s; left to the process exit", closer, timeout_s)
        except Exception:
            log.exception("error while closing")
