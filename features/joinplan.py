"""A faster, equivalent plan for the common shape of feature SQL: windowed aggregates as a batch join.

A window over `events` computes a result for every row it reads, history included, although only the
batch's rows are wanted; with a 24-hour horizon that is ~10x the work. When every window in a file is an
aggregate (`count`, `sum`, `avg`, `min`, `max`, `stddev_*`, `var_*`) of one column (or `*`),
`PARTITION BY` the header's entity, `ORDER BY ts`, with a `RANGE` frame from a constant interval back to
the current row or a constant interval back, the file is rewritten as: join each batch row to its entity's
history within the frame, aggregate per batch row, then evaluate the user's own select list over the batch
row with each window replaced by its aggregate. The rewrite is built from DuckDB's own parse tree, using
the text spans of the user's expressions, and is accepted only if it gives the same result as the plain
SQL on a synthetic sample at load time; otherwise the file runs as written. The plain SQL stays the
definition: the backfill always runs it, and the property tests compare the two.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import duckdb
import numpy as np
import pyarrow as pa

from features.schema import to_arrow

_AGGREGATES = {
    "count",
    "count_star",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "variance",
    "var_samp",
    "var_pop",
}
_NO_LOCATION = 2**64 - 1


class _Ineligible(Exception):
    """The file's shape is not one the batch join reproduces exactly; it runs as written."""


def batch_join_sql(
    con: duckdb.DuckDBPyConnection,
    text: str,
    select: WindowedSelect | None,
    entity: tuple[str, ...],
    horizon_ms: int,
    fields: dict[str, str],
) -> str | None:
    """The batch-join rewrite of a feature file (`select`: `windowed_select` of it), or None when it does not
    apply or does not reproduce the file's SQL."""
    if select is None:
        return None
    sql = _rewrite(select, entity, fields)

    def run(sample: pa.Table) -> pa.Table:
        con.register("__history", sample)
        con.register("__batch", with_row_numbers(sample))
        try:
            return con.sql(sql).to_arrow_table()
        finally:
            con.unregister("__history")
            con.unregister("__batch")

    return sql if reproduces(con, text, fields, horizon_ms, run) else None


@dataclass(frozen=True)
class WindowedSelect:
    """A feature file read as windowed aggregates over its entity: what both fast plans are built from.

    `windows` holds, for each window in the select list, its `function` (lower case, as written), `column`
    (None for `count(*)`), and its frame `lo`/`hi` (the interval texts) and `lo_us`/`hi_us` (their lengths;
    `hi` is empty for a frame ending at the current row). `items` is the select list with each window
    replaced by `__agg.__wN`, N its place in `windows`.
    """

    alias: str
    windows: list[dict]
    items: list[str]


def windowed_select(
    con: duckdb.DuckDBPyConnection, text: str, statement: dict, columns: list[str], entity: tuple[str, ...]
) -> WindowedSelect | None:
    """The file's windows and select items, or None when it is not made of windowed aggregates only."""
    if not entity:
        return None
    try:
        return _analyse(con, text.encode(), statement, columns, entity)
    except _Ineligible:
        return None


def _analyse(con, raw: bytes, statement: dict, columns: list[str], entity: tuple[str, ...]) -> WindowedSelect:
    node = statement["node"]
    if node.get("type") != "SELECT_NODE" or node.get("modifiers") or node.get("cte_map", {}).get("map"):
        raise _Ineligible
    if any(node.get(k) for k in ("where_clause", "group_expressions", "group_sets", "having", "qualify", "sample")):
        raise _Ineligible
    source = node.get("from_table") or {}
    if source.get("type") != "BASE_TABLE" or source.get("table_name") != "events" or source.get("schema_name"):
        raise _Ineligible
    alias = source.get("alias") or "events"
    windows: list[dict] = []
    items = []
    for item, name in zip(node["select_list"], columns, strict=True):
        items.append(f"{_replace_windows(raw, item, windows, entity, con)} AS {_quote(name)}")
    if not windows:
        raise _Ineligible
    return WindowedSelect(alias, windows, items)


