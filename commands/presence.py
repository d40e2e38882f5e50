"""Presence: what a user's connections say about them, and the transitions that become events.

Lazy, as the design asks: each connection has an expiry (its last heartbeat plus the TTL) in
the presence store; a user is ``online`` while one of their connections is live and not
``away``, ``away`` while all live ones asked for it, ``offline`` otherwise. Heartbeats only
push expiries forward; they are never events. The store decides transitions atomically and
returns them as ``PresenceChanged`` events, which the gateway appends to the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from events import PresenceChanged
from projections.views import PresenceView

ConnectionState = Literal["online", "away"]


@dataclass(frozen=True)
class Beat:
    """One connection's report: who, which connection, its state, and how long ago (ms) it was
    last heard from."""

    user_id: str
    conn_id: str
    state: ConnectionState
    idle_ms: int


class PresenceStore(Protocol):
    async def set(self, beats: Sequence[Beat]) -> list[PresenceChanged]:
        """Record each connection as live (expiry = last heard + TTL) in its state; returns the
        transitions this caused. Raises ``Unavailable``."""

    async def leave(self, user_id: str, conn_id: str) -> PresenceChanged | None:
        """The connection closed; the transition to ``offline`` if it was the user's last."""

    async def reap(self, limit: int) -> list[PresenceChanged]:
        """Users whose last connection expired without closing: their ``offline`` transitions."""

    async def read(self, user_ids: Sequence[str]) -> list[PresenceView]:
        """The users' presence as of now (expired connections count as gone)."""
