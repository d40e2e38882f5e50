from collections.abc import Callable

import pytest

from commands.memory import MemoryDirectory, MemoryIdempotencyStore, MemoryKeyStore, MemoryLocks
from commands.rate_limits import MemoryRateLimiter
from projections.memory import MemoryMessages, MemoryRecent
from tests.contracts import (
    DirectoryContract,
    IdempotencyContract,
    KeyStoreContract,
    LocksContract,
    MessageStoreContract,
    RateLimiterContract,
    RecentContract,
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
