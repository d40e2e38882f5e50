"""Composition root of ``tidings gateway``: Sanic with N worker processes, each building its
own dependencies from the same settings."""

from __future__ import annotations

import logging
from functools import partial

from sanic import Sanic
from sanic.worker.loader import AppLoader

from query_api.app import create_app
from tidings.settings import Settings


def run_gateway(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loader = AppLoader(factory=partial(create_app, settings))
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
    )
    Sanic.serve(primary=app, app_loader=loader)
