"""The `events` relation that feature SQL sees, built once here so that live and backfill agree on types.

Columns: `event_id VARCHAR`, `ts TIMESTAMP` (UTC, naive) and the declared fields; never `label`.

>>> table = to_arrow([{"event_id": "e1", "ts": 1_767_225_600_000, "amount": 2.5, "label": True}],
...                  {"amount": "double"})
>>> table.column_names, table["ts"][0].as_py().isoformat()
(['event_id', 'ts', 'amount'], '2026-01-01T00:00:00')
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

FIELD_TYPES = {
    "string": pa.string(),
    "double": pa.float64(),
    "bigint": pa.int64(),
    "boolean": pa.bool_(),
    "text": pa.string(),
}
"""`text` is free text: a VARCHAR to the SQL like `string`; only the learner treats it differently."""
TS_TYPE = pa.timestamp("us")
HIDDEN = frozenset({"label"})


def event_columns(fields: dict[str, str]) -> list[str]:
    """The column names of `events`, in order; `label` is never one of them."""
    return ["event_id", "ts", *(name for name in fields if name not in HIDDEN and name not in ("event_id", "ts"))]


def arrow_schema(fields: dict[str, str]) -> pa.Schema:
    """The Arrow schema of `events` for a `[fields]` table (name -> string|double|bigint|boolean|text)."""
    columns = [pa.field("event_id", pa.string()), pa.field("ts", TS_TYPE)]
    for name in event_columns(fields)[2:]:
        kind = fields[name]
        if kind not in FIELD_TYPES:
            raise ValueError(f"field {name!r} has type {kind!r}; expected one of {', '.join(FIELD_TYPES)}")
        columns.append(pa.field(name, FIELD_TYPES[kind]))
    return pa.schema(columns)


def empty_events(fields: dict[str, str]) -> pa.Table:
    return arrow_schema(fields).empty_table()


def to_arrow(events: Sequence[dict], fields: dict[str, str], ts_ms: Sequence[int] | None = None) -> pa.Table:
    """Events (dicts with `ts` in epoch milliseconds, or their `ts` given as `ts_ms`) as an `events` table;
    missing fields become NULL.

    Values travel as Arrow arrays, never as SQL text.
    """
    schema = arrow_schema(fields)
    if ts_ms is None:
        ts_ms = [e["ts"] for e in events]
    arrays = [
        pa.array([e["event_id"] for e in events], pa.string()),
        pa.array(ts_ms, pa.int64()).cast(pa.timestamp("ms")).cast(TS_TYPE),
    ]
    arrays += [pa.array([e.get(f.name) for e in events], f.type) for f in list(schema)[2:]]
    return pa.Table.from_arrays(arrays, schema=schema)
