"""The online feature engine: point-in-time window features for micro-batches of events.

Semantics (the contract the dataflow and the backfill rely on):

- The engine does not order events: the caller does (the dataflow's event-time ordering step). `push` gives
  every event of a batch its features at once, from the history pushed before it plus the batch, and the
  batch's events in (ts, event_id) order. Fed batches in event-time order (no event earlier than one pushed
  before it), every event gets exactly the features a backfill computes. Fed them in arrival order (the
  flow's `arrival` mode), an event that arrives after later ones sees only the history that came before it.
- An event's features are each group's SQL run over `events` = the buffered history of the batch's
  entities since (batch's first ts − the group's horizon), plus the batch. Windows that end at the current
  row see every event with ts <= the event's own, equal ts included; order ties by `event_id`. Groups of
  windowed aggregates run as an equivalent plan instead, when the planner (`features.planner`) chose one:
  segments of an index of the history sorted by entity and time (`features.segments`).
- `event_id` must be unique; the engine does not deduplicate.

>>> import tempfile, pathlib
>>> sql_dir = pathlib.Path(tempfile.mkdtemp())
>>> _ = (sql_dir / "user.sql").write_text(
...     "-- group: user\\n-- entity: user_id\\n-- horizon: 1h\\n"
...     "SELECT event_id, count(*) OVER (PARTITION BY user_id ORDER BY ts\\n"
...     "  RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW) AS n_1h FROM events\\n")
>>> engine = FeatureEngine(sql_dir, {"user_id": "string"})
>>> out = engine.push([{"event_id": f"e{i}", "ts": i * 60_000, "user_id": "u1"} for i in range(3)])
>>> [(e["event_id"], f["n_1h"]) for e, f in out]
[('e0', 1), ('e1', 2), ('e2', 3)]
"""

from __future__ import annotations

import itertools
import logging
import operator
import pickle
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.buffer import EventBuffer
from features.catalog import Catalog, load_catalog, require_catalog, signature
from features.schema import HIDDEN, arrow_schema, to_arrow
from features.segments import OutOfRange, Rows, WindowIndex, segment_features
from features.spec import FeatureFileError, FeatureGroup
from features.timestamps import to_ms

_SNAPSHOT_FORMAT = 1
log = logging.getLogger("eddy.features")


@dataclass(frozen=True)
class ReloadReport:
    """What a check of the SQL folder found: whether definitions changed, and why an edit was refused."""

    changed: bool
    features_version: str
    previous_version: str
    errors: list[FeatureFileError] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureBatch:
    """A pushed batch's events in (ts, event_id) order with their features (None for NULL).

    `reload` is set when this push found the SQL folder edited (new definitions, or errors that kept the
    previous ones), so the flow can log it.
    """

    events: list[dict]
    features: list[dict[str, Any]]
    features_version: str = ""
    reload: ReloadReport | None = None

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self):
        return iter(zip(self.events, self.features, strict=True))


