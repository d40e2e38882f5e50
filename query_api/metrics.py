"""The gateway's Prometheus metrics, defined once.

With several Sanic workers the gateway runs prometheus_client in multiprocess mode
(``tidings.gateway`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start): counters and
histograms are summed over the worker processes, and the connection gauge keeps one series per
live process (label ``pid``), which is what "connections per process" means.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from projections.delivery_metrics import DELIVERY_FAILURES

__all__ = ["DELIVERY_FAILURES"]

# Send->deliver: fine steps from 1 ms to 2 s, so P50/P95/P99 are readable with
# histogram_quantile() around the targets (P50 <= 20 ms, P99 <= 200 ms, fan-out P99 <= 1 s).
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip

WS_CONNECTIONS = Gauge(
    "tidings_ws_connections",
    "Open WebSocket connections in this process",
    multiprocess_mode="liveall",
)
FRAMES_IN = Counter("tidings_ws_frames_in_total", "Client frames received", ["type"])
FRAMES_OUT = Counter(
    "tidings_ws_frames_out_total",
    "Frames queued to clients: replies by type, and `push` for frames routed from pub/sub",
    ["type"],
)
SENDS = Counter("tidings_sends_total", "Send commands by outcome (ok = acked)", ["outcome"])
SEND_SECONDS = Histogram(
    "tidings_send_ack_seconds",
    "Send command to durable append (what the sender waits for before its ack)",
    buckets=LATENCY_BUCKETS,
)
DELIVERY_SECONDS = Histogram(
    "tidings_delivery_seconds",
    "Send->deliver: from the message's Snowflake time (taken when the gateway accepted the send) "
    "to its `message` frame being handed to a recipient's socket; one observation per socket",
    buckets=LATENCY_BUCKETS,
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
