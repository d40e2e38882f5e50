"""Notification jobs, coalescing windows and payloads: pure code, no I/O.

A *job* is one message for one offline device (the notifier appends one per device to the
notifications topic, keyed by user). The sender groups one device's jobs into a *window*
opened by the first job it has not yet delivered and closed ``window_ms`` after that job's
message time; the window's notification has a stable id made of the user, the device and the
window's first message id. Jobs are read in log order per user, so reading them again after a
crash opens the same windows and makes the same ids (a receiver drops duplicates by id).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

PREVIEW_CHARS = 100
_IDS = uuid.UUID("6f1d7a52-5c1e-4b8e-9a55-2b8f0c0d7e11")  # namespace of notification ids

Priority = Literal["high", "normal"]


@dataclass(frozen=True)
class Job:
    """One message for one device that had no open socket when the notifier handled it."""

    user_id: str
    device_id: str
    conversation_id: str
    message_id: int
    sender_id: str
    preview: str | None
    direct: bool
    ts: int

    def encode(self) -> bytes:
        return orjson.dumps({"kind": "message", **self.__dict__, "message_id": str(self.message_id)})


@dataclass(frozen=True)
class Retry:
    """A notification whose delivery failed, appended again to be tried at ``not_before``."""

    payload: dict[str, Any]
    attempt: int  # attempts made so far
    first_ts: int  # ms of the first attempt
    not_before: int  # ms

    @property
    def user_id(self) -> str:
        return str(self.payload["user_id"])

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "kind": "retry",
                "payload": self.payload,
                "attempt": self.attempt,
                "first_ts": self.first_ts,
                "not_before": self.not_before,
            }
        )


def decode_record(raw: bytes) -> Job | Retry:
    """Raises ``ValueError`` (or ``KeyError``/``TypeError``) for bytes that are not a record."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a notification record must be a JSON object")
    if data.get("kind") == "retry":
        return Retry(data["payload"], int(data["attempt"]), int(data["first_ts"]), int(data["not_before"]))
    if data.get("kind") != "message":
        raise ValueError(f"unknown notification record kind {data.get('kind')!r}")
    return Job(
        user_id=str(data["user_id"]),
        device_id=str(data["device_id"]),
        conversation_id=str(data["conversation_id"]),
        message_id=int(data["message_id"]),
        sender_id=str(data["sender_id"]),
        preview=data["preview"],
        direct=bool(data["direct"]),
        ts=int(data["ts"]),
    )


def preview_of(kind: str, body: str, *, encrypted: bool = False) -> str | None:
    """The first 100 characters of a text message; nothing of media or encrypted messages."""
    if encrypted or kind != "text":
        return None
    return body[:PREVIEW_CHARS]


def notification_id(user_id: str, device_id: str, first_message_id: int) -> str:
    return uuid.uuid5(_IDS, f"{user_id}\x00{device_id}\x00{first_message_id}").hex


@dataclass
class Window:
    """One device's jobs within ``window_ms`` of the first one."""

    user_id: str
    device_id: str
    opened_ts: int
    due_ts: int
    jobs: list[Job] = field(default_factory=list)
    marks: list[Any] = field(default_factory=list)

    @property
    def notification_id(self) -> str:
        return notification_id(self.user_id, self.device_id, self.jobs[0].message_id)

    @property
    def priority(self) -> Priority:
        return "high" if any(j.direct for j in self.jobs) else "normal"

    def payload(self, badge: int) -> dict[str, Any]:
        """The notification as the protocol spells it (docs/protocol.md, push)."""
        by_conversation: dict[str, list[Job]] = {}
        for job in self.jobs:
            by_conversation.setdefault(job.conversation_id, []).append(job)
        conversations = []
        for cid, jobs in by_conversation.items():
            last = max(jobs, key=lambda j: j.message_id)
            conversations.append(
                {
                    "conversation_id": cid,
                    "count": len(jobs),
                    "last_message_id": str(last.message_id),
                    "sender_id": last.sender_id,
                    "preview": last.preview,
                }
            )
        return {
            "notification_id": self.notification_id,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "priority": self.priority,
            "badge": badge,
            "conversations": conversations,
        }


class Coalescer:
    """Open windows per device. ``add`` puts a job in its device's window (opening one at the
    job's message time when none is open); ``due`` takes out the windows whose time is up.
    ``mark`` (the sender passes the job's place in the log) travels with the window."""

    def __init__(self, window_ms: int, grace_ms: int = 300) -> None:
        self._window_ms = window_ms
        # Jobs of one window may reach the sender a little after the window's end (the
        # notifier's batch, the log): wait that long past it before sending.
        self._grace_ms = grace_ms
        self._open: dict[tuple[str, str], Window] = {}
        self._closed: list[Window] = []

    def add(self, job: Job, mark: Any = None) -> Window:
        key = (job.user_id, job.device_id)
        window = self._open.get(key)
        if window is not None and job.ts >= window.opened_ts + self._window_ms:
            # A later job of the device: by the log's own clock the open window is over.
            self._closed.append(self._open.pop(key))
            window = None
        if window is None:
            window = Window(job.user_id, job.device_id, job.ts, job.ts + self._window_ms + self._grace_ms)
            self._open[key] = window
        elif any(j.message_id == job.message_id for j in window.jobs):
            window.marks.append(mark)  # a notifier redelivery: the same message once
            return window
        window.jobs.append(job)
        window.marks.append(mark)
        return window

    def due(self, now_ms: int) -> list[Window]:
        ready, self._closed = self._closed, []
        for key in [k for k, w in self._open.items() if w.due_ts <= now_ms]:
            ready.append(self._open.pop(key))
        return ready

    def __len__(self) -> int:
        return len(self._open) + len(self._closed)

    def drop(self, keep: Callable[[Window], bool]) -> list[Window]:
        """Forget (and return) the windows ``keep`` refuses (a rebalance: the new owner of
        their partition reads their jobs again from the committed offset)."""
        dropped = [w for w in self._closed if not keep(w)]
        self._closed = [w for w in self._closed if keep(w)]
        for key in [k for k, w in self._open.items() if not keep(w)]:
            dropped.append(self._open.pop(key))
        return dropped