def _rewrite(select: WindowedSelect, entity: tuple[str, ...], fields: dict[str, str]) -> str:
    alias, windows, items = select.alias, select.windows, select.items
    widest = max(windows, key=lambda w: w["lo_us"])
    # Every batch row joins at least itself (it is part of __history), so an inner join keeps every row.
    bounds = f"__h.ts >= __b.ts - ({widest['lo']}) AND __h.ts <= __b.ts"
    keys = " AND ".join(f"__h.{_quote(c)} IS NOT DISTINCT FROM __b.{_quote(c)}" for c in entity)
    exact = [i for i, w in enumerate(windows) if _needs_exact(w, fields)]
    spread = [i for i in exact if windows[i]["function"].startswith(("var", "std"))]
    batch_ts = "__h.__bts" if exact else "__b.ts"
    conditions = []
    for window in windows:
        condition = None
        if window["lo_us"] != widest["lo_us"] or window["hi_us"]:
            condition = f"__h.ts >= {batch_ts} - ({window['lo']})"
            condition += f" AND __h.ts <= {batch_ts} - ({window['hi']})" if window["hi"] else ""
        conditions.append(condition)

    def agg(name: str, argument: str, i: int) -> str:
        return f"{name}({argument})" + (f" FILTER (WHERE {conditions[i]})" if conditions[i] else "")

    def value(i: int) -> str:
        column = windows[i]["column"]
        return f"CAST(__h.{_quote(column)} AS DOUBLE)" if column else "__h.ts"

    def exact_sum(argument: str, scale: str, i: int) -> str:
        # Scaled by the two factors `_scales` made (columns `{scale}a` and `{scale}b`): powers of two, exact.
        low, high = f"{scale}a", f"{scale}b"
        total = agg("sum", f"CAST(round((({argument}) * {low}) * {high}) AS HUGEINT)", i)
        return f"((CAST({total} AS DOUBLE) / any_value({low})) / any_value({high}))"

    aggregates = []
    for i, window in enumerate(windows):
        function = window["function"]
        if i not in exact:
            argument = f"__h.{_quote(window['column'])}" if window["column"] else "__h.ts"
            aggregates.append(f"{agg(function, argument, i)} AS __w{i}")
            continue
        count = agg("count", value(i), i)
        if function == "sum":
            expression = exact_sum(value(i), f"__s.__k{i}", i)
        elif function in ("avg", "mean"):
            expression = f"({exact_sum(value(i), f'__s.__k{i}', i)} / nullif({count}, 0))"
        else:
            deviation = f"({value(i)} - __m.__m{i})"
            squares = exact_sum(f"{deviation} * {deviation}", f"__d.__k{i}", i)
            population = function in ("var_pop", "stddev_pop")
            divisor = count if population else f"({count} - 1)"
            expression = f"(CASE WHEN {count} > {0 if population else 1} THEN {squares} / {divisor} END)"
            if function.startswith("stddev"):
                expression = f"sqrt({expression})"
        aggregates.append(f"{expression} AS __w{i}")

    joined = f"FROM __history AS __h JOIN __batch AS __b ON {keys} AND {bounds}"
    if not exact:
        head = f"WITH __agg AS (\n    SELECT __b.__row, {', '.join(aggregates)}\n    {joined}\n"
        head += "    GROUP BY __b.__row\n)\n"
    else:
        # Float sums are taken exactly, in fixed point scaled to each window's largest magnitude: stages that
        # find those magnitudes (and, for variances, the means and largest deviations) come first.
        magnitudes = ", ".join(_exponent(agg("max", f"abs({value(i)})", i), f"__k{i}") for i in exact)
        stages = [
            f"__j AS MATERIALIZED (\n    SELECT __b.__row, __h.*, __b.ts AS __bts\n    {joined}\n)",
            _scales("__s", magnitudes, ["__j AS __h"], [f"__k{i}" for i in exact]),
        ]
        tables = ["__j AS __h", "JOIN __s ON __s.__row = __h.__row"]
        if spread:
            means = ", ".join(
                f"({exact_sum(value(i), f'__s.__k{i}', i)} / nullif({agg('count', value(i), i)}, 0)) AS __m{i}"
                for i in spread
            )
            stages.append(_stage("__m", means, tables))
            tables.append("JOIN __m ON __m.__row = __h.__row")
            deviations = ", ".join(
                _exponent(_squared(agg("max", f"abs({value(i)} - __m.__m{i})", i)), f"__k{i}") for i in spread
            )
            stages.append(_scales("__d", deviations, tables, [f"__k{i}" for i in spread]))
            tables.append("JOIN __d ON __d.__row = __h.__row")
        stages.append(_stage("__agg", ", ".join(aggregates), tables))
        head = "WITH " + ",\n".join(stages) + "\n"
    return (
        head
        + f"SELECT {', '.join(items)}\n"
        + f"FROM __batch AS {_quote(alias)} JOIN __agg ON __agg.__row = {_quote(alias)}.__row\n"
        + f"ORDER BY {_quote(alias)}.__row"
    )


