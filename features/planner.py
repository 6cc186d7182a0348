"""The planner: how each feature file is computed, chosen and verified when the file is loaded.

A file runs one of two plans:

- `segments`: its windows read off an index of the history sorted by entity and time (`features.segments`),
  for files of windowed aggregates over their entity (`features.sql_analysis`);
- `sql`: its own SQL over the buffered history of the batch's entities, for everything else.

A segment plan is used only if it gives the file's own results on a synthetic sample with ties, NULLs and
gaps around the horizon; the file's SQL stays the definition (the backfill always runs it). The choice is
logged at load; `python -m features.plan DIR` prints it for every file of a folder.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import duckdb
import pyarrow as pa

from features.schema import empty_events, to_arrow
from features.segments import OutOfRange, SegmentPlan, WindowIndex, segment_features, segment_plan
from features.spec import FeatureGroup
from features.sql_analysis import parse_tree, windowed_select

SEGMENTS = "segments"
SQL = "sql"
log = logging.getLogger("eddy.features")


@dataclass(frozen=True)
class Choice:
    """The plan a file gets (`SEGMENTS` or `SQL`), why, and the segment plan itself when it is one."""

    plan: str
    reason: str
    segments: SegmentPlan | None = None


def plan_group(group: FeatureGroup, fields: dict[str, str]) -> FeatureGroup:
    """The group with the plan the planner chose for it, logged."""
    choice = choose(group, fields)
    log.info("feature file %s: plan %s (%s)", group.path, choice.plan, choice.reason)
    return replace(group, segments=choice.segments)


def choose(group: FeatureGroup, fields: dict[str, str]) -> Choice:
    """Which plan `group` (a validated file) runs, and why."""
    con = duckdb.connect(config={"enable_external_access": False})
    try:
        con.register("events", empty_events(fields))
        try:
            columns = con.sql(group.sql).columns
        finally:
            con.unregister("events")
        statement = parse_tree(con, group.sql)["statements"][0]
        select = windowed_select(con, group.sql, statement, columns, group.entity)
        if select is None:
            return Choice(SQL, "not only aggregates over RANGE windows of its entity ordered by ts")
        plan = segment_plan(select, columns, group.entity, fields)
        if plan is None:
            return Choice(SQL, "an aggregate or column type the segment plan does not compute (e.g. a BIGINT sum)")

        def run(sample: pa.Table) -> pa.Table:
            index = WindowIndex(plan.entity, dict(plan.columns))
            features = segment_features(con, plan, index, sample, index.insert(sample))
            return pa.table({"event_id": sample["event_id"], **features})

        if not reproduces(con, group.sql, fields, group.horizon_ms, run, (duckdb.Error, OutOfRange)):
            return Choice(SQL, "the segment plan did not reproduce the file's SQL on the load-time sample")
    finally:
        con.close()
    computed = len(plan.feature_names) - len(plan.outputs)
    detail = f"{len(plan.windows)} windows" + (f", {computed} computed items run by DuckDB" if computed else "")
    return Choice(SEGMENTS, detail, plan)


def reproduces(
    con: duckdb.DuckDBPyConnection,
    text: str,
    fields: dict[str, str],
    horizon_ms: int,
    plan: Callable[[pa.Table], pa.Table],
    errors: tuple[type[Exception], ...] = (duckdb.Error,),
) -> bool:
    """Whether a plan gives the file's own SQL results on a synthetic sample with ties, NULLs and gaps around
    the horizon. `plan(sample)` returns `event_id` and the features; any of `errors` from either side means no."""
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
        "text": lambda: rng.choice(["free text", "Free  TEXT, again!", "é\u200fو", ""]),
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
