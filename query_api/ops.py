"""Operational endpoints: liveness, readiness and Prometheus metrics (no auth)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sanic import Blueprint, HTTPResponse, Request
from sanic.response import raw

from query_api.context import deps_of
from query_api.errors import json_response
from query_api.openapi import documented
from query_api.schemas import Health, Readiness

bp = Blueprint("ops")


@bp.get("/healthz")
@documented("liveness", {200: Health}, errors=(), public=True, tag="ops")
async def healthz(request: Request) -> HTTPResponse:
    return json_response({"status": "ok"})


@bp.get("/readyz")
@documented(
    "readiness: Kafka, Cassandra and Redis reachable (503 when not, or draining)",
    {200: Readiness, 503: Readiness},
    errors=(),
    public=True,
    tag="ops",
)
async def readyz(request: Request) -> HTTPResponse:
    if request.app.ctx.draining:
        # At once, without asking the stores: on a loaded host their round trips can outlast a
        # load balancer's check timeout, and a stopping gateway must be seen leaving at the next
        # check (TIDINGS_DRAIN_UNREADY_S is sized by that).
        return json_response({"ready": False, "checks": {"gateway": "draining"}}, status=503)
    deps = deps_of(request)
    checks = await deps.readiness()
    ready = all(v == "ok" for v in checks.values())
    return json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


@bp.get("/metrics")
@documented(
    "Prometheus metrics", {200: ("text/plain", "Prometheus text format")}, errors=(), public=True, tag="ops"
)
async def metrics(request: Request) -> HTTPResponse:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        # Several gateway workers (tidings.gateway): sum every process's metric files.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return raw(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    return raw(generate_latest(), content_type=CONTENT_TYPE_LATEST)
