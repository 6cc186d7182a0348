"""The segment plan: windowed aggregates read off an index of the history sorted by entity and time.

It serves the files the batch join (`features.joinplan`) serves, aggregates over `RANGE` windows partitioned
by the header's entity and ordered by `ts`, with far less work. A `WindowIndex` keeps the buffered events
sorted by (entity, ts, release order), so the rows of an event's window are one contiguous run of it, a
*segment*, found by two binary searches; numpy then reduces every segment of a batch in one call per
aggregate. There is no join and no hash table, and DuckDB's fixed cost per statement (a few milliseconds)
is paid only for select items that are more than a bare window.

A segment holds its window's rows in canonical order however the stream was cut into micro-batches, and a
reduction over the same values in the same order gives the same bits: features are batch-independent by
construction, which the batch join needed fixed-point sums for. The plan is used only if it reproduces
the plain SQL on a synthetic sample when the file is loaded; the plain SQL stays the definition.

>>> import duckdb, pyarrow as pa
>>> from features.schema import to_arrow
>>> plan = SegmentPlan(("user",), (("amount", "double"),), (Window("sum", "amount", 60_000_000, 0),),
...                    (("total_1m", 0),), None, (), ("total_1m",))
>>> index = WindowIndex(plan.entity, dict(plan.columns))
>>> batch = to_arrow([{"event_id": f"e{i}", "ts": i * 30_000, "user": "a", "amount": 1.0 + i}
...                   for i in range(4)], {"user": "string", "amount": "double"})
>>> rows = index.insert(batch)
>>> segment_features(duckdb.connect(), plan, index, batch, rows)["total_1m"].to_pylist()
[1.0, 3.0, 6.0, 9.0]
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.joinplan import WindowedSelect, reproduces
from features.schema import TS_TYPE

_FUNCTIONS = {
    "count": "count",
    "count_star": "count",
    "sum": "sum",
    "avg": "avg",
    "mean": "avg",
    "min": "min",
    "max": "max",
    "stddev": "stddev_samp",
    "stddev_samp": "stddev_samp",
    "stddev_pop": "stddev_pop",
    "variance": "var_samp",
    "var_samp": "var_samp",
    "var_pop": "var_pop",
}
# Which column kinds each aggregate takes here; anything else keeps the batch join, whose result types are
# DuckDB's own (a sum of BIGINT is a HUGEINT, for one).
_KINDS = {
    "count": {"double", "bigint", "string", "boolean", "ts"},
    "sum": {"double"},
    "avg": {"double", "bigint"},
    "min": {"double", "bigint", "ts"},
    "max": {"double", "bigint", "ts"},
    "stddev_samp": {"double", "bigint"},
    "stddev_pop": {"double", "bigint"},
    "var_samp": {"double", "bigint"},
    "var_pop": {"double", "bigint"},
}
# A key is one int64: the entity's code in the high bits, the ts in milliseconds since the index's base in the
# low 36 (events up to ~2 years apart; offsets -1 and _TS_SPAN stay free for searches that fall outside).
_TS_BITS = 36
_TS_SPAN = 2**_TS_BITS - 1
_MAX_CODES = 2 ** (62 - _TS_BITS)
_MIN_MS = -(2**62)
_BARE = re.compile(r"\(__agg\.__w(\d+)\)")
_WINDOW_REF = re.compile(r"__agg\.__w(\d+)")
_STAR_FREE = re.compile(r"count\s*\(\s*\*\s*\)", re.IGNORECASE)


class OutOfRange(ValueError):
    """A timestamp the index cannot key exactly; the group runs its batch join instead."""


@dataclass(frozen=True)
class Window:
    """One window of a feature file: an aggregate of a column (None: `count(*)`) over [ts - lo, ts - hi]."""

    function: str
    column: str | None
    lo_us: int
    hi_us: int


@dataclass(frozen=True)
class SegmentPlan:
    """How a feature group is computed from a `WindowIndex`: plain data, so it pickles with the catalog.

    `outputs` names the features that are a bare window (feature, window number); `residual_sql` computes
    the others with DuckDB from `__batch`: the batch with the windows `residual_windows` as columns `__wN`.
    """

    entity: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    windows: tuple[Window, ...]
    outputs: tuple[tuple[str, int], ...]
    residual_sql: str | None
    residual_windows: tuple[int, ...]
    feature_names: tuple[str, ...]
    residual_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rows:
    """A batch as inserted into an index: each row's entity code and ts in microseconds, and the order that
    sorts them by (code, ts), in which the index is searched (binary searches in key order hit the cache)."""

    codes: np.ndarray
    ts_us: np.ndarray
    order: np.ndarray


def segment_plan(
    con: duckdb.DuckDBPyConnection,
    text: str,
    select: WindowedSelect | None,
    columns: list[str],
    entity: tuple[str, ...],
    horizon_ms: int,
    fields: dict[str, str],
) -> SegmentPlan | None:
    """The segment plan of a feature file, or None when its aggregates are not all ones it computes, or it
    does not reproduce the plain SQL on the load-time sample."""
    if select is None:
        return None
    kinds = {**fields, "ts": "ts", "event_id": "string"}
    windows, needed = [], {}
    for window in select.windows:
        function = _FUNCTIONS.get(window["function"])
        column = window["column"]
        kind = kinds.get(column) if column else None
        if function is None or (column is not None and kind not in _KINDS[function]):
            return None
        if column is not None and column != "ts":
            needed[column] = kind
        windows.append(Window(function, column, window["lo_us"], window["hi_us"]))
    names = [name for name in columns if name != "event_id"]
    outputs, residual = [], []
    for name, item in zip(columns, select.items, strict=True):
        if name == "event_id":
            continue
        bare = _BARE.fullmatch(item.rsplit(" AS ", 1)[0])
        if bare:
            outputs.append((name, int(bare.group(1))))
        else:
            residual.append(item)
    residual_sql, residual_windows, residual_columns = None, (), ()
    if residual:
        residual_windows = tuple(sorted({int(n) for item in residual for n in _WINDOW_REF.findall(item)}))
        alias = _quote(select.alias)
        items = [_WINDOW_REF.sub(lambda m: f'{alias}."__w{m.group(1)}"', item) for item in residual]
        residual_sql = f"SELECT {', '.join(items)}\nFROM __batch AS {alias}"
        residual_columns = _mentioned(residual, ["event_id", "ts", *fields])
    plan = SegmentPlan(
        entity,
        tuple(sorted(needed.items())),
        tuple(windows),
        tuple(outputs),
        residual_sql,
        residual_windows,
        tuple(names),
        residual_columns,
    )

    def run(sample: pa.Table) -> pa.Table:
        index = WindowIndex(plan.entity, dict(plan.columns))
        features = segment_features(con, plan, index, sample, index.insert(sample))
        return pa.table({"event_id": sample["event_id"], **features})

    return plan if reproduces(con, text, fields, horizon_ms, run, (duckdb.Error, OutOfRange)) else None


def segment_features(
    con: duckdb.DuckDBPyConnection,
    plan: SegmentPlan,
    index: WindowIndex,
    batch: pa.Table,
    rows: Rows,
    statements: dict[str, duckdb.DuckDBPyRelation] | None = None,
) -> dict[str, pa.Array]:
    """The group's features for `batch`, already inserted into `index` (as `rows`), in batch order.

    `statements`, kept by the caller for `con` alone, holds the computed items' relations to run again at
    every batch: DuckDB binds a relation anew each time it runs, so it reads the batch registered now, and
    building it once and leaving the registration to be replaced saves ~0.4 ms of a ~1.4 ms statement."""
    aggregates = index.aggregate(rows, plan.windows)
    out = {name: aggregates[number] for name, number in plan.outputs}
    if plan.residual_sql is not None:
        # One relation, not the batch joined to the aggregates: each registration costs DuckDB ~0.5 ms.
        # Only the columns it reads: DuckDB's cost to register and scan a relation grows with its width.
        relation = batch.select(plan.residual_columns)
        for n in plan.residual_windows:
            relation = relation.append_column(f"__w{n}", aggregates[n])
        con.register("__batch", relation)
        if statements is None:
            try:
                result = con.sql(_parsed(plan.residual_sql)).to_arrow_table()
            finally:
                con.unregister("__batch")
        else:
            query = statements.get(plan.residual_sql)
            if query is None:
                query = statements[plan.residual_sql] = con.sql(_parsed(plan.residual_sql))
            result = query.to_arrow_table()
        out.update({name: result[name] for name in result.column_names})
    return {name: out[name] for name in plan.feature_names}


@functools.lru_cache(maxsize=256)
def _parsed(sql: str) -> duckdb.Statement:
    """The statement parsed once: DuckDB parses SQL text again at every call (~0.4 ms of a ~1.6 ms statement
    over a 100-row batch), and a parsed statement binds on any connection."""
    return duckdb.extract_statements(sql)[0]


class WindowIndex:
    """Events sorted by (entity, ts, release order), with the columns that windows read.

    Not state: it is rebuilt from the event buffer whenever it is missing (after a restore, or a change of
    definitions). Eviction only raises a floor below which windows do not reach; rows are dropped in bulk
    once the index has grown by a quarter, so eviction costs nothing per batch.
    """

    def __init__(self, entity: tuple[str, ...], columns: dict[str, str]):
        self.entity = tuple(entity)
        self.columns = dict(columns)
        self._codes: dict = {}
        self._keys = np.empty(0, np.int64)
        self._values = {name: _empty(kind) for name, kind in self.columns.items()}
        self._valid: dict[str, np.ndarray | None] = dict.fromkeys(self.columns)
        self._base: int | None = None
        self._floor = _MIN_MS
        self._compacted_size = 0

    def __len__(self) -> int:
        return len(self._keys)

    def covers(self, entity: tuple[str, ...], columns: dict[str, str]) -> bool:
        return tuple(entity) == self.entity and all(self.columns.get(k) == v for k, v in columns.items())

    def insert(self, table: pa.Table) -> Rows:
        """Add events in canonical order; rows equal in entity and ts stay in the order given."""
        ts_us, before = _ts_us(table), len(self)
        ts = ts_us // 1000
        if ts.size and (ts * 1000 != ts_us).any():
            raise OutOfRange("a ts with a fraction of a millisecond")
        codes = self._encode(table)
        if ts.size:
            self._fit(int(ts.min()), int(ts.max()))
        keys = (codes << _TS_BITS) + (ts - (self._base or 0))
        # np.insert places rows bound for one position in the order given: give them in key order (stable,
        # so equal keys keep the canonical order).
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        at = np.searchsorted(self._keys, keys, side="right")
        self._keys = np.insert(self._keys, at, keys)
        for name, kind in self.columns.items():
            column = table[name]
            if self._values[name] is not None:
                zero = 0.0 if kind == "double" else 0
                values = _numpy(pc.fill_null(column, zero))[order]
                self._values[name] = np.insert(self._values[name], at, values)
            valid = self._valid[name]
            if valid is not None or column.null_count:
                if valid is None:
                    valid = np.ones(before, bool)
                self._valid[name] = np.insert(valid, at, _numpy(column.is_valid())[order])
        return Rows(codes, ts_us, order)

    def evict(self, before_ms: int) -> None:
        """Windows no longer see events with ts < `before_ms`, as if they had been removed."""
        self._floor = max(self._floor, before_ms)
        if len(self) > self._compacted_size * 1.25 + 4096:
            self._compact()

    def aggregate(self, rows: Rows, windows: tuple[Window, ...]) -> list[pa.Array]:
        """Each window's aggregate for every row of `rows` (inserted already), in row order."""
        searches: dict[tuple[str, int], np.ndarray] = {}
        segments: dict[tuple[int, int], _Segments] = {}
        cache: dict = {}
        out = []
        for window in windows:
            bounds = (window.lo_us, window.hi_us)
            if bounds not in segments:
                lo = self._search(rows, "lo", window.lo_us, searches)
                hi = self._search(rows, "hi", window.hi_us, searches)
                segments[bounds] = _Segments(lo, np.maximum(hi, lo), len(self))
            out.append(self._aggregate(window, segments[bounds], cache))
        return out

    # -- internals --------------------------------------------------------------------------------------

    def _encode(self, table: pa.Table) -> np.ndarray:
        if len(self.entity) == 1:
            values = table[self.entity[0]].to_pylist()
        else:
            values = list(zip(*(table[name].to_pylist() for name in self.entity), strict=True))
        known = self._codes
        codes = list(map(known.get, values, itertools.repeat(-1)))
        for i, code in enumerate(codes):
            if code < 0:
                codes[i] = known.setdefault(values[i], len(known))
        if len(known) >= _MAX_CODES:
            self._compact()
            if len(self._codes) >= _MAX_CODES:
                raise OutOfRange(f"more than {_MAX_CODES} distinct entities within the horizon")
            return self._encode(table)
        return np.array(codes, np.int64)

    def _fit(self, low: int, high: int) -> None:
        """Choose or move the base that keys count milliseconds from, so that [low, high] fits."""
        if self._base is not None and low >= self._base and high - self._base < _TS_SPAN:
            return
        ts = self._ts_ms()
        if len(ts):
            low = min(low, int(ts.min()))
            high = max(high, int(ts.max()))
        if high - low >= _TS_SPAN:
            raise OutOfRange(f"events {high - low} ms apart; the index spans {_TS_SPAN} ms")
        self._base = low
        self._keys = ((self._keys >> _TS_BITS) << _TS_BITS) + (ts - low)

    def _ts_ms(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The ts (epoch ms) of every row, or of the rows at `positions`: the low bits of its key + the base."""
        keys = self._keys if positions is None else self._keys[positions]
        return (keys & _TS_SPAN) + (self._base or 0)

    def _search(self, rows: Rows, end: str, length_us: int, cache: dict) -> np.ndarray:
        """Index position where each row's window starts (`lo`: first ts >= ts - length) or ends (`hi`:
        after the last ts <= ts - length), within the row's entity."""
        if (end, length_us) not in cache:
            if end == "lo":
                bound = np.maximum(-((length_us - rows.ts_us) // 1000), self._floor)
            else:
                bound = (rows.ts_us - length_us) // 1000
            offset = np.clip(bound - (self._base or 0), -1, _TS_SPAN)
            keys = ((rows.codes << _TS_BITS) + offset)[rows.order]
            found = np.empty(len(keys), np.int64)
            found[rows.order] = np.searchsorted(self._keys, keys, side="left" if end == "lo" else "right")
            cache[end, length_us] = found
        return cache[end, length_us]

    def _aggregate(self, window: Window, seg: _Segments, cache: dict) -> pa.Array:
        function, column = window.function, window.column
        key = (window.lo_us, window.hi_us, column)
        if column is None or column == "ts":
            count, valid = seg.lengths, None
        else:
            valid = self._valid[column]
            if (key, "count") not in cache:
                counted = None if valid is None else self._rows(column, "valid", seg, cache)
                cache[key, "count"] = seg.lengths if counted is None else seg.reduce_runs(np.add, counted, 0)
            count = cache[key, "count"]
        if function == "count":
            return pa.array(count, pa.int64())
        empty = count == 0
        kind = self.columns.get(column, "ts")
        if function in ("min", "max"):
            if column == "ts":
                # Within an entity the index is sorted by ts: a window's first row holds its min, its last its max.
                ends = seg.lo if function == "min" else seg.lo + seg.lengths - 1
                result = self._ts_ms(np.clip(ends, 0, len(self) - 1)) * 1000
            else:
                ufunc = np.maximum if function == "max" else np.minimum
                result = seg.reduce_runs(ufunc, self._rows(column, function, seg, cache), _sentinel(kind, function))
            arrow_type = TS_TYPE if kind == "ts" else (pa.float64() if kind == "double" else pa.int64())
            return pa.array(result, arrow_type, mask=empty)
        if (key, "sum") not in cache:
            cache[key, "sum"] = seg.reduce_runs(np.add, self._rows(column, "float", seg, cache), 0.0)
        total = cache[key, "sum"]
        if function == "sum":
            return pa.array(total, pa.float64(), mask=empty)
        mean = total / np.maximum(count, 1)
        if function == "avg":
            return pa.array(mean, pa.float64(), mask=empty)
        if (key, "squares") not in cache:
            # The one aggregate that needs each row's own term: the deviations from its window's mean.
            deviations = seg.gather(self._rows(column, "float", seg, cache))
            deviations -= np.repeat(mean, seg.lengths)
            if valid is not None:
                deviations[~valid[seg.positions]] = 0.0
            with np.errstate(over="ignore"):  # deviations past ~1e154 square to inf, as DuckDB's do
                cache[key, "squares"] = seg.reduce(np.add, deviations * deviations, 0.0)
        divisor = count if function.endswith("_pop") else count - 1
        result = cache[key, "squares"] / np.maximum(divisor, 1)
        if function.startswith("stddev"):
            result = np.sqrt(result)
        return pa.array(result, pa.float64(), mask=divisor <= 0)

    def _rows(self, column: str, form: str, seg: _Segments, cache: dict) -> np.ndarray:
        """A column as the reductions over `seg` read it, made once per batch: `valid` (0/1 per row),
        `float` (NULL as 0), or for `min`/`max` NULL as the value that never wins. Of the whole index, or
        of the segments' rows only when `seg` gathers them."""
        where = (id(seg),) if seg.gathered else ()
        if (column, form, *where) not in cache:
            values, valid = self._values[column], self._valid[column]
            if seg.gathered:
                values = None if values is None else values[seg.positions]
                valid = None if valid is None else valid[seg.positions]
            if form == "valid":
                rows = valid.astype(np.int64)
            elif form == "float":
                rows = values.astype(np.float64, copy=False)
            else:
                rows = values if valid is None else np.where(valid, values, _sentinel(self.columns[column], form))
            cache[column, form, *where] = rows
        return cache[column, form, *where]

    def _compact(self) -> None:
        keep = self._ts_ms() >= self._floor
        self._keys = self._keys[keep]
        for name in self.columns:
            if self._values[name] is not None:
                self._values[name] = self._values[name][keep]
            if self._valid[name] is not None:
                self._valid[name] = self._valid[name][keep]
        if len(self._codes) > 2 * len(self) + 4096:
            # Forget entities with no events left; renumbering in the old order keeps the keys sorted.
            codes = self._keys >> _TS_BITS
            live = np.unique(codes)
            self._keys = (np.searchsorted(live, codes) << _TS_BITS) + (self._keys & _TS_SPAN)
            alive = set(live.tolist())
            kept = [value for value, code in self._codes.items() if code in alive]
            self._codes = {value: code for code, value in enumerate(kept)}
        self._compacted_size = len(self)


class _Segments:
    """The window of each batch row as a run [lo, hi) of the index, and those runs gathered end to end.

    When the runs hold fewer rows than a quarter of the index (a small batch, a long history), the reductions read
    the runs' rows gathered; otherwise they reduce the runs in place, which passes over the index once. Both
    add each run's values in index order, so they give the same bits."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, index_size: int):
        self.lo = lo
        self.lengths = hi - lo
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.nonempty = self.lengths > 0
        total = int(self.starts[-1] + self.lengths[-1]) if len(lo) else 0
        self.gathered = 4 * total < index_size
        self._positions: np.ndarray | None = None
        self._runs: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def positions(self) -> np.ndarray:
        """Index positions of every segment's rows, segment after segment."""
        if self._positions is None:
            positions = np.repeat(self.lo - self.starts, self.lengths)
            positions += np.arange(len(positions))
            self._positions = positions
        return self._positions

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Every segment's rows, segment after segment, as a new array, from rows made by `_rows` for it."""
        return rows.copy() if self.gathered else rows[self.positions]

    def reduce_runs(self, ufunc: np.ufunc, rows: np.ndarray, empty) -> np.ndarray:
        """`ufunc` over each segment's rows, from rows made by `_rows` for these segments.

        Gathered: one `reduceat` at the segments' starts. In place: the non-empty runs, sorted by start, go to
        one `reduceat` as [lo, hi) pairs of the whole index; its results between pairs are thrown away: each is
        one element where runs overlap, else a stretch no other run covers, so they cost at most one pass over
        the index. Each run is reduced in index order, as `reduce` would.
        """
        if self.gathered:
            return self.reduce(ufunc, rows, empty)
        if self._runs is None:
            nonempty = np.flatnonzero(self.nonempty)
            nonempty = nonempty[np.argsort(self.lo[nonempty], kind="stable")]
            bounds = np.empty(2 * len(nonempty), np.int64)
            bounds[0::2] = self.lo[nonempty]
            bounds[1::2] = self.lo[nonempty] + self.lengths[nonempty]
            self._runs = nonempty, bounds
        nonempty, bounds = self._runs
        out = np.full(len(self.lengths), empty, dtype=rows.dtype)
        if nonempty.size:
            if bounds.max() >= len(rows):
                # reduceat takes no index past the end; a spare last element makes every hi a valid index.
                rows = np.concatenate([rows, rows[-1:]])
            out[nonempty] = ufunc.reduceat(rows, bounds)[0::2]
        return out

    def reduce(self, ufunc: np.ufunc, gathered: np.ndarray, empty) -> np.ndarray:
        """`ufunc` over each segment of `gathered` in order; `empty` for empty segments."""
        out = np.full(len(self.lengths), empty, dtype=gathered.dtype)
        firsts = self.starts[self.nonempty]
        if firsts.size:
            out[self.nonempty] = ufunc.reduceat(gathered, firsts)
        return out


def _mentioned(sql: list[str], columns: list[str]) -> tuple[str, ...]:
    """The `columns` that the SQL fragments may read: every one named as a word or quoted identifier (all
    of them if a `*` could expand to them). A column named only inside a string literal is kept too."""
    text = " ".join(sql)
    if "*" in _STAR_FREE.sub("", text):
        return tuple(columns)
    words = {word.lower() for word in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", text)}
    quoted = {name.replace('""', '"').lower() for name in re.findall(r'"((?:[^"]|"")*)"', text)}
    return tuple(column for column in columns if column.lower() in words | quoted)


def _sentinel(kind: str, function: str) -> float | int:
    """The value a NULL takes in `function` ("min" or "max") so that it never wins."""
    if kind == "double":
        return -np.inf if function == "max" else np.inf
    limits = np.iinfo(np.int64)
    return limits.min if function == "max" else limits.max


def _empty(kind: str) -> np.ndarray | None:
    return {"double": np.empty(0, np.float64), "bigint": np.empty(0, np.int64)}.get(kind)


def _numpy(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return array.to_numpy() if isinstance(array, pa.ChunkedArray) else array.to_numpy(zero_copy_only=False)


def _ts_us(table: pa.Table) -> np.ndarray:
    return _numpy(table["ts"].cast(TS_TYPE).cast(pa.int64()))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
