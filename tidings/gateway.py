"""``tidings gateway``: Sanic with N worker processes, each building its own dependencies from
the same settings (the composition root is ``tidings.gateway_root``)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import tempfile
from functools import partial

from sanic import Sanic
from sanic.worker.loader import AppLoader

from query_api.lean_ws import LeanWebSocketProtocol
from tidings.gateway_root import gateway_app
from tidings.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PR_SET_PDEATHSIG = 1


def _die_with_the_manager(app: Sanic) -> None:
    """A worker process ends when Sanic's manager dies, even by ``kill -9``: an orphaned worker
    would keep serving sockets nobody supervises."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _create(settings: Settings) -> Sanic:
    app = gateway_app(settings)
    if settings.gateway_workers > 1:
        app.before_server_start(_die_with_the_manager)
    return app


def run_gateway(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.gateway_workers > 1 and MULTIPROC_ENV not in os.environ:
        # Several worker processes: metrics go through files that /metrics sums (and the
        # connection gauge reports per process). Set before Sanic spawns the workers.
        with tempfile.TemporaryDirectory(prefix="tidings-metrics-") as folder:
            os.environ[MULTIPROC_ENV] = folder
            try:
                _serve(settings)
            finally:
                del os.environ[MULTIPROC_ENV]
        return
    _serve(settings)


def _serve(settings: Settings) -> None:
    loader = AppLoader(factory=partial(_create, settings))
    app = loader.load()
    app.prepare(
        host=settings.http_host,
        port=settings.http_port,
        workers=settings.gateway_workers,
        single_process=settings.gateway_workers == 1,
        access_log=False,
        # Sanic's default listen backlog (100) drops connection attempts during reconnect storms.
        backlog=4096,
        motd=False,
        # WebSockets without a task, future or lock per frame (query_api.lean_ws).
        protocol=LeanWebSocketProtocol,
    )
    if settings.gateway_workers == 1:
        # One process, no manager: what `tidings gateway` runs is what serves (and what a
        # signal reaches).
        Sanic.serve_single(primary=app)
    else:
        Sanic.serve(primary=app, app_loader=loader)
