"""Request bodies and query arguments: parsed and validated once, errors as ``Invalid``."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from sanic import Request

from events.errors import Invalid


class Body(BaseModel):
    # Unknown fields are ignored so that clients written for later protocol versions still work.
    model_config = ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=Body)


def parse_body(request: Request, model: type[M]) -> M:
    try:
        data = orjson.loads(request.body or b"null")
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Invalid("body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Invalid(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc


def int_arg(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query argument, clamped to ``low..high``."""
    value = request.args.get(name)
    if value is None:
        return default
    if not value.lstrip("-").isdigit() or len(value) > 20:
        raise Invalid(f"{name} must be an integer")
    return max(low, min(int(value), high))


def message_id_arg(request: Request, name: str) -> int | None:
    value = request.args.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 20 or int(value) >= 2**63:
        raise Invalid(f"{name} must be a message_id (a decimal string)")
    return int(value)
