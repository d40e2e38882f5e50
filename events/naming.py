"""Identifier rules shared by every layer: user ids and direct-conversation ids."""

from __future__ import annotations

import re

DM_PREFIX = "dm:"
_USER_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def is_valid_user_id(value: str) -> bool:
    return _USER_ID.fullmatch(value) is not None


def direct_conversation_id(a: str, b: str) -> str:
    """``dm:<a>:<b>`` with the two ids in plain byte order (``Bob`` before ``alice``)."""
    first, second = sorted((a, b), key=lambda s: s.encode())
    return f"{DM_PREFIX}{first}:{second}"


def dm_members(conversation_id: str) -> tuple[str, str] | None:
    """The two members of a well-formed direct conversation id, else ``None``.

    Well-formed means two valid user ids in byte order; ``dm:alice:alice`` (notes to self) is
    allowed. ``:`` cannot occur in a user id, so the split is unambiguous.
    """
    if not conversation_id.startswith(DM_PREFIX):
        return None
    parts = conversation_id[len(DM_PREFIX) :].split(":")
    if len(parts) != 2 or not all(is_valid_user_id(p) for p in parts):
        return None
    a, b = parts
    if a.encode() > b.encode():
        return None
    return a, b
