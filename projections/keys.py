"""Read model ``keys``: the key directory of end-to-end encryption.

Consumes ``DeviceKeysPublished``, ``DeviceKeysDeleted``, ``OneTimeKeysAdded`` and
``OneTimeKeyClaimed`` (the key topic) into ``device_keys``, ``one_time_keys``,
``fallback_keys`` and ``one_time_claims``. Every write carries the event's time as its write
timestamp (``USING TIMESTAMP``), so a deletion shadows the keys uploaded before it and not those
after, however the writes are batched; the gateway writes the same statements through, and a
replay from the log ends in the same rows.

``one_time_claims`` is also the write side of a claim: one row per claimed key, keyed by the
device and the key itself, made by a lightweight transaction (``INSERT ... IF NOT EXISTS``)
that only one claimer wins, on any gateway. Keyed by the key's value, so a claimed key is never
handed out again, even if a device re-uploads it after deleting its keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import singledispatch
from typing import Any

from events import (
    ChatEvent,
    DeviceKeysDeleted,
    DeviceKeysPublished,
    KeyEvent,
    OneTimeKeyClaimed,
    OneTimeKeysAdded,
    SignedKey,
)
from projections.adapters.cql import Cql, distinct_writes
from projections.membership import Statement
from projections.views import DeviceKeys

NAME = "keys"

_DEVICE = (
    "INSERT INTO {ks}.device_keys (user_id, device_id, identity_key, signing_key, signature, ts)"
    " VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
)
_DELETE_DEVICE = "DELETE FROM {ks}.device_keys USING TIMESTAMP ? WHERE user_id = ? AND device_id = ?"
_DELETE_ONE_TIME = "DELETE FROM {ks}.one_time_keys USING TIMESTAMP ? WHERE user_id = ? AND device_id = ?"
_DELETE_FALLBACK = "DELETE FROM {ks}.fallback_keys USING TIMESTAMP ? WHERE user_id = ? AND device_id = ?"
_ONE_TIME = (
    "INSERT INTO {ks}.one_time_keys (user_id, device_id, key_id, key, signature)"
    " VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
)
_FALLBACK = (
    "INSERT INTO {ks}.fallback_keys (user_id, device_id, key_id, key, signature)"
    " VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
)
_CLAIMED = (
    "UPDATE {ks}.one_time_keys USING TIMESTAMP ? SET claimed_by = ?"
    " WHERE user_id = ? AND device_id = ? AND key_id = ?"
)
_CLAIM_ROW = (
    "INSERT INTO {ks}.one_time_claims (user_id, device_id, key, claimed_by, claim_id) VALUES (?, ?, ?, ?, ?)"
)
_TRY_CLAIM = (
    "INSERT INTO {ks}.one_time_claims (user_id, device_id, key, claimed_by, claim_id)"
    " VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
)
_HEAL = "UPDATE {ks}.one_time_keys SET claimed_by = ? WHERE user_id = ? AND device_id = ? AND key_id = ?"
_SELECT_DEVICE = (
    "SELECT user_id, device_id, identity_key, signing_key, signature FROM {ks}.device_keys"
    " WHERE user_id = ? AND device_id = ?"
)
_SELECT_DEVICES = (
    "SELECT user_id, device_id, identity_key, signing_key, signature FROM {ks}.device_keys WHERE user_id = ?"
)
_SELECT_ONE_TIME = (
    "SELECT key_id, key, signature, claimed_by FROM {ks}.one_time_keys WHERE user_id = ? AND device_id = ?"
)
_SELECT_FALLBACK = "SELECT key_id, key, signature FROM {ks}.fallback_keys WHERE user_id = ? AND device_id = ?"


def _micros(ts_ms: int) -> int:
    return ts_ms * 1000


@singledispatch
def statements(event: ChatEvent) -> list[Statement]:
    return []


@statements.register
def _(event: DeviceKeysPublished) -> list[Statement]:
    e = event
    values = (e.user_id, e.device_id, e.identity_key, e.signing_key, e.signature, e.ts)
    return [(_DEVICE, (*values, _micros(e.ts)))]


@statements.register
def _(event: DeviceKeysDeleted) -> list[Statement]:
    at = (_micros(event.ts), event.user_id, event.device_id)
    return [(_DELETE_DEVICE, at), (_DELETE_ONE_TIME, at), (_DELETE_FALLBACK, at)]


@statements.register
def _(event: OneTimeKeysAdded) -> list[Statement]:
    at = _micros(event.ts)
    out: list[Statement] = [
        (_ONE_TIME, (event.user_id, event.device_id, k.key_id, k.key, k.signature, at)) for k in event.keys
    ]
    if event.fallback is not None:
        f = event.fallback
        out.append((_FALLBACK, (event.user_id, event.device_id, f.key_id, f.key, f.signature, at)))
    return out


@statements.register
def _(event: OneTimeKeyClaimed) -> list[Statement]:
    e = event
    claim_id = uuid.UUID(e.claim_id) if e.claim_id else None
    return [
        (_CLAIMED, (_micros(e.ts), e.claimed_by, e.user_id, e.device_id, e.key_id)),
        (_CLAIM_ROW, (e.user_id, e.device_id, e.key, e.claimed_by, claim_id)),
    ]


class CassandraKeys:
    """The key directory: its projection stage, its queries and the claim's conditional write."""

    name = NAME

    def __init__(self, cql: Cql) -> None:
        self._cql = cql

    def prepare(self) -> None:
        for cql in (
            _DEVICE,
            _DELETE_DEVICE,
            _DELETE_ONE_TIME,
            _DELETE_FALLBACK,
            _ONE_TIME,
            _FALLBACK,
            _CLAIMED,
            _CLAIM_ROW,
            _TRY_CLAIM,
            _HEAL,
            _SELECT_DEVICE,
            _SELECT_DEVICES,
            _SELECT_ONE_TIME,
            _SELECT_FALLBACK,
        ):
            self._cql.prepare(cql)

    async def apply(self, events: Sequence[ChatEvent]) -> None:
        writes = await self.writes(events)
        if writes:
            await self._cql.execute_all(writes)

    async def writes(self, events: Sequence[ChatEvent]) -> list[Statement]:
        """The writes ``events`` cause, deduplicated (``streams.combined``)."""
        return distinct_writes(events, statements)

    async def write(self, events: Sequence[KeyEvent]) -> None:
        await self.apply(events)

    async def device(self, user_id: str, device_id: str) -> DeviceKeys | None:
        rows = await self._cql.execute(_SELECT_DEVICE, (user_id, device_id))
        return _device(rows[0]) if rows else None

    async def devices(self, user_id: str) -> list[DeviceKeys]:
        return [_device(r) for r in await self._cql.execute_paged(_SELECT_DEVICES, (user_id,))]

    async def _one_time(self, user_id: str, device_id: str) -> list[Any]:
        return await self._cql.execute_paged(_SELECT_ONE_TIME, (user_id, device_id))

    async def key_ids(self, user_id: str, device_id: str) -> set[str]:
        return {r.key_id for r in await self._one_time(user_id, device_id)}

    async def unclaimed(self, user_id: str, device_id: str, limit: int) -> list[SignedKey]:
        rows = [r for r in await self._one_time(user_id, device_id) if r.claimed_by is None]
        return [SignedKey(key_id=r.key_id, key=r.key, signature=r.signature) for r in rows[:limit]]

    async def try_claim(
        self, user_id: str, device_id: str, key: SignedKey, claimed_by: str, claim_id: str
    ) -> bool:
        # The attempt's own id: the driver retrying this very write after it succeeded reads as
        # won, and another request of the same claimer as lost.
        attempt = uuid.UUID(claim_id)
        rows = await self._cql.execute(_TRY_CLAIM, (user_id, device_id, key.key, claimed_by, attempt))
        row = rows[0]
        if row[0] or getattr(row, "claim_id", None) == attempt:
            return True
        # Lost: another claimer has it; mark it in the listing so later claims skip it.
        winner = getattr(row, "claimed_by", None) or "?"
        await self._cql.execute(_HEAL, (winner, user_id, device_id, key.key_id))
        return False

    async def fallback(self, user_id: str, device_id: str) -> SignedKey | None:
        rows = await self._cql.execute(_SELECT_FALLBACK, (user_id, device_id))
        if not rows:
            return None
        return SignedKey(key_id=rows[0].key_id, key=rows[0].key, signature=rows[0].signature)

    async def remaining(self, user_id: str, device_id: str) -> int:
        return sum(1 for r in await self._one_time(user_id, device_id) if r.claimed_by is None)


def _device(row: Any) -> DeviceKeys:
    return DeviceKeys(row.user_id, row.device_id, row.identity_key, row.signing_key, row.signature)
