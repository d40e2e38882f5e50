import pytest

from commands.memory import MemoryIdempotencyStore, MemoryKeyStore
from projections.memory import MemoryMessages, MemoryRecent
from tests.contracts import IdempotencyContract, KeyStoreContract, MessageStoreContract, RecentContract


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
