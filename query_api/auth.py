"""Client tokens: JWTs signed HS256 with ``TIDINGS_AUTH_SECRET`` (claims ``sub``, ``dev``, ``exp``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from events import is_valid_user_id
from events.errors import Unauthorized

ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    user_id: str
    device_id: str


def issue_token(
    secret: str, user_id: str, *, device_id: str = "default", ttl_s: int = 3600, now: float | None = None
) -> str:
    if not is_valid_user_id(user_id) or not is_valid_user_id(device_id):
        raise ValueError("user and device ids are 1-64 characters of [A-Za-z0-9_.@-]")
    issued = int(now if now is not None else time.time())
    claims = {"sub": user_id, "dev": device_id, "iat": issued, "exp": issued + ttl_s}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Principal:
    """The token's principal; ``Unauthorized`` for a missing, malformed, forged or expired one."""
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("invalid token") from exc
    user_id, device_id = claims.get("sub"), claims.get("dev", "default")
    if not isinstance(user_id, str) or not is_valid_user_id(user_id):
        raise Unauthorized("invalid token subject")
    if not isinstance(device_id, str) or not is_valid_user_id(device_id):
        raise Unauthorized("invalid token device")
    return Principal(user_id, device_id)


def bearer_token(authorization: str | None, query_token: str | None) -> str:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise Unauthorized("use Authorization: Bearer <token>")
    if query_token:
        return query_token
    raise Unauthorized("missing token")
