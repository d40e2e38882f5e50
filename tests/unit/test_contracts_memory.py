import time
from collections.abc import Callable

import pytest

from commands.memory import (
    MemoryDirectory,
    MemoryIdempotencyStore,
    MemoryKeyStore,
    MemoryLocks,
    MemoryPresence,
)
from commands.rate_limits import MemoryRateLimiter
from projections.memory import MemoryMessages, MemoryReceipts, MemoryRecent, MemorySyncLog
from tests.contracts import (
    PRESENCE_TTL_MS,
    DirectoryContract,
    IdempotencyContract,
    KeyStoreContract,
    LocksContract,
    MessageStoreContract,
    PresenceStoreContract,
    RateLimiterContract,
    ReceiptStoreContract,
    RecentContract,
    SyncLogContract,
)


class TestMemoryMessages(MessageStoreContract):
    @pytest.fixture
    def store(self) -> MemoryMessages:
        return MemoryMessages()


class TestMemoryRecent(RecentContract):
    @pytest.fixture
    def recent(self) -> MemoryRecent:
        return MemoryRecent(size=5)


class TestMemoryIdempotency(IdempotencyContract):
    @pytest.fixture
    def idem(self) -> MemoryIdempotencyStore:
        return MemoryIdempotencyStore()


class TestMemoryKeys(KeyStoreContract):
    @pytest.fixture
    def keys(self) -> MemoryKeyStore:
        return MemoryKeyStore()


class TestMemoryDirectory(DirectoryContract):
    @pytest.fixture
    def directory(self) -> MemoryDirectory:
        return MemoryDirectory()


class TestMemoryLocks(LocksContract):
    @pytest.fixture
    def locks(self) -> MemoryLocks:
        return MemoryLocks()


class TestMemoryRateLimiter(RateLimiterContract):
    @pytest.fixture
    def limiter(self) -> Callable[[dict[str, tuple[float, int]]], MemoryRateLimiter]:
        return MemoryRateLimiter


class TestMemoryReceipts(ReceiptStoreContract):
    @pytest.fixture
    def receipts(self) -> MemoryReceipts:
        return MemoryReceipts()


class FakeClock:
    """Seconds, like ``time.time``; moved only by ``advance``."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def now_ms(self) -> float:
        return self.now * 1000

    async def advance(self, seconds: float) -> None:
        self.now += seconds


class TestMemoryPresence(PresenceStoreContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def presence(self, clock: FakeClock) -> MemoryPresence:
        return MemoryPresence(ttl_ms=PRESENCE_TTL_MS, clock=clock)


class TestMemorySyncLog(SyncLogContract):
    @pytest.fixture
    def sync_log(self) -> MemorySyncLog:
        return MemorySyncLog()
