"""Errors with their protocol code and HTTP status, shared by every layer.

Domain code raises these; adapters translate driver exceptions into ``Unavailable`` (raised
``from`` the original); ``query_api`` renders them in one place, as JSON over HTTP and as
``error`` frames over WebSocket.
"""

from __future__ import annotations


class TidingsError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Invalid(TidingsError):
    code, status = "invalid", 400


class Unauthorized(TidingsError):
    code, status = "unauthorized", 401


class Forbidden(TidingsError):
    code, status = "forbidden", 403


class NotFound(TidingsError):
    code, status = "not_found", 404


class Conflict(TidingsError):
    code, status = "conflict", 409


class TooLarge(TidingsError):
    code, status = "too_large", 413


class RateLimited(TidingsError):
    code, status = "rate_limited", 429


class Unavailable(TidingsError):
    """A backing service (Kafka, Cassandra, Redis) did not answer: nothing was accepted."""

    code, status = "unavailable", 503
