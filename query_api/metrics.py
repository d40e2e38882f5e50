"""The gateway's Prometheus metrics, defined once."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WS_CONNECTIONS = Gauge("tidings_ws_connections", "Open WebSocket connections in this process")
FRAMES_IN = Counter("tidings_ws_frames_in_total", "Client frames received", ["type"])
FRAMES_OUT = Counter("tidings_ws_frames_out_total", "Frames queued to clients", ["type"])
SENDS = Counter("tidings_sends_total", "Send commands by outcome", ["outcome"])
SEND_SECONDS = Histogram(
    "tidings_send_ack_seconds",
    "Send command to durable append (what the sender waits for before its ack)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SLOW_CLIENT_DISCONNECTS = Counter(
    "tidings_ws_slow_client_disconnects_total", "Sockets closed because their send queue was full"
)
PRESENCE_TRANSITIONS = Counter(
    "tidings_presence_transitions_total", "Presence transitions appended to the log", ["state"]
)
PRESENCE_EVENTS_DROPPED = Counter(
    "tidings_presence_events_dropped_total",
    "Presence transitions the log did not take after retries (the store still has the state)",
)
HEARTBEAT_CLOSES = Counter("tidings_heartbeat_closes_total", "Sockets closed for heartbeat silence")
