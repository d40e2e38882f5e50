"""The one metric both the gateway and the deliver worker count into: failed deliveries. Both
processes export it under one name (``sum by (reason)`` on a dashboard covers both sides), so
it is defined once, here, where both may import it."""

from __future__ import annotations

from prometheus_client import Counter

DELIVERY_FAILURES = Counter(
    "tidings_delivery_failures_total",
    "Pushes that did not reach a socket: publish (pub/sub publish failed: worker batches, retried; "
    "gateway typing pushes), socket_closed (the frame could not be written), slow_client (send "
    "queue full, socket closed)",
    ["reason"],
)
