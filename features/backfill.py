"""Backfill: every feature group over a whole file, the reference the online engine must equal.

    python -m features.backfill --sql-dir sql/transactions events.jsonl features.parquet

Each group's SQL runs once over all the file's events (sorted by ts, then event_id), exactly as a user
would run it by hand in DuckDB; the output is Parquet with `event_id` and every feature column, one row
per event in (ts, event_id) order.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.catalog import require_catalog
from features.engine import connect, run_group
from features.schema import FIELD_TYPES, HIDDEN, TS_TYPE, arrow_schema, to_arrow
from features.spec import FeatureFileError
from features.timestamps import to_ms

log = logging.getLogger("features.backfill")
_CHUNK = 100_000


def backfill(sql_dir: str | Path, events: pa.Table, fields: dict[str, str], threads: int | None = None) -> pa.Table:
    """Features of every event of an `events` table (see `features.schema`), `event_id` first."""
    fields = {k: v for k, v in fields.items() if k not in HIDDEN}
    catalog = require_catalog(sql_dir, fields)
    events = events.select(arrow_schema(fields).names).sort_by([("ts", "ascending"), ("event_id", "ascending")])
    con = connect(threads or os.cpu_count() or 1)
    columns = {"event_id": events["event_id"]}
    for group in catalog.groups:
        started = time.perf_counter()
        columns.update(run_group(con, group, events, events["event_id"]))
        log.info("group %s: %d events in %.1f s", group.name, events.num_rows, time.perf_counter() - started)
    con.close()
    return pa.table(columns)


def read_events(path: str | Path, fields: dict[str, str] | None = None) -> tuple[pa.Table, dict[str, str]]:
    """A JSONL or Parquet file as an `events` table; `ts` may be ISO-8601 text or epoch milliseconds.

    Without `fields`, the field types are inferred from the file.
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        table = pq.read_table(path)
        fields = fields or _infer_arrow(table.schema)
        rows_ts = _ts_column(table["ts"])
        schema = arrow_schema(fields)
        columns = [table["event_id"].cast(pa.string()), rows_ts]
        for f in list(schema)[2:]:
            columns.append(
                table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            )
        return pa.Table.from_arrays(columns, schema=schema), fields
    rows = list(_jsonl(path))
    fields = fields or _infer_rows(rows)
    chunks = []
    for start in range(0, len(rows), _CHUNK):
        chunk = [{**r, "ts": to_ms(r["ts"])} for r in rows[start : start + _CHUNK]]
        chunks.append(to_arrow(chunk, fields))
        log.info("read %d of %d events", start + len(chunk), len(rows))
    return (pa.concat_tables(chunks) if chunks else arrow_schema(fields).empty_table()), fields


def _jsonl(path: Path) -> Iterable[dict]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not valid JSON: {exc}") from exc


def _ts_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.timestamp("us", column.type.tz)).cast(TS_TYPE)
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64()).cast(pa.timestamp("ms")).cast(TS_TYPE)
    millis = [to_ms(v) for v in column.to_pylist()]
    return pc.cast(pa.array(millis, pa.int64()).cast(pa.timestamp("ms")), TS_TYPE)


def _infer_rows(rows: list[dict]) -> dict[str, str]:
    kinds = {bool: "boolean", int: "bigint", float: "double", str: "string"}
    fields: dict[str, str] = {}
    for row in rows[:1000]:
        for name, value in row.items():
            if name in ("event_id", "ts") or name in HIDDEN or value is None:
                continue
            kind = kinds.get(type(value), "string")
            if fields.get(name) == "bigint" and kind == "double":
                fields[name] = "double"
            else:
                fields.setdefault(name, kind)
    return fields


def _infer_arrow(schema: pa.Schema) -> dict[str, str]:
    by_type = {t: name for name, t in FIELD_TYPES.items()}
    fields = {}
    for f in schema:
        if f.name in ("event_id", "ts") or f.name in HIDDEN:
            continue
        if pa.types.is_integer(f.type):
            fields[f.name] = "bigint"
        elif pa.types.is_floating(f.type):
            fields[f.name] = "double"
        else:
            fields[f.name] = by_type.get(f.type, "string")
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m features.backfill",
        description="Compute every feature group of SQL_DIR for a whole JSONL or Parquet file of events "
        "and write Parquet (event_id plus the feature columns).",
    )
    parser.add_argument("--sql-dir", required=True, help="folder of feature files, e.g. sql/transactions")
    parser.add_argument(
        "--config",
        default=os.environ.get("EDDY_CONFIG", "eddy.toml"),
        help="eddy.toml whose [fields] table gives the field types (default: %(default)s; "
        "if absent, types are inferred from the input)",
    )
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument("input", help="events, .jsonl or .parquet")
    parser.add_argument("output", help="features, .parquet")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    fields = None
    if Path(args.config).is_file():
        with open(args.config, "rb") as handle:
            fields = tomllib.load(handle).get("fields")
    try:
        events, fields = read_events(args.input, fields)
        features = backfill(args.sql_dir, events, fields, args.threads)
    except (FeatureFileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pq.write_table(features, args.output)
    log.info("wrote %d rows, %d features to %s", features.num_rows, features.num_columns - 1, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
