import pytest

from events.ids import EPOCH_MS, MAX_BACKWARD_MS, Snowflake, SnowflakeClockError, snowflake_ts


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_ids_are_unique_and_increasing_within_a_millisecond() -> None:
    gen = Snowflake(7, clock=Clock(EPOCH_MS + 1000))
    ids = [gen.next_id() for _ in range(5000)]  # more than 4096: spills into the next ms
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_layout_carries_time_and_worker() -> None:
    clock = Clock(1_764_283_200_123)
    mid = Snowflake(513, clock=clock).next_id()
    assert snowflake_ts(mid) == 1_764_283_200_123
    assert (mid >> 12) & 0x3FF == 513
    assert mid < 2**63


def test_two_workers_never_collide_at_the_same_instant() -> None:
    clock = Clock(EPOCH_MS + 5)
    a, b = Snowflake(1, clock=clock), Snowflake(2, clock=clock)
    ids_a = {a.next_id() for _ in range(100)}
    ids_b = {b.next_id() for _ in range(100)}
    assert not ids_a & ids_b


def test_clock_stepping_back_keeps_ids_increasing() -> None:
    clock = Clock(EPOCH_MS + 10_000)
    gen = Snowflake(3, clock=clock)
    first = gen.next_id()
    clock.now -= 2_000
    after = [gen.next_id() for _ in range(10)]
    assert all(x > first for x in after)
    assert after == sorted(after)
    assert snowflake_ts(after[-1]) == EPOCH_MS + 10_000  # kept its last timestamp
    clock.now += 5_000
    assert snowflake_ts(gen.next_id()) == EPOCH_MS + 13_000


def test_a_clock_far_in_the_past_is_refused() -> None:
    clock = Clock(EPOCH_MS + 100_000)
    gen = Snowflake(0, clock=clock)
    gen.next_id()
    clock.now -= MAX_BACKWARD_MS + 1
    with pytest.raises(SnowflakeClockError):
        gen.next_id()


@pytest.mark.parametrize("worker", [-1, 1024])
def test_worker_id_range(worker: int) -> None:
    with pytest.raises(ValueError, match="worker_id"):
        Snowflake(worker)
