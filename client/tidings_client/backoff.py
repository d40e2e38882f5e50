"""Reconnect delays: exponential backoff with full jitter (1 s doubling up to 30 s by default)."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delay ``n`` (from 0) is uniform in ``[0, min(cap, base * 2**n)]`` ("full jitter", so that
    clients dropped together do not come back together); ``reset()`` after a good connection."""

    def __init__(
        self, base_s: float = 1.0, cap_s: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("need 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng
        self.attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return float(min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 62)))

    def next_delay(self) -> float:
        """The next delay in seconds; each call doubles the ceiling, up to ``cap_s``."""
        delay = float(self._rng()) * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Back to the first delay (after a connection that opened and resumed)."""
        self.attempt = 0
