"""What a feature file's SQL is made of, read off DuckDB's own parse tree: the shape the fast plan serves.

`windowed_select` recognises a file whose every window is an aggregate (`count`, `sum`, `avg`, `min`,
`max`, `stddev_*`, `var_*`) of one column (or `*`), `PARTITION BY` the header's entity, `ORDER BY ts`, with
a `RANGE` frame from a constant interval back to the current row or to a constant interval back, and
returns those windows with the select list rewritten over them. It uses the text spans of the user's own
expressions, so a wrong reading is possible: the planner (`features.planner`) only uses a plan that reproduces
the file's SQL on a sample. `walk` visits the parse tree; the validation in `features.spec` uses it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import duckdb

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
    """The file is not made of windowed aggregates over its entity; it runs as written."""


@dataclass(frozen=True)
class WindowedSelect:
    """A feature file read as windowed aggregates over its entity: what the segment plan is built from.

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


def parse_tree(con: duckdb.DuckDBPyConnection, text: str) -> dict:
    """DuckDB's JSON parse tree of `text` (`statements`, or `error` and `error_message`)."""
    return json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchall()[0][0])


def walk(node):
    """Every dict in DuckDB's JSON parse tree, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)
