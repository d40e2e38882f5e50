"""Typed errors: one class per protocol error code, each carrying that ``code``."""

from __future__ import annotations


class TidingsError(Exception):
    """An error answered by Tidings (an HTTP error body or a WebSocket ``error`` frame).

    ``code`` is the protocol's error code (``invalid``, ``forbidden``, ...), ``status`` the HTTP
    status when the error came over HTTP (``None`` for a WebSocket ``error`` frame)."""

    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message or (code or self.code))
        if code is not None:
            self.code = code
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, status={self.status})"


class InvalidRequest(TidingsError):
    """400 ``invalid``: the request or frame was malformed or not allowed as written."""

    code = "invalid"


class Unauthorized(TidingsError):
    """401 ``unauthorized``: the token is missing, malformed, wrongly signed or expired."""

    code = "unauthorized"


class Forbidden(TidingsError):
    """403 ``forbidden``: e.g. not a member of the conversation."""

    code = "forbidden"


class NotFound(TidingsError):
    """404 ``not_found``: no such conversation, member or route (v1.1 routes not built yet)."""

    code = "not_found"


class Conflict(TidingsError):
    """409 ``conflict``: e.g. a ``client_msg_id`` already used for a different message."""

    code = "conflict"


class TooLarge(TidingsError):
    """413 ``too_large``: a body, frame or group over its limit."""

    code = "too_large"


class RateLimited(TidingsError):
    """429 ``rate_limited``; ``retry_after`` is the server's wait in seconds (``None`` if not given)."""

    code = "rate_limited"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class Unavailable(TidingsError):
    """503 ``unavailable``: a backing service is down and nothing was accepted; or no gateway
    could be reached. ``retry_after`` as for ``RateLimited``."""

    code = "unavailable"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class ServerError(TidingsError):
    """500 ``internal`` (or any code this SDK does not know)."""

    code = "internal"


class ClientClosed(TidingsError):
    """The client was closed while the call waited (e.g. a ``send()`` not yet acknowledged)."""

    code = "closed"


class ObjectStoreError(TidingsError):
    """The object store refused or failed a transfer of media bytes (a presigned ``PUT`` or
    ``GET``): ``status`` is its HTTP status, ``message`` the start of its answer. Not a protocol
    code: the store speaks S3, not the Tidings protocol."""

    code = "object_store"


_BY_CODE: dict[str, type[TidingsError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        TooLarge,
        RateLimited,
        Unavailable,
    )
}
_BY_STATUS = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}


def error_for(
    code: str | None, message: str = "", *, status: int | None = None, retry_after: float | None = None
) -> TidingsError:
    """The typed error for a protocol ``code`` (or, without one, for an HTTP ``status``)."""
    if not code and status is not None:
        code = _BY_STATUS.get(status, "internal")
    code = code or "internal"
    if code == "rate_limited":
        return RateLimited(message, status=status, retry_after=retry_after)
    if code == "unavailable":
        return Unavailable(message, status=status, retry_after=retry_after)
    return _BY_CODE.get(code, ServerError)(message, code=code, status=status)
