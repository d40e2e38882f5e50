"""A gateway that stops (SIGTERM, a deploy) hands its sockets over instead of dropping them.

Each socket gets a ``reconnect`` frame whose ``after_ms`` is drawn at random up to the spread,
so its clients come back to the other gateways over a few seconds rather than all at once; then
it is closed with 1012 (service restart). Clients reconnect after ``after_ms`` to any gateway
and sync from their cursor, which gives them whatever arrived meanwhile. ``/readyz`` already
answers 503, so a load balancer sends no new socket here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

from projections.wire import reconnect_frame
from query_api.connection import Connection
from query_api.metrics import FRAMES_OUT

CLOSE_SERVICE_RESTART = 1012
# How long the reconnect frames get to leave before the sockets are closed behind them.
FLUSH_S = 1.0


async def drain(conns: Sequence[Connection], *, spread_s: float, rng: random.Random | None = None) -> None:
    """Tell every socket in ``conns`` to reconnect elsewhere, then close it with 1012."""
    draw = (rng or random.Random()).randint
    spread_ms = max(0, int(spread_s * 1000))
    for conn in conns:
        conn.push(reconnect_frame(draw(0, spread_ms)))
    FRAMES_OUT.labels("reconnect").inc(len(conns))
    deadline = time.monotonic() + FLUSH_S
    # Backlogs empty from transport callbacks, which signal nothing to wait on.
    while any(c.backlog for c in conns) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    for conn in conns:
        conn.close_soon(CLOSE_SERVICE_RESTART, "server restarting; reconnect")
