"""Snowflake message ids: 41 bits of ms since ``EPOCH_MS``, 10 bits worker, 12 bits sequence.

Unique across processes as long as each live process holds a distinct worker id (the gateway
leases one in Redis); monotonic within a process. When the wall clock steps back, the generator
keeps counting on its last timestamp instead of reusing an old one, so ids never repeat or
decrease; ``ts`` then runs slightly ahead of the wall clock until the clock catches up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER = (1 << WORKER_BITS) - 1
_MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
# A clock that jumps back further than this is a misconfigured host, not NTP slew; refuse ids
# rather than run minutes ahead of real time.
MAX_BACKWARD_MS = 10_000


class SnowflakeClockError(RuntimeError):
    pass


def snowflake_ts(message_id: int) -> int:
    """The Unix-ms time part of an id."""
    return (message_id >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS


class Snowflake:
    def __init__(self, worker_id: int, clock: Callable[[], int] | None = None) -> None:
        if not 0 <= worker_id <= MAX_WORKER:
            raise ValueError(f"worker_id must be in 0..{MAX_WORKER}")
        self.worker_id = worker_id
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = -1
        self._sequence = 0
        self._lock = threading.Lock()

    def next_id(self) -> int:
        with self._lock:
            now = self._clock()
            if now < self._last_ms - MAX_BACKWARD_MS:
                raise SnowflakeClockError(f"clock moved back {self._last_ms - now} ms; refusing to issue ids")
            if now > self._last_ms:
                self._last_ms = now
                self._sequence = 0
            else:
                # Same millisecond, or the clock stepped back: keep counting on the last one.
                self._sequence += 1
                if self._sequence > _MAX_SEQUENCE:
                    self._last_ms += 1
                    self._sequence = 0
            return (
                ((self._last_ms - EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS))
                | (self.worker_id << SEQUENCE_BITS)
                | self._sequence
            )
