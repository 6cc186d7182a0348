"""The segment plan: windowed aggregates read off an index of the history sorted by entity and time.

It serves files of aggregates over `RANGE` windows partitioned by the header's entity and ordered by `ts`
(`features.sql_analysis` recognises them). A `WindowIndex` keeps the buffered events
sorted by (entity, ts, release order), so the rows of an event's window, its *segment*, are one contiguous
piece of each of the index's few sorted runs, found by binary searches; numpy then reduces every segment of
a batch in one call per aggregate. There is no join and no hash table, and DuckDB's fixed cost per
statement (a few milliseconds) is paid only for select items that are more than a bare window.

A segment holds its window's rows in canonical order however the stream was cut into micro-batches, and a
reduction over the same values in the same order gives the same bits: features are batch-independent by
construction. The planner (`features.planner`) uses a plan only if it reproduces the plain SQL on a synthetic
sample when the file is loaded; the plain SQL stays the definition.

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
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.schema import TS_TYPE
from features.sql_analysis import WindowedSelect

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
# Which column kinds each aggregate takes here; anything else runs the file's SQL, whose result types are
# DuckDB's own (a sum of BIGINT is a HUGEINT, for one).
_KINDS = {
    "count": {"double", "bigint", "string", "boolean", "text", "ts"},
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
# A run merges into the one before it while that one holds at most this many times its rows: runs then
# shrink by more than this factor from oldest to newest (few runs to search), and a row is copied about
# log2(rows held) times over its life (more at a larger ratio, with fewer runs).
_MERGE_RATIO = 2
# Segments that hold this share of the index or more are reduced in place: one pass over the index, which
# costs less than gathering their rows (and, with several runs, than merging them into one first).
_IN_PLACE_SHARE = 0.25
# Long windows are read as whole tiles + two edges (see `_Tiles`): a window of length L is cut into tiles of
# L // _TILES ms aligned to epoch 0, whose partial aggregates are kept, so a window costs ~_TILES tiles and the
# rows of two tiles however many rows it holds. Only windows that hold _TILE_MIN_ROWS rows or more, and span
# two whole tiles or more, are read so: fewer rows cost less to reduce than tiles to look up.
_TILES = 32
_TILE_MIN_ROWS = 1024
# How `WindowIndex._reduced` reduces each statistic: ufunc, the rows' form (see `_rows`), the empty value
# (None: the sentinel that never wins).
_STATS = {
    "count": (np.add, "valid", 0),
    "sum": (np.add, "float", 0.0),
    "max": (np.maximum, "max", None),
    "min": (np.minimum, "min", None),
}
_BARE = re.compile(r"\(__agg\.__w(\d+)\)")
_WINDOW_REF = re.compile(r"__agg\.__w(\d+)")
_STAR_FREE = re.compile(r"count\s*\(\s*\*\s*\)", re.IGNORECASE)


class OutOfRange(ValueError):
    """A timestamp the index cannot key exactly; the group runs its SQL as written instead."""


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
    select: WindowedSelect, columns: list[str], entity: tuple[str, ...], fields: dict[str, str]
) -> SegmentPlan | None:
    """The segment plan of a feature file read as `select`, or None when its aggregates are not all ones it
    computes. Unverified: the planner checks it against the file's SQL before using it."""
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
    return SegmentPlan(
        entity,
        tuple(sorted(needed.items())),
        tuple(windows),
        tuple(outputs),
        residual_sql,
        residual_windows,
        tuple(names),
        residual_columns,
    )


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
    building it once and leaving the registration to be replaced saves building it at every batch."""
    aggregates = index.aggregate(rows, plan.windows)
    out = {name: aggregates[number] for name, number in plan.outputs}
    if plan.residual_sql is not None:
        # One relation, not the batch joined to the aggregates: DuckDB pays a fixed cost for each registration.
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
    """The statement parsed once: DuckDB parses SQL text again at every call (a
    fair part of a statement over a small batch), and a parsed statement binds on any connection."""
    return duckdb.extract_statements(sql)[0]


class WindowIndex:
    """Events sorted by (entity, ts, release order), with the columns that windows read, as a few sorted runs.

    Layout: one buffer per column (the keys, each value column, its validity once it has held a NULL) holds
    the *runs* end to end, oldest first. A run holds the rows of consecutive insertions, sorted by key with
    equal keys in release order. `insert` sorts a batch and appends it as the newest run, then merges each
    run into the one before it while that one holds at most `_MERGE_RATIO` times its rows. Sizes thus fall
    by more than that ratio from run to run: O(log n) runs, a row copied O(log n) times over its life, and a
    batch costs O(batch * log n) amortised however much history is held. A merge rewrites only the two runs
    it joins, at the end of the buffers; the rare one that cascades into the oldest run copies the index.

    A window's rows are one piece of each run, one binary search per run away. Windows that cover a quarter
    of the index or more are reduced in place, over one run: `aggregate` first merges the runs, a pass over
    the index such a reduction makes anyway, and while batches are that large `insert` merges each batch
    into the one run at once.

    Canonical order: the runs hold consecutive stretches of the release order, oldest first, so a window's
    pieces taken oldest run first are in (entity, ts, release order) whenever no run holds a ts earlier than
    the latest of the runs before it. That always holds in event-time mode, where rows are released in
    non-decreasing ts. In arrival mode a late arrival breaks it; then each segment's gathered rows are sorted
    by key, stably, which keeps rows of equal key in run order, i.e. release order. Either way each window
    reaches its reduction as the one sequence that a single sorted array of the same rows would hold.

    Long windows: a window of length L that holds `_TILE_MIN_ROWS` rows or more is read as the tiles of
    L / `_TILES` ms (aligned to epoch 0, so they depend on event time only) that lie whole in it and end at or
    before the row's ts, whose partial aggregates are kept (`_Tiles`), plus the rows of its two edges: its
    cost is that of ~`_TILES` tiles and two tiles' rows, however many rows it holds. A tile's partials are
    computed from all its rows in canonical order when first read; in event time no row lands in a tile that
    has been read (it ends at or before a released row's ts), so they are the same bits however the stream
    was cut; a row that does (arrival order) marks it stale. Sums add tile by tile, so their bits differ
    from a row-by-row sum's; variances combine each tile's squares about its own mean (Chan et al.).

    Not state: it is rebuilt from the event buffer whenever it is missing (after a restore, or a change of
    definitions). Eviction only raises a floor below which windows do not reach; rows are dropped in bulk
    once the index has grown by a quarter, so eviction costs O(1) per row amortised.
    """

    def __init__(self, entity: tuple[str, ...], columns: dict[str, str]):
        self.entity = tuple(entity)
        self.columns = dict(columns)
        self._codes: dict = {}
        self._size = 0
        self._keys = np.empty(0, np.int64)
        self._values = {name: _empty(kind) for name, kind in self.columns.items()}
        self._valid: dict[str, np.ndarray | None] = dict.fromkeys(self.columns)
        self._runs: list[int] = []  # where each run starts, oldest first
        # For each run, bounds on its ts (epoch ms): none before the first, none after the second.
        self._spans: list[tuple[int, int]] = []
        self._base: int | None = None
        self._floor = _MIN_MS
        self._compacted_size = 0
        self._in_place = False  # whether windows were reduced in place since the last insert
        self._spare: np.ndarray | None = None  # see _scratch
        self._tiles: dict[tuple[int, str], _Tiles] = {}  # partial aggregates by (tile length in ms, column)

    def __len__(self) -> int:
        return self._size

    def covers(self, entity: tuple[str, ...], columns: dict[str, str]) -> bool:
        return tuple(entity) == self.entity and all(self.columns.get(k) == v for k, v in columns.items())

    def insert(self, table: pa.Table) -> Rows:
        """Add events in canonical order; rows equal in entity and ts stay in the order given."""
        ts_us = _ts_us(table)
        ts = ts_us // 1000
        if ts.size and (ts * 1000 != ts_us).any():
            raise OutOfRange("a ts with a fraction of a millisecond")
        codes = self._encode(table)
        if ts.size:
            self._fit(int(ts.min()), int(ts.max()))
        keys = (codes << _TS_BITS) + (ts - (self._base or 0))
        order = np.argsort(keys, kind="stable")  # stable: equal keys keep the canonical order
        if ts.size:
            for (length, _), tiles in self._tiles.items():
                tiles.invalidate((codes << _TS_BITS) + ts // length - tiles.origin)
            self._append(keys[order], table, order, (int(ts.min()), int(ts.max())))
            if self._in_place:
                self._merge_all()
            else:
                self._settle()
        self._in_place = False
        return Rows(codes, ts_us, order)

    def evict(self, before_ms: int) -> None:
        """Windows no longer see events with ts < `before_ms`, as if they had been removed."""
        self._floor = max(self._floor, before_ms)
        if len(self) > self._compacted_size * 1.25 + 4096:
            self._compact()

    def aggregate(self, rows: Rows, windows: tuple[Window, ...]) -> list[pa.Array]:
        """Each window's aggregate for every row of `rows` (inserted already), in row order.

        Segments that hold a quarter of the index or more are reduced in place, once the runs are merged into
        one; the next batch is likely as large, so `insert` then merges it into that run straight away, which
        spares searching the runs twice."""
        segments = self._segments(rows, windows)
        in_place = any(seg.reduced.total >= _IN_PLACE_SHARE * len(self) for seg in segments.values())
        if in_place and len(self._runs) > 1:
            self._merge_all()
            segments = self._segments(rows, windows)
        self._in_place |= in_place
        cache: dict = {}
        return [self._aggregate(window, segments[window.lo_us, window.hi_us], cache) for window in windows]

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
        if self._spans:
            low = min(low, *(span[0] for span in self._spans))
            high = max(high, *(span[1] for span in self._spans))
        if high - low >= _TS_SPAN:
            raise OutOfRange(f"events {high - low} ms apart; the index spans {_TS_SPAN} ms")
        keys = self._keys[: len(self)]
        keys += (self._base or low) - low  # the same shift for every key: each run stays sorted
        self._base = low
        self._tiles.clear()  # their keys count tiles from the old base

    def _ts_ms(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The ts (epoch ms) of every row, or of the rows at `positions`: the low bits of its key + the base."""
        keys = self._keys[: len(self)] if positions is None else self._keys[positions]
        return (keys & _TS_SPAN) + (self._base or 0)

    def _column(self, store: dict[str, np.ndarray | None], name: str) -> np.ndarray | None:
        """The rows held of a value or validity buffer (None: the column has no values, or no NULLs)."""
        array = store[name]
        return None if array is None else array[: len(self)]

    def _segments(self, rows: Rows, windows: tuple[Window, ...]) -> dict[tuple[int, int], _Segments]:
        """The segments of each window (by bounds) over the runs as they are now."""
        lows, highs = sorted({w.lo_us for w in windows}), sorted({w.hi_us for w in windows})
        found = self._search(rows, lows, highs)
        starts = dict(zip(lows, found[: len(lows)], strict=True))
        stops = dict(zip(highs, found[len(lows) :], strict=True))
        unordered = len(self._runs) > 1 and not self._in_ts_order()
        keys = self._keys[: len(self)] if unordered else None
        bounds = dict.fromkeys((w.lo_us, w.hi_us) for w in windows)
        segments = {(lo, hi): _Segments(starts[lo], stops[hi], len(self), keys) for lo, hi in bounds}
        shared: dict = {}
        for (lo, hi), seg in segments.items():
            seg.tiled = self._tiled(rows, lo, hi, seg, keys, shared)
        return segments

    def _tiled(
        self, rows: Rows, lo_us: int, hi_us: int, seg: _Segments, keys: np.ndarray | None, shared: dict
    ) -> _Tiled | None:
        """The window [ts - lo_us, ts - hi_us] of each row as its whole tiles and two edges, or None when no
        row's window is read so (see `_Tiles`).

        A whole tile is one that lies in the window and ends at or before the row's ts: in event time every
        row before the row's ts is held when its window is computed, so the tile's partials, computed from all
        its rows whenever first needed, are the same bits however the stream was cut. Rows read whole keep
        their whole window as the first edge. Windows that read the same tiles (24 hours up to the row, and up
        to 1 ms before it) share them, and their partials, through `shared`."""
        length = lo_us // 1000 // _TILES
        if length < 1 or not len(seg.lengths) or seg.lengths.max() < _TILE_MIN_ROWS:
            return None
        ts_ms = rows.ts_us // 1000
        first = np.maximum(-((lo_us - rows.ts_us) // 1000), self._floor)  # the window's first ms
        after = np.minimum((rows.ts_us - hi_us) // 1000 + 1, ts_ms)  # whole tiles end at or before this
        k0, k1 = -(-first // length), after // length  # the whole tiles are k0 .. k1 - 1
        tiled = (k1 - k0 >= 2) & (seg.lengths >= _TILE_MIN_ROWS)
        if not tiled.any():
            return None
        # No row is older than the base: tiles before its tile are empty, and left to the first edge.
        origin = (self._base or 0) // length
        k0 = np.maximum(k0, origin)
        tiled &= k1 - k0 >= 2
        if not tiled.any():
            return None
        events = np.flatnonzero(tiled)
        plan = (length, events.tobytes(), k0[events].tobytes(), k1[events].tobytes())
        if plan not in shared:
            counts = (k1 - k0)[events]
            firsts = np.cumsum(counts) - counts
            numbers = np.repeat(k0[events] - firsts, counts) + np.arange(int(counts.sum()))
            tile_keys = (np.repeat(rows.codes[events], counts) << _TS_BITS) + numbers - origin
            unique, inverse = np.unique(tile_keys, return_inverse=True)
            bounds = np.concatenate([k0[events], k1[events]]) * length
            starts, stops = np.split(self._find(np.tile(rows.codes[events], 2), bounds), 2, axis=1)
            shared[plan] = (counts, firsts, unique, inverse.ravel(), starts, stops, {})
        counts, firsts, unique, inverse, starts, stops, partials = shared[plan]
        # The edges: [window start, first whole tile) and [end of the last whole tile, window end], per run.
        hi = seg.hi
        left_hi, right_lo = hi.copy(), hi.copy()
        right_lo[:, events] = np.minimum(stops, hi[:, events])
        left_hi[:, events] = np.minimum(np.maximum(starts, seg.lo_runs[:, events]), right_lo[:, events])
        edges = _Segments(
            np.concatenate([seg.lo_runs, right_lo], axis=1), np.concatenate([left_hi, hi], axis=1), len(self), keys
        )
        return _Tiled(length, edges, events, counts, firsts, unique, inverse, keys, partials)

    def _find(self, codes: np.ndarray, ms: np.ndarray) -> np.ndarray:
        """Index position of the first row of each entity `codes` at or after `ms` (epoch ms), in every run:
        an array (runs, rows)."""
        offsets = np.clip(ms - (self._base or 0), -1, _TS_SPAN + 1)
        needles = (codes << _TS_BITS) + offsets
        order = np.argsort(needles)  # binary searches in key order hit the cache
        needles = needles[order]
        found = np.empty((len(self._runs), len(needles)), np.int64)
        for run, (start, stop) in enumerate(self._run_bounds()):
            found[run, order] = np.searchsorted(self._keys[start:stop], needles) + start
        return found

    def _partials(self, tiled: _Tiled, column: str) -> dict[str, np.ndarray]:
        """The partial aggregates of `column` over each tile `tiled` reads (by its unique tile keys): those
        kept, and the others computed from the tile's rows in canonical order, then kept."""
        if column not in tiled.partials:
            name = (tiled.length, column)
            tiles = self._tiles.get(name)
            if tiles is None:
                tiles = self._tiles[name] = _Tiles(self, tiled.length, column)
            partials, missing = tiles.get(tiled.unique)
            if missing.any():
                keys = tiled.unique[missing]
                codes, numbers = keys >> _TS_BITS, (keys & _TS_SPAN) + tiles.origin
                bounds = np.concatenate([numbers, numbers + 1]) * tiled.length
                lo, hi = np.split(self._find(np.tile(codes, 2), bounds), 2, axis=1)
                computed = self._summaries(column, _Segments(lo, hi, len(self), tiled.keys))
                for stat, values in computed.items():
                    partials[stat][missing] = values
                tiles.put(keys, computed)
            tiled.partials[column] = partials
        return tiled.partials[column]

    def _summaries(self, column: str, seg: _Segments) -> dict[str, np.ndarray]:
        """Per segment: the count of valid values, their sum, max, min and sum of squared deviations from
        their own mean (two passes over the segment's rows in canonical order)."""
        cache: dict = {}  # of its own: `_rows` keys gathered rows by the id of a segment that dies here
        valid = self._column(self._valid, column)
        if valid is None:
            count = seg.lengths
        else:
            count = seg.reduce_segments(np.add, self._rows(column, "valid", seg, cache), 0)
        out = {"count": count}
        if self._values[column] is None:
            return out
        kind = self.columns[column]
        floats = self._rows(column, "float", seg, cache)
        total = seg.reduce_segments(np.add, floats, 0.0)
        out["sum"] = total
        for function in ("max", "min"):
            ufunc = np.maximum if function == "max" else np.minimum
            rows = self._rows(column, function, seg, cache)
            out[function] = seg.reduce_segments(ufunc, rows, _sentinel(kind, function))
        deviations = seg.gather(floats)
        deviations -= np.repeat(total / np.maximum(count, 1), seg.lengths)
        if valid is not None:
            deviations[~valid[seg.positions]] = 0.0
        with np.errstate(over="ignore"):
            out["m2"] = seg.reduce(np.add, deviations * deviations, 0.0)
        return out

    def _reduced(self, column: str, stat: str, seg: _Segments, cache: dict) -> np.ndarray:
        """`stat` ("count" of valid values, "sum", "max" or "min") of `column` over each segment: over its
        rows, or for a tiled segment over its first edge, then its whole tiles in order, then its last edge."""
        ufunc, form, empty = _STATS[stat]
        if empty is None:
            empty = _sentinel(self.columns[column], stat)
        reduced = seg.reduced
        out = reduced.reduce_segments(ufunc, self._rows(column, form, reduced, cache), empty)
        tiled = seg.tiled
        if tiled is None:
            return out
        n = len(seg.lengths)
        left, right = out[:n], out[n:]
        partials = self._partials(tiled, column)[stat][tiled.inverse]
        middle = np.full(n, empty, dtype=partials.dtype)
        middle[tiled.events] = ufunc.reduceat(partials, tiled.firsts)
        return ufunc(ufunc(left, middle), right)

    def _squares(self, column: str, seg: _Segments, mean: np.ndarray, cache: dict) -> np.ndarray:
        """The sum of squared deviations from `mean` of each segment's valid values. For a tiled segment, a
        tile adds its own (about its mean) + count x (its mean - `mean`)^2 (Chan et al.): exact, and as
        stable as two passes, each term being a square about a mean."""
        valid = self._column(self._valid, column)
        reduced, tiled = seg.reduced, seg.tiled
        n = len(seg.lengths)
        # The one aggregate that needs each row's own term: the deviations from its window's mean.
        deviations = reduced.gather(self._rows(column, "float", reduced, cache))
        deviations -= np.repeat(mean if tiled is None else np.concatenate([mean, mean]), reduced.lengths)
        if valid is not None:
            deviations[~valid[reduced.positions]] = 0.0
        with np.errstate(over="ignore", invalid="ignore"):  # deviations past ~1e154 square to inf, as DuckDB's do
            out = reduced.reduce(np.add, deviations * deviations, 0.0)
            if tiled is None:
                return out
            partials = self._partials(tiled, column)
            count = partials["count"][tiled.inverse]
            apart = partials["sum"][tiled.inverse] / np.maximum(count, 1) - np.repeat(mean[tiled.events], tiled.counts)
            terms = partials["m2"][tiled.inverse] + np.where(count > 0, count * (apart * apart), 0.0)
        middle = np.zeros(n)
        middle[tiled.events] = np.add.reduceat(terms, tiled.firsts)
        return (out[:n] + middle) + out[n:]

    def _search(self, rows: Rows, lows: list[int], highs: list[int]) -> np.ndarray:
        """Where each row's window starts for each length of `lows` (at the first ts >= ts - length), then
        where it ends for each length of `highs` (after the last ts <= ts - length), within the row's entity,
        in every run: index positions, an array (lengths, runs, rows). One binary search per run for all."""
        # In key order, the batch's rows send the binary searches of each length to nearby places in turn.
        ts_us = rows.ts_us[rows.order]
        first = np.maximum(-((np.array(lows, np.int64)[:, None] - ts_us) // 1000), self._floor)
        # After the last key <= k is where the first key >= k + 1 is: every search looks for a left end.
        after = (ts_us - np.array(highs, np.int64)[:, None]) // 1000 + 1
        # Offsets -1 and _TS_SPAN + 1 fall before and after every key of the entity (no key's offset is _TS_SPAN).
        offsets = np.clip(np.concatenate([first, after]) - (self._base or 0), -1, _TS_SPAN + 1)
        needles = ((rows.codes[rows.order] << _TS_BITS) + offsets).ravel()
        found = np.empty((len(self._runs), needles.size), np.int64)
        for run, (start, stop) in enumerate(self._run_bounds()):
            found[run] = np.searchsorted(self._keys[start:stop], needles) + start
        out = np.empty((len(offsets), len(self._runs), len(rows.order)), np.int64)
        out[:, :, rows.order] = found.reshape(len(self._runs), len(offsets), len(rows.order)).transpose(1, 0, 2)
        return out

    def _aggregate(self, window: Window, seg: _Segments, cache: dict) -> pa.Array:
        function, column = window.function, window.column
        key = (window.lo_us, window.hi_us, column)
        if column is None or column == "ts":
            count, valid = seg.lengths, None
        else:
            valid = self._column(self._valid, column)
            if (key, "count") not in cache:
                cache[key, "count"] = seg.lengths if valid is None else self._reduced(column, "count", seg, cache)
            count = cache[key, "count"]
        if function == "count":
            return pa.array(count, pa.int64())
        empty = count == 0
        kind = self.columns.get(column, "ts")
        if function in ("min", "max"):
            if column == "ts":
                # Within an entity the index is sorted by ts: a window's first row holds its min, its last its max.
                ends = seg.ends(last=function == "max")
                result = self._ts_ms(np.clip(ends, 0, max(len(self) - 1, 0))) * 1000
            else:
                result = self._reduced(column, function, seg, cache)
            arrow_type = TS_TYPE if kind == "ts" else (pa.float64() if kind == "double" else pa.int64())
            return pa.array(result, arrow_type, mask=empty)
        if (key, "sum") not in cache:
            cache[key, "sum"] = self._reduced(column, "sum", seg, cache)
        total = cache[key, "sum"]
        if function == "sum":
            return pa.array(total, pa.float64(), mask=empty)
        mean = total / np.maximum(count, 1)
        if function == "avg":
            return pa.array(mean, pa.float64(), mask=empty)
        if (key, "squares") not in cache:
            cache[key, "squares"] = self._squares(column, seg, mean, cache)
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
            values, valid = self._column(self._values, column), self._column(self._valid, column)
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

    # -- runs -------------------------------------------------------------------------------------------

    def _buffers(self) -> list[np.ndarray]:
        """The keys' buffer and every value and validity buffer: one row of each per row held, same capacity."""
        stores = (self._values, self._valid)
        return [self._keys, *(array for store in stores for array in store.values() if array is not None)]

    def _replace_buffers(self, make) -> None:
        """Each buffer replaced by `make(buffer)`."""
        self._keys = make(self._keys)
        for store in (self._values, self._valid):
            for name, array in store.items():
                if array is not None:
                    store[name] = make(array)

    def _run_bounds(self) -> list[tuple[int, int]]:
        """[start, stop) of each run, oldest first."""
        return list(itertools.pairwise([*self._runs, len(self)]))

    def _append(self, keys: np.ndarray, table: pa.Table, order: np.ndarray, span: tuple[int, int]) -> None:
        """Append sorted rows (`table`'s rows in `order`, their `keys`) as the newest run."""
        start, stop = len(self), len(self) + len(keys)
        if stop > len(self._keys):
            # Grown by half at a time: each row is moved O(1) times by growth over its life.
            capacity = max(stop, len(self._keys) * 3 // 2, 1024)
            self._replace_buffers(lambda array: _resized(array, start, capacity))
        self._keys[start:stop] = keys
        for name, kind in self.columns.items():
            column = table[name]
            if self._values[name] is not None:
                zero = 0.0 if kind == "double" else 0
                self._values[name][start:stop] = _numpy(pc.fill_null(column, zero))[order]
            if self._valid[name] is not None or column.null_count:
                if self._valid[name] is None:
                    self._valid[name] = np.ones(len(self._keys), bool)
                self._valid[name][start:stop] = _numpy(column.is_valid())[order]
        self._runs.append(start)
        self._spans.append(span)
        self._size = stop

    def _settle(self) -> None:
        """Merge neighbouring runs, newest first, until each is more than `_MERGE_RATIO` times the next."""
        sizes = [stop - start for start, stop in self._run_bounds()]
        run = len(sizes) - 1
        while run >= 1:
            # The runs after `run` already satisfy the rule, and a merge only makes `run - 1` larger.
            if sizes[run - 1] <= _MERGE_RATIO * sizes[run]:
                self._merge(run)
                sizes[run - 1 : run + 1] = [sizes[run - 1] + sizes[run]]
            run -= 1

    def _merge_all(self) -> None:
        while len(self._runs) > 1:
            self._merge(len(self._runs) - 1)

    def _merge(self, run: int) -> None:
        """Merge run `run` into its older neighbour: one sorted run, equal keys with the older run's first."""
        start, middle, stop = self._runs[run - 1], self._runs[run], self._run_bounds()[run][1]
        # Where each newer row goes in the older run: after the older rows of equal key.
        at = np.searchsorted(self._keys[start:middle], self._keys[middle:stop], side="right") + start
        # A few rows into a large run: block moves (memmove speed, but a numpy call per newer row) beat a
        # masked pass over the merged run (~2 ns a row per buffer).
        if (stop - middle) * 512 <= stop - start:
            self._merge_by_moves(at, middle, stop)
        else:
            self._merge_by_masks(start, middle, stop, at - start + np.arange(stop - middle))
        del self._runs[run]
        (low, high), (low2, high2) = self._spans[run - 1 : run + 1]
        self._spans[run - 1 : run + 1] = [(min(low, low2), max(high, high2))]

    def _merge_by_moves(self, at: np.ndarray, middle: int, stop: int) -> None:
        """Merge a few newer rows (`middle:stop`, to go before the older rows at `at`) into a large older
        run by moving the older rows up in blocks, last first: memory moves, one per newer row."""
        places = at + np.arange(len(at))
        at = at.tolist()
        for array in self._buffers():
            newer = array[middle:stop].copy()
            end = middle
            for shift in range(len(at), 0, -1):
                begin = at[shift - 1]
                if begin < end:
                    array[begin + shift : end + shift] = array[begin:end]
                end = begin
            array[places] = newer

    def _merge_by_masks(self, start: int, middle: int, stop: int, places: np.ndarray) -> None:
        """Merge runs `start:middle` and `middle:stop`, the newer rows going to `places` of the merged run."""
        older = np.ones(stop - start, bool)
        older[places] = False
        for array in self._buffers():
            merged = self._scratch(stop - start, array.dtype)
            merged[older] = array[start:middle]
            merged[places] = array[middle:stop]
            array[start:stop] = merged

    def _scratch(self, size: int, dtype: np.dtype) -> np.ndarray:
        """Room for `size` rows of `dtype`, kept from merge to merge: memory fresh from the system costs a
        page fault per page written, which doubles the cost of a large merge."""
        nbytes = size * np.dtype(dtype).itemsize
        if self._spare is None or len(self._spare) < nbytes:
            self._spare = np.empty(max(nbytes, 8 * len(self._keys)), np.uint8)
        return self._spare[:nbytes].view(dtype)

    def _in_ts_order(self) -> bool:
        """Whether, by their spans, no run holds a ts earlier than a run before it: then the pieces of a
        window, oldest run first, are in key order."""
        latest = _MIN_MS
        for low, high in self._spans:
            if low < latest:
                return False
            latest = max(latest, high)
        return True

    def _compact(self) -> None:
        """Drop the rows below the floor from every run, and the entities left without rows."""
        size = len(self)
        keep = (self._keys[:size] & _TS_SPAN) >= self._floor - (self._base or 0)
        kept = [int(np.count_nonzero(keep[start:stop])) for start, stop in self._run_bounds()]
        new_size = sum(kept)
        # Room for the quarter the index grows by before the next compaction, and as much again for the
        # batch that takes it past that: the buffers need not grow in between.
        capacity = new_size + new_size // 2 + 4096

        def compacted(array: np.ndarray) -> np.ndarray:
            out = np.empty(capacity, array.dtype)
            out[:new_size] = array[:size][keep]
            return out

        self._replace_buffers(compacted)
        self._spare = None  # sized for the buffers before: made again when needed
        runs, spans, start = [], [], 0
        for count, (low, high) in zip(kept, self._spans, strict=True):
            if count:
                # What is left of the run lies within its span cut at the floor (not always its exact span).
                runs.append(start)
                spans.append((max(low, self._floor), high))
                start += count
        self._runs, self._spans, self._size = runs, spans, new_size
        if len(self._codes) > 2 * len(self) + 4096:
            # Forget entities with no events left; renumbering in the old order keeps every run sorted.
            keys = self._keys[: len(self)]
            codes = keys >> _TS_BITS
            live = np.unique(codes)
            keys[:] = (np.searchsorted(live, codes) << _TS_BITS) + (keys & _TS_SPAN)
            alive = set(live.tolist())
            kept_codes = [value for value, code in self._codes.items() if code in alive]
            self._codes = {value: code for code, value in enumerate(kept_codes)}
            self._tiles.clear()  # their keys hold the old codes
        for (length, _), tiles in self._tiles.items():
            tiles.keep(-(-self._floor // length))  # a tile that starts below the floor is never whole again
        self._settle()
        self._compacted_size = len(self)


class _Segments:
    """The window of each batch row as one piece [lo, hi) of every run of the index, and the pieces gathered
    end to end, segment after segment, each segment's pieces oldest run first.

    Gathered: the reductions read the pieces' rows gathered. Over one run, segments that hold a quarter of
    the index or more (a large batch) are reduced in place instead, which passes over the index once. Both
    add each segment's values in canonical order, so they give the same bits.

    `keys` (the index's keys) is given when the runs are not in ts order (see `WindowIndex`): the gathered
    rows of each segment are then sorted by key, stably, so that they come in canonical order.
    """

    def __init__(self, lo: np.ndarray, hi: np.ndarray, index_size: int, keys: np.ndarray | None = None):
        if lo.ndim == 1:  # one run
            lo, hi = lo[None], hi[None]
        self._lo = lo  # (runs, rows)
        self._hi = hi
        self._piece_lengths = np.maximum(hi - lo, 0)
        self.lengths = self._piece_lengths.sum(axis=0)
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.nonempty = self.lengths > 0
        self.total = int(self.starts[-1] + self.lengths[-1]) if self.lengths.size else 0
        one_run = len(lo) == 1
        self.gathered = not one_run or self.total < _IN_PLACE_SHARE * index_size
        self.lo = lo[0] if one_run else None
        self._keys = None if one_run else keys
        self._positions: np.ndarray | None = None
        self._pairs: tuple[np.ndarray, np.ndarray] | None = None
        self.tiled: _Tiled | None = None  # set when some windows are read as whole tiles and edges

    @property
    def reduced(self) -> _Segments:
        """The segments whose rows are reduced: these, or the edges when tiled (first edges, then last)."""
        return self if self.tiled is None else self.tiled.edges

    @property
    def lo_runs(self) -> np.ndarray:
        """Where each segment starts in each run: (runs, rows)."""
        return self._lo

    @property
    def hi(self) -> np.ndarray:
        """Where each segment ends in each run (never before it starts): (runs, rows)."""
        return np.maximum(self._hi, self._lo)

    @property
    def positions(self) -> np.ndarray:
        """Index positions of every segment's rows, segment after segment, each in canonical order."""
        if self._positions is None:
            if self.lo is not None:
                lo, lengths, starts = self.lo, self.lengths, self.starts
            else:  # piece after piece: a segment's pieces, oldest run first, then the next segment's
                lo, lengths = self._lo.T.ravel(), self._piece_lengths.T.ravel()
                starts = np.cumsum(lengths) - lengths
            positions = np.repeat(lo - starts, lengths)
            positions += np.arange(len(positions))
            if self._keys is not None:
                positions = self._in_key_order(positions)
            self._positions = positions
        return self._positions

    def _in_key_order(self, positions: np.ndarray) -> np.ndarray:
        """`positions` with each segment's rows sorted by key; rows of equal key keep their order."""
        keys = self._keys[positions]
        segment = np.repeat(np.arange(len(self.lengths)), self.lengths)
        if not ((keys[1:] < keys[:-1]) & (segment[1:] == segment[:-1])).any():
            return positions
        return positions[np.lexsort((keys, segment))]  # lexsort is stable

    def ends(self, last: bool) -> np.ndarray:
        """Index position of each segment's first row (`last`: its last row) in canonical order; any
        position, maybe out of the index, for an empty segment."""
        if self.lo is not None:
            return self.lo + self.lengths - 1 if last else self.lo
        if not self.total:
            return np.zeros(len(self.lengths), np.int64)
        if self._keys is not None:
            at = self.starts + self.lengths - 1 if last else self.starts
            return self.positions[np.clip(at, 0, self.total - 1)]
        # The pieces are in canonical order: the first row is the first piece's first, the last the last's last.
        nonempty = self._piece_lengths > 0
        runs = len(nonempty) - 1 - nonempty[::-1].argmax(axis=0) if last else nonempty.argmax(axis=0)
        rows = np.arange(len(self.lengths))
        lo = self._lo[runs, rows]
        return lo + self._piece_lengths[runs, rows] - 1 if last else lo

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Every segment's rows, segment after segment, as a new array, from rows made by `_rows` for it."""
        return rows.copy() if self.gathered else rows[self.positions]

    def reduce_segments(self, ufunc: np.ufunc, rows: np.ndarray, empty) -> np.ndarray:
        """`ufunc` over each segment's rows, from rows made by `_rows` for these segments.

        Gathered: one `reduceat` at the segments' starts. In place: the non-empty segments, sorted by start,
        go to one `reduceat` as [lo, hi) pairs of the whole index; its results between pairs are thrown away:
        each is one element where segments overlap, else a stretch no other segment covers, so they cost at
        most one pass over the index. Each segment is reduced in index order, as `reduce` would.
        """
        if self.gathered:
            return self.reduce(ufunc, rows, empty)
        if self._pairs is None:
            nonempty = np.flatnonzero(self.nonempty)
            nonempty = nonempty[np.argsort(self.lo[nonempty], kind="stable")]
            bounds = np.empty(2 * len(nonempty), np.int64)
            bounds[0::2] = self.lo[nonempty]
            bounds[1::2] = self.lo[nonempty] + self.lengths[nonempty]
            self._pairs = nonempty, bounds
        nonempty, bounds = self._pairs
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


@dataclass
class _Tiled:
    """A batch's windows of one length as edges and whole tiles (see `WindowIndex._tiled`).

    `edges` holds every row's first edge, then every row's last edge; rows read whole have their whole
    window as first edge and no tiles. The rows `events` read `counts` tiles each, from `firsts` in the list of
    their tiles in order, which is `unique[inverse]`: tile keys (entity code, tile number - origin)."""

    length: int
    edges: _Segments
    events: np.ndarray
    counts: np.ndarray
    firsts: np.ndarray
    unique: np.ndarray
    inverse: np.ndarray
    keys: np.ndarray | None
    partials: dict = field(default_factory=dict)  # by column: see `WindowIndex._partials`


class _Tiles:
    """Partial aggregates of one column over the tiles of one length, by tile key: the entity's code in the
    high bits, the tile's number from `origin` (the index's base tile) in the low ones.

    Two levels of sorted arrays, a large and a small one that new tiles go into and that is merged into the
    large one once it holds a quarter as many: a batch's lookups are two binary searches, and keeping a tile
    costs O(1) amortised. A tile that gains a row after it was computed (arrival order) is marked stale and
    computed again when next read; the index drops tiles below its floor when it compacts, and every tile
    when it renumbers entities or moves its base."""

    _STATS = ("count", "sum", "max", "min", "m2")

    def __init__(self, index: WindowIndex, length: int, column: str):
        self.length = length
        self.origin = (index._base or 0) // length
        kind = index.columns.get(column)
        value = np.int64 if kind == "bigint" else np.float64
        self.dtypes = {"count": np.int64, "sum": np.float64, "max": value, "min": value, "m2": np.float64}
        self.levels = [self._level({}), self._level({})]

    def _level(self, arrays: dict) -> dict:
        empty = {"key": np.empty(0, np.int64), "ok": np.empty(0, bool)}
        empty |= {stat: np.empty(0, dtype) for stat, dtype in self.dtypes.items()}
        return empty | arrays

    def get(self, keys: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The partials of sorted unique `keys` (zeros where missing), and which are missing or stale."""
        out = {stat: np.zeros(len(keys), dtype) for stat, dtype in self.dtypes.items()}
        missing = np.ones(len(keys), bool)
        for level in self.levels:
            if not len(level["key"]):
                continue
            at, hit = self._where(level, keys)
            hit &= level["ok"][at]
            for stat in self.dtypes:
                if stat in level:
                    out[stat][hit] = level[stat][at[hit]]
            missing &= ~hit
        return out, missing

    def put(self, keys: np.ndarray, partials: dict[str, np.ndarray]) -> None:
        """Keep the partials of sorted unique `keys`: in place where a stale one is kept, else as new tiles."""
        new = np.ones(len(keys), bool)
        for level in self.levels:
            at, hit = self._where(level, keys)
            for stat, values in partials.items():
                level[stat][at[hit]] = values[hit]
            level["ok"][at[hit]] = True
            new &= ~hit
        if not new.any():
            return
        large, small = self.levels
        at = np.searchsorted(small["key"], keys[new])
        small["key"] = np.insert(small["key"], at, keys[new])
        small["ok"] = np.insert(small["ok"], at, True)
        for stat in self.dtypes:
            values = partials.get(stat)
            filler = np.zeros(int(new.sum()), self.dtypes[stat]) if values is None else values[new]
            small[stat] = np.insert(small[stat], at, filler)
        if len(small["key"]) * 4 > len(large["key"]) + 4096:
            at = np.searchsorted(large["key"], small["key"])
            self.levels = [{name: np.insert(large[name], at, small[name]) for name in large}, self._level({})]

    def invalidate(self, keys: np.ndarray) -> None:
        """Mark stale the tiles of `keys` (any order, repeats allowed)."""
        for level in self.levels:
            at, hit = self._where(level, keys)
            level["ok"][at[hit]] = False

    def keep(self, first_tile: int) -> None:
        """Forget the tiles numbered below `first_tile`."""
        for i, level in enumerate(self.levels):
            kept = (level["key"] & _TS_SPAN) + self.origin >= first_tile
            self.levels[i] = {name: array[kept] for name, array in level.items()}

    @staticmethod
    def _where(level: dict, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stored = level["key"]
        if not len(stored):
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        at = np.minimum(np.searchsorted(stored, keys), len(stored) - 1)
        return at, stored[at] == keys


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


def _resized(array: np.ndarray, size: int, capacity: int) -> np.ndarray:
    """A buffer of `capacity` rows that starts with the first `size` of `array`."""
    out = np.empty(capacity, array.dtype)
    out[:size] = array[:size]
    return out


def _empty(kind: str) -> np.ndarray | None:
    return {"double": np.empty(0, np.float64), "bigint": np.empty(0, np.int64)}.get(kind)


def _numpy(array: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return array.to_numpy() if isinstance(array, pa.ChunkedArray) else array.to_numpy(zero_copy_only=False)


def _ts_us(table: pa.Table) -> np.ndarray:
    return _numpy(table["ts"].cast(TS_TYPE).cast(pa.int64()))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