class FeatureEngine:
    """Computes every feature group for each event of a batch from the events pushed before it.

    Parameters
    ----------
    sql_dir
        Folder of feature files (`*.sql`), see `sql/README.md`.
    fields
        The event fields and their types ("string", "double", "bigint", "boolean", "text"): `[fields]` in eddy.toml.
    threads
        DuckDB threads; 1 keeps one engine on one core (scale with more dataflow workers).
    auto_reload
        Check the folder for edits (a cheap stat) at the start of every `push`.
    track_inserts
        Keep the rows added to the buffer until `take_inserted` collects them: how a recovery snapshot
        saves only what changed (`state` + the inserted rows, given back to `resume`).
    family
        Compute only the groups of this family (`features.catalog.family_of` their entity) and hold only the
        events pushed to it: fed the events of any set of the family's entities, it gives them exactly the
        whole engine's features for those groups. `features_version` stays the whole folder's. None: every
        group.

    The DuckDB connection and the window indexes are not part of the engine's state: pickling or
    deep-copying (as Bytewax does at every epoch) keeps the buffer and counters, and the copy
    opens its own connection and rebuilds its indexes from the buffer lazily.
    """

    def __init__(
        self,
        sql_dir: str | Path,
        fields: dict[str, str],
        threads: int = 1,
        auto_reload: bool = True,
        track_inserts: bool = False,
        family: str | None = None,
    ):
        self.sql_dir = str(sql_dir)
        self.fields = {k: v for k, v in fields.items() if k not in HIDDEN}
        self.threads = threads
        self.auto_reload = auto_reload
        self.family = family
        self._signature = signature(self.sql_dir)
        self.catalog: Catalog = self._select(require_catalog(self.sql_dir, self.fields))
        self.buffer = EventBuffer(arrow_schema(self.fields))
        self._max_ts: int | None = None
        self.counters = {
            "events": 0,
            "evicted": 0,
            "batches": 0,
            "reloads": 0,
            "reload_errors": 0,
        }
        self._con: duckdb.DuckDBPyConnection | None = None
        self._statements: dict[str, duckdb.DuckDBPyRelation] = {}  # for `_con` alone: see segment_features
        self._indexes: dict[tuple[str, ...], WindowIndex] = {}
        self._inserted: list[pa.Table] | None = [] if track_inserts else None

    # -- public API -------------------------------------------------------------------------------------

    @property
    def features_version(self) -> str:
        return self.catalog.version

    @property
    def feature_names(self) -> list[str]:
        return self.catalog.feature_names

    def push(self, events: list[dict]) -> FeatureBatch:
        """Features for every event of the batch, from the history pushed before it and the batch itself."""
        report = self.reload() if self.auto_reload else None
        if report is not None and not (report.changed or report.errors):
            report = None
        batch = [(event["ts"] if type(event["ts"]) is int else to_ms(event["ts"]), event) for event in events]
        batch.sort(key=lambda pair: (pair[0], str(pair[1]["event_id"])))
        if batch and (self._max_ts is None or batch[-1][0] > self._max_ts):
            self._max_ts = batch[-1][0]
        return self._features(batch, report)

    def reload(self) -> ReloadReport:
        """At a batch boundary: load edited, added or removed files; keep the old definitions if any fails."""
        previous = self.catalog.version
        current = signature(self.sql_dir)
        if current == self._signature:
            return ReloadReport(False, previous, previous)
        self._signature = current
        catalog, errors = load_catalog(self.sql_dir, self.fields)
        if errors:
            self.counters["reload_errors"] += 1
            return ReloadReport(False, previous, previous, errors)
        if catalog.version == previous:
            return ReloadReport(False, previous, previous)
        self.catalog = self._select(catalog)
        self.counters["reloads"] += 1
        return ReloadReport(True, catalog.version, previous)

    def snapshot(self) -> bytes:
        """The engine's state as bytes: buffer (Arrow IPC), newest ts, counters. No connection."""
        state = {
            "format": _SNAPSHOT_FORMAT,
            "buffer": self.buffer.to_bytes(),
            "buffer_floor": self.buffer.floor,
            "max_ts": self._max_ts,
            "counters": self.counters,
            "features_version": self.features_version,
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, blob: bytes, sql_dir: str | Path, fields: dict[str, str], **options) -> FeatureEngine:
        """An engine in the snapshot's state, with the definitions now in `sql_dir`."""
        state = pickle.loads(blob)
        if state.get("format") != _SNAPSHOT_FORMAT:
            raise ValueError(f"unknown feature snapshot format {state.get('format')!r}")
        engine = cls(sql_dir, fields, **options)
        buffer = EventBuffer.from_bytes(state["buffer"])
        if not buffer.schema.equals(engine.buffer.schema):
            raise ValueError(f"the snapshot's events schema {buffer.schema} differs from the fields given")
        engine.buffer = buffer
        buffer.floor = state.get("buffer_floor")
        engine._resume_counts(state)
        return engine

    def take_inserted(self) -> pa.Table:
        """The rows added to the buffer since the last call (with `track_inserts`), in the order added."""
        if self._inserted is None:
            raise RuntimeError("FeatureEngine.take_inserted needs an engine built with track_inserts=True")
        batches, self._inserted = self._inserted, []
        if not batches:
            return self.buffer.schema.empty_table()
        return pa.concat_tables(batches) if len(batches) > 1 else batches[0]

    def state(self) -> dict:
        """The engine's state less the buffer's rows: small, whatever the history held. With every row ever
        inserted that is still at or past `state()["buffer_floor"]`, `resume` gives the engine back."""
        return {
            "format": _SNAPSHOT_FORMAT,
            "buffer_floor": self.buffer.floor,
            "max_ts": self._max_ts,
            "counters": dict(self.counters),
            "features_version": self.features_version,
        }

    @classmethod
    def resume(
        cls, state: dict, inserted: list[pa.Table], sql_dir: str | Path, fields: dict[str, str], **options
    ) -> FeatureEngine:
        """The engine that `state` describes, its buffer rebuilt from the rows `inserted` since it started (at
        least those at or past its floor), in the order they were added; definitions now in `sql_dir`."""
        if state.get("format") != _SNAPSHOT_FORMAT:
            raise ValueError(f"unknown feature state format {state.get('format')!r}")
        engine = cls(sql_dir, fields, **options)
        for table in inserted:
            if not table.schema.equals(engine.buffer.schema):
                raise ValueError(f"the saved events schema {table.schema} differs from the fields given")
        engine.buffer = EventBuffer.rebuild(engine.buffer.schema, inserted, state["buffer_floor"])
        engine._resume_counts(state)
        return engine

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_con"] = None
        state["_statements"] = {}
        state["_indexes"] = {}
        return state

    # -- internals --------------------------------------------------------------------------------------

    def _resume_counts(self, state: dict) -> None:
        # `held`: events an engine that waited for its own watermark had not computed yet; they would be lost.
        if state.get("held"):
            raise ValueError("the saved feature state holds events that never got their features")
        self._max_ts = state["max_ts"]
        self.counters = {key: state["counters"].get(key, 0) for key in self.counters}

    def _select(self, catalog: Catalog) -> Catalog:
        return catalog if self.family is None else catalog.subset(self.family)

    def _features(self, ordered: list[tuple[int, dict]], report: ReloadReport | None) -> FeatureBatch:
        version = self.features_version
        if not ordered:
            return FeatureBatch([], [], version, report)
        events = [event for _, event in ordered]
        batch = to_arrow(events, self.fields, [ts for ts, _ in ordered])
        first_ts = ordered[0][0]
        columns = {}
        indexed = self._index_batch(batch)
        for group in self.catalog.groups:
            plan = group.segments
            if plan is not None and plan.entity in indexed:
                index = self._indexes[plan.entity]
                con = self._connection()
                columns.update(segment_features(con, plan, index, batch, indexed[plan.entity], self._statements))
                continue
            history = self.buffer.history(first_ts - group.horizon_ms, group.entity, batch)
            relation = pa.concat_tables([history, batch]) if history.num_rows else batch
            columns.update(run_group(self._connection(), group, relation, batch["event_id"]))
        features = _records(columns, len(events))
        self.buffer.insert(batch)
        if self._inserted is not None:
            self._inserted.append(self.buffer.conform(batch))
        cut = self._max_ts - self.catalog.horizon_ms
        self.counters["evicted"] += self.buffer.evict(cut)
        for index in self._indexes.values():
            index.evict(cut)
        self.counters["events"] += len(events)
        self.counters["batches"] += 1
        return FeatureBatch(events, features, version, report)

    def _index_batch(self, batch: pa.Table) -> dict[tuple[str, ...], Rows]:
        """Add the batch to the window index of every entity a segment plan needs (built from the buffer
        when missing or when the definitions now read other columns); the batch's rows in each."""
        needed: dict[tuple[str, ...], dict[str, str]] = {}
        for group in self.catalog.groups:
            if group.segments is not None:
                needed.setdefault(group.segments.entity, {}).update(group.segments.columns)
        for entity in set(self._indexes) - set(needed):
            del self._indexes[entity]
        rows = {}
        for entity, columns in needed.items():
            index = self._indexes.get(entity)
            try:
                if index is None or not index.covers(entity, columns):
                    index = WindowIndex(entity, columns)
                    index.insert(self.buffer.table)
                    self._indexes[entity] = index
                rows[entity] = index.insert(batch)
            except OutOfRange as exc:
                if self._indexes.pop(entity, None) is not None:
                    log.warning("window index on %s dropped, SQL as written until it can be rebuilt: %s", entity, exc)
        return rows

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = connect(self.threads)
        return self._con


