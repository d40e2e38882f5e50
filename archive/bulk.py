"""Bulk parsing of the two events that make up nearly all of the log (messages and receipts in
their current version): the values of a whole fetch in one ``pyarrow.json`` call, with the
table's schema as the check, instead of one ``orjson.loads`` and one dict walk per event.

It accepts exactly what the per-event fast path (``archive.fast``) accepts (the same keys,
JSON types and literals, which are what the catalogue's models check) and nothing else: a
value with another key, a missing or null field, a string where a number belongs (or a float,
a boolean, an integer beyond 64 bits), a duplicate key, another version, media, an unknown
kind or status, or anything that does not parse, makes the whole group fall back to the
per-event path, which decides about each event as before (the catalogue, or ``unreadable``).
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from archive.tables import MESSAGES, RECEIPTS
from events.rows import MESSAGE_COLUMNS, RECEIPT_COLUMNS

# Values the gateway writes start like this (pydantic dumps fields in declaration order); a
# value that does not is left to the per-event path.
PREFIXES = {
    MESSAGES: b'{"type":"message.sent","v":1,',
    RECEIPTS: b'{"type":"receipt.recorded","v":1,',
}
_TYPES = {MESSAGES: "message.sent", RECEIPTS: "receipt.recorded"}

# Every key of the event, and its JSON type (pyarrow refuses any other, and any extra key).
_JSON = {
    MESSAGES: pa.schema(
        [
            ("type", pa.string()),
            ("v", pa.int64()),
            ("conversation_id", pa.string()),
            ("message_id", pa.int64()),
            ("sender_id", pa.string()),
            ("sender_device", pa.string()),
            ("client_msg_id", pa.string()),
            ("kind", pa.string()),
            ("body", pa.string()),
            ("media", pa.string()),  # must be null: any media goes the per-event way
            ("ts", pa.int64()),
        ]
    ),
    RECEIPTS: pa.schema(
        [
            ("type", pa.string()),
            ("v", pa.int64()),
            ("conversation_id", pa.string()),
            ("user_id", pa.string()),
            ("device_id", pa.string()),
            ("message_id", pa.int64()),
            ("status", pa.string()),
            ("ts", pa.int64()),
        ]
    ),
}
_LITERALS = {
    MESSAGES: ("kind", pa.array(["text", "image", "video", "file"])),
    RECEIPTS: ("status", pa.array(["delivered", "read"])),
}
# The archive table's columns that come from the event, in the table's order.
COLUMNS = {MESSAGES: [*MESSAGE_COLUMNS, "v"], RECEIPTS: [*RECEIPT_COLUMNS, "v"]}
_PARSE = {
    table: pj.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="error", newlines_in_values=False
    )
    for table, schema in _JSON.items()
}


def parse_values(table: str, values: list[bytes]) -> pa.Table | None:
    """The events of ``values`` (all starting with ``PREFIXES[table]``) as the table's event
    columns (``COLUMNS[table]``, ``ts`` and ``v`` still int64), one row per value in order;
    ``None`` unless every one of them passes every check."""
    buffer = b"\n".join(values)
    if buffer.count(b"\n") != len(values) - 1 or b"\r" in buffer:
        return None  # one value per line is how rows are told apart
    try:
        parsed = pj.read_json(
            io.BytesIO(buffer),
            read_options=pj.ReadOptions(block_size=max(1 << 20, len(buffer) + 1)),
            parse_options=_PARSE[table],
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if parsed.num_rows != len(values):
        return None
    for name in parsed.column_names:
        if name != "media" and parsed[name].null_count:
            return None  # a missing key or an explicit null
    if table == MESSAGES and parsed["media"].null_count != parsed.num_rows:
        return None
    column, allowed = _LITERALS[table]
    if not (
        pc.all(pc.equal(parsed["type"], _TYPES[table])).as_py()
        and pc.all(pc.equal(parsed["v"], 1)).as_py()
        and pc.all(pc.is_in(parsed[column], value_set=allowed)).as_py()
    ):
        return None
    return parsed.select(COLUMNS[table])