def _stage(name: str, columns: str, tables: list[str]) -> str:
    return f"{name} AS (\n    {_grouped(columns, tables)}\n)"


def _grouped(columns: str, tables: list[str]) -> str:
    return f"SELECT __h.__row, {columns}\n    FROM {' '.join(tables)}\n    GROUP BY __h.__row"


def _scales(name: str, exponents: str, tables: list[str], scales: list[str]) -> str:
    """A stage of scale factors, two per scale (`{scale}a` and `{scale}b`, whose product is 2^k): 2^k reaches
    2^(62 + 1074), beyond one double. They are computed here once per batch row, not for every term summed."""
    factors = ", ".join(f"pow(2.0, {k} // 2) AS {k}a, pow(2.0, {k} - {k} // 2) AS {k}b" for k in scales)
    return f"{name} AS (\n    SELECT __row, {factors}\n    FROM ({_grouped(exponents, tables)}) AS __e\n)"


def _squared(expression: str) -> str:
    return f"({expression} * {expression})"


def _exponent(magnitude: str, name: str) -> str:
    """The exponent k for which the largest term times 2^k is about 2^62: a sum of terms fits a HUGEINT and
    keeps 62 bits of precision relative to the largest one (a double keeps 53). All-zero windows use 0. k runs
    from 62 - 1024 to 62 + 1074 (the smallest subnormal); `_scales` turns it into two factors."""
    k = f"62 - CAST(ceil(log2({magnitude})) AS INTEGER)"
    return f"CASE WHEN coalesce({magnitude}, 0) = 0 THEN 0 ELSE {k} END AS {name}"


def _needs_exact(window: dict, fields: dict[str, str]) -> bool:
    """Order-sensitive aggregates: float sums, and variances of any number (DuckDB's are float)."""
    kind = fields.get(window["column"] or "")
    function = window["function"]
    if kind == "double":
        return function in _FLOAT_SUMS
    return kind == "bigint" and function.startswith(("var", "std"))


_FLOAT_SUMS = {"sum", "avg", "mean", "stddev", "stddev_samp", "stddev_pop", "variance", "var_samp", "var_pop"}


def _replace_windows(raw: bytes, item: dict, windows: list[dict], entity, con) -> str:
    start, length = _item_span(raw, item)
    text = raw[start : start + length]
    spans = []
    for node in walk(item):
        if node.get("class") in ("SUBQUERY", "STAR", "COLUMNS"):
            raise _Ineligible
        if node.get("class") == "WINDOW":
            window = _window(raw, node, entity, con)
            w_start, w_length = _span(node)
            spans.append((w_start - start, w_length, len(windows)))
            windows.append(window)
    for offset, w_length, index in sorted(spans, reverse=True):
        if offset < 0 or offset + w_length > len(text):
            raise _Ineligible
        text = text[:offset] + f"__agg.__w{index}".encode() + text[offset + w_length :]
    return f"({text.decode()})"


def _window(raw: bytes, node: dict, entity: tuple[str, ...], con) -> dict:
    function = str(node.get("function_name", "")).lower()
    if node.get("type") != "WINDOW_AGGREGATE" or function not in _AGGREGATES:
        raise _Ineligible
    if node.get("distinct") or node.get("filter_expr") or node.get("ignore_nulls") or node.get("arg_orders"):
        raise _Ineligible
    if node.get("exclude_clause", "NO_OTHER") != "NO_OTHER":
        raise _Ineligible
    partitions = node.get("partitions", [])
    if any(p.get("class") != "COLUMN_REF" for p in partitions):
        raise _Ineligible
    if sorted(p["column_names"][-1] for p in partitions) != sorted(entity):
        raise _Ineligible
    orders = node.get("orders", [])
    if len(orders) != 1 or orders[0].get("type") not in ("ORDER_DEFAULT", "ASCENDING"):
        raise _Ineligible
    order = orders[0]["expression"]
    if order.get("class") != "COLUMN_REF" or order["column_names"][-1] != "ts":
        raise _Ineligible
    if node.get("start") != "EXPR_PRECEDING_RANGE":
        raise _Ineligible
    lo, lo_us = _interval(raw, node["start_expr"], con)
    if node.get("end") == "CURRENT_ROW_RANGE":
        hi, hi_us = "", 0
    elif node.get("end") == "EXPR_PRECEDING_RANGE":
        hi, hi_us = _interval(raw, node["end_expr"], con)
    else:
        raise _Ineligible
    arguments = node.get("arguments", [])
    if function == "count_star" or (function == "count" and not arguments):
        function, column = "count", None
    elif len(arguments) == 1 and arguments[0]["expression"].get("class") == "COLUMN_REF":
        column = arguments[0]["expression"]["column_names"][-1]
    else:
        raise _Ineligible
    return {"function": function, "column": column, "lo": lo, "lo_us": lo_us, "hi": hi, "hi_us": hi_us}


