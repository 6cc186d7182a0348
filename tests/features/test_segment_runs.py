"""The window index as sorted runs: a small batch leaves the history where it is, and windows read off the
runs give the bits that one sorted index of the same rows gives, in event-time and arrival order alike."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from features import FeatureEngine
from features.schema import TS_TYPE
from features.segments import _MERGE_RATIO, Window, WindowIndex
from tests.features.conftest import FIELDS, revive

START = 1_767_225_600_000
COLUMNS = {"amount": "double", "n": "bigint"}
WINDOWS = (
    Window("count", None, 60_000_000, 0),
    Window("sum", "amount", 60_000_000, 0),
    Window("avg", "amount", 60_000_000, 0),
    Window("stddev_samp", "amount", 60_000_000, 0),
    Window("max", "amount", 60_000_000, 0),
    Window("count", "amount", 60_000_000, 0),
    Window("min", "ts", 60_000_000, 0),
    Window("max", "ts", 60_000_000, 0),
    Window("var_pop", "amount", 600_000_000, 1000),
    Window("min", "amount", 600_000_000, 1000),
    Window("max", "ts", 600_000_000, 1000),
    Window("avg", "n", 10**12, 0),
    Window("min", "n", 10**12, 0),
    Window("sum", "amount", 10**12, 0),
)


def events(rng: np.random.Generator, n: int, users: int, in_order: bool) -> pa.Table:
    """`n` events over ~20 minutes; ts non-decreasing (event time) or in any order (arrival)."""
    ts = START + rng.integers(0, 1_200_000, n)
    if in_order:
        ts.sort()
    # Values whose sums round differently in another order: any reordering shows in the bits.
    amount = rng.choice([0.1, 0.2, 3.3, 1e16, -1e16, 7e-300], n)
    return pa.table(
        {
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("ms")).cast(TS_TYPE),
            "user_id": pa.array([f"u{u}" for u in rng.integers(0, users, n)]),
            "amount": pa.array(amount, mask=rng.random(n) < 0.1),
            "n": pa.array(rng.integers(-5, 5, n), mask=rng.random(n) < 0.1),
        }
    )


def one_run(tables: list[pa.Table], floor: int) -> tuple[WindowIndex, pa.Table]:
    """An index of the same rows in one sorted run; the rows of the last table as inserted."""
    index = WindowIndex(("user_id",), COLUMNS)
    if len(tables) > 1:
        index.insert(pa.concat_tables(tables[:-1]))
    rows = index.insert(tables[-1])
    index._merge_all()
    index.evict(floor)
    return index, rows


def brute_force(tables: list[pa.Table], floor: int) -> tuple[list, list]:
    """count(*) and min(ts) over the first window for each row of the last table, row by row."""
    held = pa.concat_tables(tables)
    users, ts = held["user_id"].to_pylist(), held["ts"].cast(pa.int64()).to_numpy() // 1000
    counts, firsts = [], []
    for user, at in zip(tables[-1]["user_id"].to_pylist(), ts[-tables[-1].num_rows :], strict=True):
        seen = [t for u, t in zip(users, ts.tolist(), strict=True) if u == user and max(at - 60_000, floor) <= t <= at]
        counts.append(len(seen))
        firsts.append(min(seen) * 1000 if seen else None)
    return counts, firsts


def pylists(arrays: list[pa.Array]) -> list[list]:
    return [array.to_pylist() for array in arrays]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    in_order=st.booleans(),
    users=st.integers(1, 12),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    history=st.sampled_from([0, 5, 700, 3000]),
    evictions=st.lists(st.integers(0, 3), min_size=12, max_size=12),
)
def test_windows_over_runs_give_the_bits_of_one_sorted_run(seed, in_order, users, sizes, history, evictions):
    rng = np.random.default_rng(seed)
    index, tables, floor = WindowIndex(("user_id",), COLUMNS), [], START - 1
    if history:
        tables.append(events(rng, history, users, in_order))
        index.insert(tables[-1])
    for size, eviction in zip(sizes, evictions, strict=False):
        batch = events(rng, size, users, in_order)
        if in_order and tables:  # event time: a batch is never older than what was released before it
            offset = int(tables[-1]["ts"].cast(pa.int64()).to_numpy().max()) // 1000 - START
            batch = batch.set_column(
                0, "ts", pa.array(batch["ts"].cast(pa.int64()).to_numpy() + offset * 1000, TS_TYPE)
            )
        tables.append(batch)
        rows = index.insert(batch)
        if eviction:
            floor += 60_000 * eviction
            index.evict(floor)
            if eviction == 3:
                index._compact()
        # Straight off the runs, gathered oldest run first (and sorted where runs are out of ts order) ...
        cache: dict = {}
        segments = index._segments(rows, WINDOWS)
        gathered = [index._aggregate(w, segments[w.lo_us, w.hi_us], cache) for w in WINDOWS]
        # ... as the engine reads them (runs merged into one when windows cover much of the index) ...
        read = index.aggregate(rows, WINDOWS)
        # ... and from one sorted run of the same rows, in place or gathered as its size has it.
        reference, reference_rows = one_run(tables, floor)
        expected = reference.aggregate(reference_rows, WINDOWS)
        assert pylists(gathered) == pylists(read) == pylists(expected)
        counts, firsts = brute_force(tables, floor)
        assert expected[0].to_pylist() == counts
        assert expected[6].cast(pa.int64()).to_pylist() == firsts


def test_a_small_batch_leaves_the_history_where_it_is_and_runs_stay_few():
    rng = np.random.default_rng(1)
    index = WindowIndex(("user_id",), COLUMNS)
    index.insert(events(rng, 100_000, 2_000, in_order=True))
    history = index._keys[:100_000].copy()
    for step in range(300):
        batch = events(rng, 40, 2_000, in_order=True)
        late = batch["ts"].cast(pa.int64()).to_numpy() + (step + 1) * 1_200_000_000
        index.insert(batch.set_column(0, "ts", pa.array(late, TS_TYPE)))
        sizes = [stop - start for start, stop in index._run_bounds()]
        assert all(older > _MERGE_RATIO * newer for older, newer in itertools.pairwise(sizes))
    # 12,000 rows came in 300 batches; the 100,000 rows before them were never moved.
    assert index._runs[:2] == [0, 100_000] and (index._keys[:100_000] == history).all()
    assert len(index._runs) <= 2 + np.log2(12_000 / 40)


def test_merging_a_few_rows_into_a_large_run_moves_blocks_and_keeps_the_order():
    rng = np.random.default_rng(2)
    tables = [events(rng, 5_000, 50, in_order=False), events(rng, 3, 50, in_order=False)]
    index = WindowIndex(("user_id",), COLUMNS)
    for table in tables:
        index.insert(table)
    assert len(index._runs) == 2  # 5,000 rows > 512 x 3: the newer rows are moved in, not the whole run
    index._merge(1)
    reference, _ = one_run(tables, START - 1)
    assert (index._keys[: len(index)] == reference._keys[: len(reference)]).all()
    for store, other in ((index._values, reference._values), (index._valid, reference._valid)):
        for name in COLUMNS:
            assert (store[name][: len(index)] == other[name][: len(reference)]).all()


def test_arrival_features_off_the_runs_equal_those_of_an_index_rebuilt_every_batch(tmp_path):
    (tmp_path / "user.sql").write_text(
        "-- group: user\n-- entity: user_id\n-- horizon: 1h\nSELECT event_id,\n"
        + ",\n".join(
            f"{f}(amount) OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL {w} PRECEDING AND "
            f"CURRENT ROW) AS {f}_{w.replace(' ', '')}"
            for f in ("sum", "stddev_samp", "max")
            for w in ("1 MINUTE", "10 MINUTES")
        )
        + "\nFROM events\n"
    )
    rng = np.random.default_rng(3)
    # Distinct ts (the rebuilt index orders equal ts by event_id, the live one by release), all within the
    # horizon (a rebuilt index has no floor: it would show an event older than it what the live one hides).
    ts = START + rng.permutation(3_000_000)[:600]
    stream = [
        {
            "event_id": f"e{i:03d}",
            "ts": int(t),
            "user_id": f"u{rng.integers(40)}",
            "amount": float(rng.choice([0.1, 1e16, -1e16, 3.3])),
        }
        for i, t in enumerate(ts)
    ]
    live, rebuilt = FeatureEngine(tmp_path, FIELDS), FeatureEngine(tmp_path, FIELDS)
    for start in range(0, 600, 25):
        batch = stream[start : start + 25]
        rebuilt = revive(rebuilt, "deepcopy", tmp_path)  # its index is built again, as one run
        assert [f for _, f in live.push(batch)] == [f for _, f in rebuilt.push(batch)]
    assert len(live._indexes[("user_id",)]._runs) > 1


def test_while_windows_cover_much_of_the_index_batches_go_into_one_run():
    rng = np.random.default_rng(4)
    index = WindowIndex(("user_id",), COLUMNS)
    index.insert(events(rng, 1_000, 3, in_order=True))
    wide, narrow = (Window("sum", "amount", 10**12, 0),), (Window("sum", "amount", 1_000, 0),)
    rows = index.insert(events(rng, 10, 3, in_order=True))
    assert len(index._runs) == 2
    index.aggregate(rows, narrow)  # a few rows each: gathered from both runs
    assert len(index._runs) == 2
    index.aggregate(rows, wide)  # every row: the runs merge, and the segments are reduced in place
    assert len(index._runs) == 1
    index.insert(events(rng, 10, 3, in_order=True))
    assert len(index._runs) == 1
    index.aggregate(index.insert(events(rng, 10, 3, in_order=True)), narrow)
    index.insert(events(rng, 10, 3, in_order=True))
    assert len(index._runs) == 2


def test_buffers_stay_within_a_constant_factor_of_the_rows_held():
    rng = np.random.default_rng(5)
    index = WindowIndex(("user_id",), COLUMNS)
    window = (Window("sum", "amount", 60_000_000, 0),)
    for step in range(400):
        batch = events(rng, int(rng.integers(1, 400)), 50, in_order=True)
        later = batch["ts"].cast(pa.int64()).to_numpy() + step * 1_200_000_000
        rows = index.insert(batch.set_column(0, "ts", pa.array(later, TS_TYPE)))
        index.aggregate(rows, window)
        index.evict(START + (step - 10) * 1_200_000)  # about ten batches stay within the horizon
        capacity = len(index._keys)
        assert capacity <= 2 * len(index) + 8192
        assert index._spare is None or len(index._spare) <= 8 * capacity + 8 * 8192
    assert len(index) < 10 * 400 * 1.25 + 4096