def connect(threads: int = 1) -> duckdb.DuckDBPyConnection:
    """A private in-memory DuckDB that feature SQL cannot use to read or write files."""
    return duckdb.connect(config={"threads": int(threads), "enable_external_access": False})


def run_group(
    con: duckdb.DuckDBPyConnection, group: FeatureGroup, events: pa.Table, event_ids: pa.ChunkedArray
) -> dict[str, pa.ChunkedArray]:
    """Run one group's SQL over `events` and return its feature columns aligned with `event_ids`."""
    try:
        result = _query(con, group.sql, {"events": events})
    except duckdb.Error as exc:
        raise RuntimeError(f"feature group '{group.name}' ({group.path}) failed: {exc}") from exc
    result = result.take(pc.index_in(event_ids, value_set=result["event_id"].combine_chunks()))
    return {name: result[name] for name in group.feature_names}


def _query(con: duckdb.DuckDBPyConnection, sql: str, relations: dict[str, pa.Table]) -> pa.Table:
    for name, relation in relations.items():
        con.register(name, relation)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        for name in relations:
            con.unregister(name)


def _records(columns: dict[str, pa.Array | pa.ChunkedArray], rows: int) -> list[dict[str, Any]]:
    """Feature columns as one dict per event (None for NULL); numbers through numpy, ~2x Arrow's to_pylist."""
    if not columns:
        return [{} for _ in range(rows)]
    # Copies of one dict with every key, filled a column at a time: ~25% faster than dict(zip(...)) per row.
    template = dict.fromkeys(columns)
    records = [template.copy() for _ in range(rows)]
    for name, column in columns.items():
        values = _pylist(column)
        if len(values) != rows:
            raise ValueError(f"feature column {name!r} has {len(values)} values for {rows} events")
        deque(map(operator.setitem, records, itertools.repeat(name), values), maxlen=0)  # itertools' consume()
    return records


def _pylist(column: pa.Array | pa.ChunkedArray) -> list:
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        return column.to_pylist()
    values = column.to_numpy(zero_copy_only=False).tolist()
    if column.null_count:
        for i in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).tolist():
            values[i] = None
    return values
