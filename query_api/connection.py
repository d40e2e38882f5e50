"""One WebSocket connection as the hub and the frame handlers see it.

A frame for the socket is written to its transport at once while the transport keeps up;
only when the transport's buffer is above its high-water mark do frames wait, in a bounded
backlog that ``flush`` empties when the transport asks for more. A backlog that reaches its
bound means the client does not read: the socket is closed with 1013 and the client catches up
with ``/v1/sync`` after reconnecting. Nothing here waits, so the pub/sub listener never stalls
on a slow client, and an idle socket has no task, queue or lock of its own.

Objects here exist once per socket (100,000 per gateway is the target): ``__slots__``, and
whatever only some sockets use (a backlog, membership checks, the typing allowance, held
presence changes) is made on first use.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Protocol

from commands.presence import ConnectionState
from projections.wire import message_frame_ts
from query_api.metrics import DELIVERY_FAILURES, DELIVERY_SECONDS, SLOW_CLIENT_DISCONNECTS

CLOSE_TRY_AGAIN = 1013  # "try again later": reconnect, then catch up
TYPING_PER_S, TYPING_BURST = 2.0, 5


class Socket(Protocol):
    """What a connection needs of its WebSocket (``query_api.lean_ws.LeanWebsocket``; a fake
    in unit tests)."""

    heard: float

    @property
    def writable(self) -> bool:
        """Open, and the transport is not backed up."""
        ...

    def write_text(self, payload: bytes) -> bool:
        """Send one text frame now; False when the socket is no longer open."""
        ...

    def close_now(self, code: int, reason: str) -> None:
        """Start the closing handshake without waiting."""
        ...


class TokenBucket:
    """Per-socket allowance: ``burst`` at once, refilled at ``rate_per_s``."""

    __slots__ = ("_at", "_burst", "_clock", "_rate", "_tokens")

    def __init__(self, *, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class Connection:
    __slots__ = (
        "__weakref__",
        "_backlog",
        "_member_of",
        "_typing",
        "_watch_pending",
        "active",
        "auto_away",
        "close_reason",
        "device_id",
        "presence_id",
        "presence_state",
        "queue_size",
        "reported",
        "socket",
        "too_slow",
        "user_id",
        "view",
        "watching",
    )

    def __init__(self, user_id: str, device_id: str, socket: Socket, queue_size: int) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.socket = socket
        self.queue_size = queue_size
        self.too_slow = False
        # Why the server ended this socket with 1013 (reconnect and catch up), once it did.
        self.close_reason: str | None = None
        # The conversation this socket shows (the `view` frame): typing goes only there.
        self.view: str | None = None
        # Presence (see query_api.presence): this socket's id in the presence store, when it
        # was last reported (monotonic s), its state, whom it watches.
        self.presence_id = ""
        self.reported = 0.0
        self.presence_state: ConnectionState = "online"
        # When the client last sent a frame other than a ping (monotonic s), and whether the
        # sweep made this socket away for that silence (its next such frame makes it online).
        self.active = 0.0
        self.auto_away = False
        self.watching: frozenset[str] = frozenset()
        self._backlog: collections.deque[bytes] | None = None
        self._member_of: dict[str, float] | None = None
        self._typing: TokenBucket | None = None
        self._watch_pending: dict[str, tuple[int, bytes] | None] | None = None

    @property
    def heard(self) -> float:
        """When a frame was last heard from the client (monotonic s): any frame is a heartbeat."""
        return self.socket.heard

    @heard.setter
    def heard(self, at: float) -> None:
        self.socket.heard = at

    @property
    def member_of(self) -> dict[str, float]:
        """conversation id -> until when this socket's membership there counts as checked."""
        if self._member_of is None:
            self._member_of = {}
        return self._member_of

    @property
    def typing_allowance(self) -> TokenBucket:
        if self._typing is None:
            self._typing = TokenBucket(rate_per_s=TYPING_PER_S, burst=TYPING_BURST)
        return self._typing

    @property
    def watch_pending(self) -> dict[str, tuple[int, bytes] | None]:
        """Newly watched users whose current state is being read: changes that arrive
        meanwhile wait here (newest only), so a stale one never follows the snapshot."""
        if self._watch_pending is None:
            self._watch_pending = {}
        return self._watch_pending

    def is_pending_watch(self, user_id: str) -> bool:
        return self._watch_pending is not None and user_id in self._watch_pending

    @property
    def backlog(self) -> int:
        """Frames waiting for the transport."""
        return 0 if self._backlog is None else len(self._backlog)

    def close_soon(self, code: int, reason: str) -> None:
        """Close the socket without waiting (its handler then unregisters it)."""
        self.socket.close_now(code, reason)

    def push(self, frame: bytes) -> None:
        """Send a frame (JSON text) without waiting; a client too far behind is disconnected."""
        if self.too_slow:
            return
        backlog = self._backlog
        if backlog is None:
            if self.socket.writable:
                self._write(frame)
                return
            backlog = self._backlog = collections.deque()
        if len(backlog) >= self.queue_size:
            SLOW_CLIENT_DISCONNECTS.inc()
            DELIVERY_FAILURES.labels("slow_client").inc()
            self.send_to_catch_up("send queue full; reconnect and sync")
            return
        backlog.append(frame)

    def flush(self) -> None:
        """The transport takes more: send what waited, in order, while it keeps taking."""
        backlog = self._backlog
        while backlog and self.socket.writable:
            self._write(backlog.popleft())
        if not backlog:
            self._backlog = None

    def send_to_catch_up(self, reason: str) -> None:
        """Drop what waits and close with 1013: the client reconnects and reads what it
        missed from the read models."""
        if self.too_slow:
            return
        self.too_slow = True
        self.close_reason = reason
        self._backlog = None
        self.socket.close_now(CLOSE_TRY_AGAIN, reason)

    def _write(self, frame: bytes) -> None:
        if not self.socket.write_text(frame):
            _DELIVERY_SOCKET_CLOSED.inc()
            return  # the socket is closing; its handler unregisters it
        ts = message_frame_ts(frame)
        if ts is not None:
            # Send->deliver, against the Snowflake time of the send (whole ms, floored).
            _observe_delivery(time.time() - ts / 1000)


_DELIVERY_SOCKET_CLOSED = DELIVERY_FAILURES.labels("socket_closed")
_observe_delivery = DELIVERY_SECONDS.observe
