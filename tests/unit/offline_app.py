"""A worker's Faust app as ``streams.app.create_app`` builds it, with a broker address nothing
listens on: for unit tests that look at the consumer Faust builds, never at Kafka."""

from __future__ import annotations

from pathlib import Path

from events import Topics
from streams.adapters.faust_fetch import App
from streams.app import create_app


def offline_app(app_id: str, *, fetch_wait_ms: int = 0, datadir: Path | None = None) -> App:
    return create_app(
        app_id=app_id,
        bootstrap="127.0.0.1:1",  # never connected
        topics=Topics("t."),
        partitions=1,
        stages=[],
        batch_size=10,
        batch_window_s=0.05,
        session_timeout_s=10.0,
        fetch_wait_ms=fetch_wait_ms,
        datadir=datadir,
    )
