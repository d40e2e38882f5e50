"""Each background role's worker fetches over its own batch window (``Settings``: persist,
notify, search), and the delivery role's fetch answers at the first record: the Faust apps
``tidings worker`` builds for each role, against the real services (persist and notify
prepare their statements in Cassandra when built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from projections.adapters import cql
from streams.adapters.faust_fetch import App
from tidings import notify_worker, worker
from tidings.settings import Settings
from tidings.worker import build_worker_app


@pytest.mark.parametrize(
    ("role", "fetch_wait_ms"), [("deliver", 0), ("persist", 110), ("notify", 270), ("search", 330)]
)
def test_each_role_fetches_over_its_own_window(
    services: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str, fetch_wait_ms: int
) -> None:
    # The apps are built, never run: the Cassandra clusters they connect are shut down here
    # (a worker's go with its process).
    clusters: list[Any] = []

    def connect_to(config: Any) -> Any:
        cluster, session = cql.connect_to(config)
        clusters.append(cluster)
        return cluster, session

    monkeypatch.setattr(worker, "connect_to", connect_to)
    monkeypatch.setattr(notify_worker, "connect_to", connect_to)
    settings = services.model_copy(
        update={
            "worker_role": role,
            "worker_persist_batch_window_s": 0.11,
            "worker_notify_batch_window_s": 0.27,
            "worker_search_batch_window_s": 0.33,
            "search_dir": tmp_path,
        }
    )
    try:
        app = build_worker_app(settings)
        assert isinstance(app, App)
        assert app.fetch_wait_ms == fetch_wait_ms
    finally:
        for cluster in clusters:
            cluster.shutdown()
    assert len(clusters) == (0 if role == "search" else 1)
