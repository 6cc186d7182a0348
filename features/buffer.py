"""The history that windows run over: pushed events as one Arrow table, in (ts, event_id) order.

The flow feeds the engine in event-time order (its ordering step refuses what comes too late), so the
buffer appends at the end and evicts from the front: eviction is a slice, the lower
bound of a window is a binary search, and memory is bounded by the horizon, not the stream's length.
It holds no DuckDB connection, so it pickles, deep-copies and snapshots as plain Arrow data.

>>> import pyarrow as pa
>>> from features.schema import to_arrow
>>> buffer = EventBuffer(to_arrow([], {"user": "string"}).schema)
>>> buffer.append(to_arrow([{"event_id": f"e{i}", "ts": i * 1000, "user": "a"} for i in range(5)],
...                        {"user": "string"}))
>>> buffer.evict(before_ms=2000), len(buffer)
(2, 3)
>>> EventBuffer.from_bytes(buffer.to_bytes()).table.equals(buffer.table)
True
"""

from __future__ import annotations

import bisect

import pyarrow as pa
import pyarrow.compute as pc

from features.schema import TS_TYPE

_MAX_CHUNKS = 32


class EventBuffer:
    """Released events within the longest horizon, sorted by (ts, event_id)."""

    def __init__(self, schema: pa.Schema, table: pa.Table | None = None, floor: int | None = None):
        self.schema = schema
        self.table = table if table is not None else schema.empty_table()
        self._ts_ms: list[int] = _ts_ms(self.table)
        self.floor = floor
        """Events with ts below this have been evicted (None: nothing yet)."""

    @classmethod
    def rebuild(cls, schema: pa.Schema, inserted: list[pa.Table], floor: int | None) -> EventBuffer:
        """The buffer that inserting the `inserted` tables in turn, and evicting below `floor`, leaves: the
        events at or past the floor, in (ts, event_id) order."""
        table = pa.concat_tables([schema.empty_table(), *inserted])
        ts = table["ts"]
        if table.num_rows > 1 and not pc.all(pc.greater_equal(ts[1:], ts[:-1])).as_py():
            table = table.sort_by([("ts", "ascending"), ("event_id", "ascending")])
        buffer = cls(schema, table.combine_chunks())
        if floor is not None:
            buffer.evict(floor)
        return buffer

    def conform(self, batch: pa.Table) -> pa.Table:
        """`batch` with the buffer's columns and types, as it is stored."""
        return batch.select(self.schema.names).cast(self.schema)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def append(self, batch: pa.Table) -> None:
        """Append pushed events; they must not be older than what is already buffered."""
        if batch.num_rows == 0:
            return
        self.table = pa.concat_tables([self.table, self.conform(batch)])
        if self.table["ts"].num_chunks > _MAX_CHUNKS:
            self.table = self.table.combine_chunks()
        self._ts_ms.extend(_ts_ms(batch))

    def insert(self, batch: pa.Table) -> None:
        """Add a batch in (ts, event_id) order whose events may be older than what is buffered (arrival
        mode), keeping the buffer in that order."""
        if batch.num_rows == 0:
            return
        if not self._ts_ms or _ts_ms(batch.slice(0, 1))[0] >= self._ts_ms[-1]:
            self.append(batch)
            return
        merged = pa.concat_tables([self.table, self.conform(batch)])
        self.table = merged.sort_by([("ts", "ascending"), ("event_id", "ascending")]).combine_chunks()
        self._ts_ms = _ts_ms(self.table)

    def evict(self, before_ms: int) -> int:
        """Drop events with ts < `before_ms` (or below an earlier, higher floor); returns how many were dropped."""
        if self.floor is None or before_ms > self.floor:
            self.floor = before_ms
        cut = bisect.bisect_left(self._ts_ms, self.floor)
        if cut:
            self.table = self.table.slice(cut)
            del self._ts_ms[:cut]
        return cut

    def history(self, since_ms: int, entity: tuple[str, ...], batch: pa.Table) -> pa.Table:
        """Buffered events with ts >= `since_ms` whose entity values all occur in `batch`.

        With several entity columns each is matched on its own, which keeps a superset of the rows that
        share the batch's entity tuples; windows partitioned by the entity give the same results on it.
        """
        start = bisect.bisect_left(self._ts_ms, since_ms)
        rows = self.table.slice(start)
        if not entity or rows.num_rows == 0:
            return rows
        mask = None
        for column in entity:
            keep = pc.is_in(rows[column], value_set=pc.unique(batch[column]))
            mask = keep if mask is None else pc.and_(mask, keep)
        return rows.filter(mask)

    def to_bytes(self) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.schema) as writer:
            writer.write_table(self.table)
        return sink.getvalue().to_pybytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> EventBuffer:
        table = pa.ipc.open_stream(blob).read_all()
        return cls(table.schema, table)


def _ts_ms(table: pa.Table) -> list[int]:
    if table.num_rows == 0:
        return []
    column = table["ts"].cast(TS_TYPE)
    return pc.divide(column.cast(pa.int64()), 1000).to_pylist()