def _interval(raw: bytes, expression: dict, con) -> tuple[str, int]:
    """The interval's own text and its length in microseconds (fixed lengths only: no months)."""
    if any(n.get("class") == "COLUMN_REF" for n in walk(expression)):
        raise _Ineligible
    start, length = _span(expression)
    text = raw[start : start + length].decode()
    try:
        rows = con.execute(f"SELECT to_microseconds(0) + ({text})").fetchall()
    except duckdb.Error as exc:
        raise _Ineligible from exc
    value = rows[0][0]
    if not isinstance(value, timedelta):
        raise _Ineligible
    return text, value // timedelta(microseconds=1)


def with_row_numbers(batch: pa.Table) -> pa.Table:
    """The batch as the plan reads it: `__row` numbers its rows, to group by and to return them in order."""
    return batch.append_column("__row", pa.array(np.arange(batch.num_rows, dtype=np.int32)))


def reproduces(
    con: duckdb.DuckDBPyConnection,
    text: str,
    fields: dict[str, str],
    horizon_ms: int,
    plan: Callable[[pa.Table], pa.Table],
    errors: tuple[type[Exception], ...] = (duckdb.Error,),
) -> bool:
    """Whether a fast plan gives the file's own SQL results on a synthetic sample with ties, NULLs and gaps
    around the horizon: the test every fast plan passes before it is used. `plan(sample)` returns `event_id`
    and the features; any of `errors` from either side means no."""
    sample = _sample(fields, horizon_ms)
    try:
        con.register("events", sample)
        try:
            expected = con.sql(text).to_arrow_table()
        finally:
            con.unregister("events")
        got = plan(sample)
    except errors:
        return False
    expected, got = (t.sort_by("event_id").to_pylist() for t in (expected, got))
    return len(got) == len(expected) and all(_same_row(a, b) for a, b in zip(got, expected, strict=True))


def _sample(fields: dict[str, str], horizon_ms: int) -> pa.Table:
    rng = random.Random(20260101)
    step = max(1, horizon_ms // 4)
    values = {
        "string": lambda: rng.choice(["a", "b", "c", None]),
        "double": lambda: rng.choice([None, 0.0, 1.5, -2.0, rng.uniform(-100, 100)]),
        "bigint": lambda: rng.choice([None, 0, 1, rng.randint(-100, 100)]),
        "boolean": lambda: rng.choice([None, True, False]),
    }
    events, ts = [], 1_767_225_600_000
    for i in range(120):
        ts += rng.choice([0, 0, 1, step, horizon_ms, horizon_ms + 1])
        events.append({"event_id": f"s{i:03d}", "ts": ts, **{k: values[v]() for k, v in fields.items()}})
    return to_arrow(events, fields)


def _same_row(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) and not (math.isnan(x) and math.isnan(y)):
                return False
        elif x != y:
            return False
    return True


def _item_span(raw: bytes, item: dict) -> tuple[int, int]:
    """The text of a select item: DuckDB gives operators a zero-length location, so take the union of the
    spans inside it (a window counts as one span: its named parts may live in the WINDOW clause), then
    widen it to balance parentheses. A wrong guess fails the load-time comparison and is not used."""
    spans = []

    def collect(node):
        if isinstance(node, list):
            for value in node:
                collect(value)
            return
        if not isinstance(node, dict):
            return
        start, length = node.get("query_location"), node.get("query_location_length")
        if start is not None and start != _NO_LOCATION and length:
            spans.append((start, start + length))
        if node.get("class") != "WINDOW":
            for value in node.values():
                collect(value)

    collect(item)
    if not spans:
        raise _Ineligible
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    while raw[start:end].count(b"(") < raw[start:end].count(b")") and start > 0:
        start = raw.rindex(b"(", 0, start)
    while raw[start:end].count(b"(") > raw[start:end].count(b")") and end < len(raw):
        end = raw.index(b")", end) + 1
    return start, end - start


def _span(node: dict) -> tuple[int, int]:
    start, length = node.get("query_location"), node.get("query_location_length")
    if start is None or start == _NO_LOCATION or not length:
        raise _Ineligible
    return start, length


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def walk(node):
    """Every dict in DuckDB's JSON parse tree, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)
