"""The Sanic gateway: ``/v1/ws``, the HTTP API, auth, and ``/healthz``, ``/readyz``, ``/metrics``."""
