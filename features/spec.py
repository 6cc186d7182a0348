"""Feature files: parse the header, validate the SQL against the `events` schema, explain failures.

Validation only: how a valid file is computed is the planner's choice (`features.planner`).

A feature file is a header of `-- key: value` comment lines followed by one plain DuckDB `SELECT` over a
relation named `events` (see `sql/README.md`). Loading checks everything that can be checked without data,
so that a bad edit is rejected when it is loaded, with the file, the line and DuckDB's own message,
rather than failing in the middle of a stream.

>>> parse_duration("90s"), parse_duration("10m"), parse_duration("24h"), parse_duration("0")
(90000, 600000, 86400000, 0)
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import duckdb

from features.schema import empty_events, event_columns
from features.segments import SegmentPlan
from features.sql_analysis import parse_tree, walk

HEADER_KEYS = ("group", "entity", "horizon", "lateness", "description")
REQUIRED_KEYS = ("group", "entity", "horizon")
LABEL = "label"
_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_HEADER_LINE = re.compile(r"^--\s*([A-Za-z_][\w-]*)\s*:\s*(.*?)\s*$")
_NAME = re.compile(r"^[A-Za-z_]\w*$")
_EXAMPLE_HEADER = "-- group: user_velocity\n-- entity: user_id\n-- horizon: 24h\n-- lateness: 5s"
# Window frame ends that never reach past the current row (peers with an equal ts are included).
_SAFE_FRAME_ENDS = {
    "CURRENT_ROW_RANGE",
    "CURRENT_ROW_ROWS",
    "CURRENT_ROW_GROUPS",
    "EXPR_PRECEDING_RANGE",
    "EXPR_PRECEDING_ROWS",
    "EXPR_PRECEDING_GROUPS",
}
_FUTURE_FUNCTIONS = {"lead", "last_value", "nth_value"}


class FeatureFileError(ValueError):
    """A feature file that cannot be used; the message names the file, the line and the cause."""

    def __init__(self, path: str | Path, line: int | None, message: str, column: int | None = None):
        self.path = str(path)
        self.line = line
        self.column = column
        self.reason = message
        where = "" if line is None else f"line {line}, " + ("" if column is None else f"column {column}, ")
        where = where.rstrip(", ")
        super().__init__(f"Failed to load feature file '{self.path}': {where + ': ' if where else ''}{message}")


@dataclass(frozen=True)
class FeatureGroup:
    """One loaded, validated feature file; `segments` is its segment plan once the planner chose one.

    `lateness_ms` is the header's, read and checked so that files that carry one load; how late an event may
    arrive is the flow's setting (`[flow] lateness_ms`), whose ordering step feeds the engine in event time.
    """

    name: str
    path: str
    entity: tuple[str, ...]
    horizon_ms: int
    lateness_ms: int | None
    sql: str
    feature_names: tuple[str, ...]
    description: str = ""
    segments: SegmentPlan | None = None


def parse_duration(text: str) -> int:
    """A duration such as `500ms`, `90s`, `10m`, `1h`, `2d` (or `0`) in milliseconds."""
    match = re.fullmatch(r"\s*(\d+)\s*(ms|s|min|m|h|d)?\s*", text)
    if not match or (match.group(2) is None and match.group(1) != "0"):
        raise ValueError(f"invalid duration {text!r}; write e.g. 500ms, 90s, 10m, 1h or 2d")
    return int(match.group(1)) * _UNITS[match.group(2) or "ms"]


def definitions_hash(texts: dict[str, str]) -> str:
    """`features_version`: a short hash of every file name and text in force, in name order."""
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
    return digest.hexdigest()[:12]


def load_group(path: str | Path, fields: dict[str, str], text: str | None = None) -> FeatureGroup:
    """Parse and validate one feature file; raise `FeatureFileError` on the first problem. No plan yet."""
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FeatureFileError(path, None, f"cannot read the file: {exc}") from exc
    header, body_line = _parse_header(path, text)
    entity = _check_entity(path, header, fields)
    horizon = _duration(path, header, "horizon")
    lateness = _duration(path, header, "lateness") if "lateness" in header else None
    name = header["group"][0]
    if not _NAME.match(name):
        raise FeatureFileError(path, header["group"][1], f"group name {name!r} must be an identifier")
    con = duckdb.connect(config={"enable_external_access": False})
    try:
        columns, statement = _bind(con, path, text, body_line, fields)
        _check_reach(con, path, text, body_line, statement, horizon)
    finally:
        con.close()
    return FeatureGroup(
        name=name,
        path=str(path),
        entity=entity,
        horizon_ms=horizon,
        lateness_ms=lateness,
        sql=text,
        feature_names=tuple(c for c in columns if c != "event_id"),
        description=header.get("description", ("", 0))[0],
    )


def check_catalog(groups: Iterable[FeatureGroup]) -> None:
    """Checks across files: group names and feature names must be unique."""
    seen_groups: dict[str, str] = {}
    seen_features: dict[str, str] = {}
    for group in groups:
        if group.name in seen_groups:
            raise FeatureFileError(
                group.path, 1, f"group {group.name!r} is also declared in '{seen_groups[group.name]}'"
            )
        seen_groups[group.name] = group.path
        for feature in group.feature_names:
            if feature in seen_features:
                raise FeatureFileError(
                    group.path,
                    None,
                    f"feature {feature!r} is also produced by '{seen_features[feature]}'; "
                    "feature names must be unique across files",
                )
            seen_features[feature] = group.path


def _parse_header(path: Path, text: str) -> tuple[dict[str, tuple[str, int]], int]:
    header: dict[str, tuple[str, int]] = {}
    lines = text.splitlines()
    body_line = len(lines) + 1
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            body_line = number
            break
        match = _HEADER_LINE.match(stripped)
        if not match:
            continue
        key, value = match.group(1).lower(), match.group(2)
        if key not in HEADER_KEYS:
            near = difflib.get_close_matches(key, HEADER_KEYS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(HEADER_KEYS)}"
            raise FeatureFileError(path, number, f"unknown header key '{key}'{hint}")
        if key in header:
            raise FeatureFileError(path, number, f"header key '{key}' is given twice")
        header[key] = (value, number)
    missing = [k for k in REQUIRED_KEYS if k not in header]
    if missing:
        raise FeatureFileError(
            path,
            1,
            f"missing header key(s) {', '.join(missing)}; a file starts with a header such as:\n{_EXAMPLE_HEADER}",
        )
    if body_line > len(lines):
        raise FeatureFileError(path, len(lines), "no SQL after the header; expected one SELECT over `events`")
    return header, body_line


def _check_entity(path: Path, header: dict[str, tuple[str, int]], fields: dict[str, str]) -> tuple[str, ...]:
    value, line = header["entity"]
    if value.strip().lower() == "none":
        return ()
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    allowed = [c for c in event_columns(fields) if c != "ts"]
    for name in names:
        if name not in allowed:
            near = difflib.get_close_matches(name, allowed, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; event columns: {', '.join(allowed)}"
            raise FeatureFileError(path, line, f"entity column '{name}' is not an event column{hint}")
    if not names:
        raise FeatureFileError(path, line, "entity is empty; name the column(s), or write 'none'")
    return names


def _duration(path: Path, header: dict[str, tuple[str, int]], key: str) -> int:
    value, line = header[key]
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise FeatureFileError(path, line, f"{key}: {exc}") from exc


def _bind(con, path: Path, text: str, body_line: int, fields: dict[str, str]) -> tuple[list[str], dict]:
    """Parse and bind the whole file (header lines are SQL comments, so DuckDB's line numbers are the file's)."""
    try:
        serialized = parse_tree(con, text)
        if serialized.get("error"):
            _raise_duckdb(path, text, body_line, serialized.get("error_message", "invalid SQL"), fields)
        statements = serialized["statements"]
        if len(statements) != 1:
            raise FeatureFileError(path, body_line, f"expected exactly one SELECT statement, found {len(statements)}")
        _check_point_in_time(path, text, body_line, statements[0])
        con.register("events", empty_events(fields))
        try:
            relation = con.sql(text)
        except duckdb.Error as exc:
            _raise_duckdb(path, text, body_line, str(exc), fields)
        if relation is None:
            raise FeatureFileError(path, body_line, "expected one SELECT statement over `events`")
        columns = relation.columns
    finally:
        con.unregister("events")
    if "event_id" not in columns:
        raise FeatureFileError(
            path,
            body_line,
            "the SELECT returns no `event_id` column; every feature row must say which event it belongs to",
        )
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise FeatureFileError(path, body_line, f"duplicate output column(s): {', '.join(duplicates)}")
    reserved = [c for c in columns if c in ("ts", LABEL)]
    if reserved:
        raise FeatureFileError(path, body_line, f"output column(s) {', '.join(reserved)} are reserved; rename them")
    return columns, statements[0]


def _check_reach(con, path: Path, text: str, body_line: int, statement: dict, horizon_ms: int) -> None:
    """A RANGE window that reaches further back than the header's horizon would see a truncated history
    online (the buffer keeps only the horizon) but the whole history in a backfill: reject it."""
    for node in walk(statement):
        if node.get("class") != "WINDOW" or node.get("start") != "EXPR_PRECEDING_RANGE":
            continue
        expression = node.get("start_expr") or {}
        start, length = expression.get("query_location"), expression.get("query_location_length")
        if start is None or not length or start + length > len(text.encode()):
            continue
        reach_text = text.encode()[start : start + length].decode()
        try:
            value = con.execute(f"SELECT to_microseconds(0) + ({reach_text})").fetchall()[0][0]
        except duckdb.Error:
            continue
        if isinstance(value, timedelta) and value > timedelta(milliseconds=horizon_ms):
            line, column = _line_of(text, start, body_line)
            raise FeatureFileError(
                path,
                line,
                f"the window reaches back {reach_text} ({value}), beyond the header's horizon "
                f"({timedelta(milliseconds=horizon_ms)}); raise the horizon so live and backfill agree",
                column,
            )


def _raise_duckdb(path: Path, text: str, body_line: int, message: str, fields: dict[str, str]):
    """Re-raise DuckDB's message with the file's line and column: from its LINE marker, else the named token."""
    line, column = _locate(text, message, body_line)
    summary = message.split("\n\nLINE")[0].strip()
    if re.search(r'"label"|\blabel\b', summary) and LABEL not in fields:
        summary += "\n(label columns are invisible to feature SQL, so that features cannot leak the label)"
    raise FeatureFileError(path, line, summary, column)


def _locate(text: str, message: str, body_line: int) -> tuple[int, int | None]:
    marker = re.search(r"LINE (\d+): (.*)\n(\s*)\^", message)
    if marker:
        prefix = len(f"LINE {marker.group(1)}: ")
        return int(marker.group(1)), len(marker.group(3)) - prefix + 1
    quoted = re.search(r'"([^"]+)"', message)
    if quoted:
        lines = text.splitlines()
        for number in range(body_line, len(lines) + 1):
            found = re.search(rf"\b{re.escape(quoted.group(1))}\b", lines[number - 1])
            if found:
                return number, found.start() + 1
    return body_line, None


def _check_point_in_time(path: Path, text: str, body_line: int, statement: dict) -> None:
    """Reject windows that can see later events: a frame that ends after the current row, a window with no
    ORDER BY (it spans the whole partition) or a function that reads ahead (`lead`, ...)."""
    for node in walk(statement):
        if node.get("class") != "WINDOW":
            continue
        function = str(node.get("function_name", "")).lower()
        problem = None
        if function in _FUTURE_FUNCTIONS:
            problem = f"{function}() reads rows after the current one"
        elif not node.get("orders"):
            problem = f"window {function}() has no ORDER BY, so it spans later events of its partition"
        elif node.get("end") not in _SAFE_FRAME_ENDS:
            problem = f"window {function}() has a frame that ends after the current row ({node.get('end')})"
        if problem:
            line, column = _line_of(text, node.get("query_location"), body_line)
            raise FeatureFileError(
                path,
                line,
                f"{problem}; features may only look at events up to the event's own ts "
                "(ORDER BY ts ... ending at CURRENT ROW)",
                column,
            )


def _line_of(text: str, offset: int | None, body_line: int) -> tuple[int, int | None]:
    if offset is None or offset >= len(text):
        return body_line, None
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1
