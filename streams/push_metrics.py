"""Push notification metrics (served with the worker's others)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PUSH_SENT = Counter("tidings_push_sent_total", "Notifications delivered, per provider", ["provider"])
PUSH_FAILED = Counter(
    "tidings_push_failed_total",
    "Delivery attempts that failed, per provider and outcome (retry, gone, failed)",
    ["provider", "outcome"],
)
PUSH_RETRIED = Counter("tidings_push_retried_total", "Notifications appended again for a retry", ["provider"])
PUSH_DEAD = Counter(
    "tidings_push_dead_letters_total", "Notifications dead-lettered (budget spent or refused)", ["provider"]
)
PUSH_UNREGISTERED = Counter(
    "tidings_push_unregistered_total", "Registrations ended by a 404/410", ["provider"]
)
# coalescing ratio = messages / notifications
PUSH_MESSAGES = Counter("tidings_push_messages_total", "Message jobs taken into notifications")
PUSH_NOTIFICATIONS = Counter("tidings_push_notifications_total", "Notifications built from coalesced jobs")
PUSH_JOBS = Counter("tidings_push_jobs_total", "Notification jobs the notifier appended")
PUSH_DELAY = Histogram(
    "tidings_push_delay_seconds",
    "From the newest message of a notification to its delivery",
    buckets=(0.1, 0.25, 0.5, 1, 2, 2.5, 3, 4, 5, 10, 30, 60, 300),
)
