"""What the gateway takes from above: its narrow configuration and a tracer port. The shell
(``tidings.gateway_root``) fills both from ``tidings.settings.Settings``; nothing here knows
where they come from."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from commands.push import AllowedHosts


def _no_key() -> bytes:
    raise RuntimeError("no VAPID key configured")


@dataclass(frozen=True)
class GatewayConfig:
    """The settings the gateway's handlers and app factory read."""

    max_frame_bytes: int = 64 * 1024
    max_group_members: int = 200_000
    allowed_origins: tuple[str, ...] = ()
    drain_spread_s: float = 3.0
    drain_unready_s: float = 0.0
    dev_login: bool = False
    # The object store's public endpoint: the web client's CSP lets it fetch presigned media there.
    media_endpoint: str | None = None
    push_hosts: AllowedHosts = field(default_factory=lambda: AllowedHosts(webhook=[], webpush=[]))
    # Called on the first GET /v1/push/webpush-key: may create a development key on disk.
    vapid_private_pem: Callable[[], bytes] = _no_key


class Spans(Protocol):
    """Spans around a block of the gateway's work (``tidings.telemetry.span``)."""

    def span(self, name: str, attributes: dict[str, Any] | None = None) -> AbstractContextManager[Any]: ...

    def child_of(
        self, traceparent: bytes, name: str, attributes: dict[str, Any] | None = None
    ) -> AbstractContextManager[Any]:
        """A span under a remote parent (``tidings.telemetry.child_of``): a delivery that
        came with its trace context; enters as the span, or None when tracing is off."""
        ...


class NoSpans:
    """Tracing off: one shared no-op context manager."""

    _NOOP: AbstractContextManager[None] = contextlib.nullcontext()

    def span(self, name: str, attributes: dict[str, Any] | None = None) -> AbstractContextManager[Any]:
        return self._NOOP

    def child_of(
        self, traceparent: bytes, name: str, attributes: dict[str, Any] | None = None
    ) -> AbstractContextManager[Any]:
        return self._NOOP
