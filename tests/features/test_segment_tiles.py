"""Long windows read as whole tiles and two edges: the same properties as windows read row by row (bits that
do not depend on the runs or on how the stream is cut, DuckDB's values within 1e-9), checked with every
window that spans two tiles read so, and a per-event cost that does not grow with the rows a window holds."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pyarrow as pa

from features import segments
from features.backfill import backfill
from features.schema import TS_TYPE, to_arrow
from features.segments import _TILES, Window, WindowIndex
from tests.features import test_online_equals_backfill as backfilled
from tests.features import test_segment_runs as runs
from tests.features import test_segments as cut
from tests.features.conftest import FIELDS

START = 1_767_225_600_000


def tiles_everywhere():
    return mock.patch.object(segments, "_TILE_MIN_ROWS", 0)


def test_windows_over_runs_give_the_bits_of_one_sorted_run_with_tiles():
    with tiles_everywhere():
        runs.test_windows_over_runs_give_the_bits_of_one_sorted_run()


def test_features_are_bit_identical_however_the_stream_is_cut_with_tiles():
    with tiles_everywhere():
        cut.test_features_are_bit_identical_however_the_stream_is_cut()


def test_the_segment_plan_equals_the_backfill_with_tiles():
    with tiles_everywhere():
        cut.test_the_segment_plan_equals_the_backfill_on_the_shipped_sql()
        cut.test_min_max_and_counts_over_nulls_and_ts_equal_the_backfill(_tmp())


def test_arrival_features_off_the_runs_equal_a_rebuilt_index_with_tiles():
    with tiles_everywhere():
        runs.test_arrival_features_off_the_runs_equal_those_of_an_index_rebuilt_every_batch(_tmp())


def test_online_equals_backfill_with_tiles():
    with tiles_everywhere():
        backfilled.test_online_equals_backfill_on_the_shipped_transactions_sql("segments")


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp())


def dense(n: int, users: int, seed: int, spread_ms: int, scale: float = 1.0, offset: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    ts = np.sort(START + rng.integers(0, spread_ms, n))
    amounts = offset + scale * rng.standard_normal(n)
    return [
        {
            "event_id": f"d{i:06d}",
            "ts": int(t),
            "user_id": f"u{rng.integers(users)}",
            "merchant_id": f"m{rng.integers(users)}",
            "amount": None if rng.random() < 0.05 else float(a),
            "category": "grocery",
            "country": "FR",
        }
        for i, (t, a) in enumerate(zip(ts, amounts, strict=True))
    ]


def test_dense_windows_read_as_tiles_equal_duckdb_and_do_not_depend_on_the_cut():
    """Thousands of rows a window, amounts 1e4 from 0 with a spread of 1 (further off, DuckDB's own variance
    loses digits past 1e-9)."""
    events = dense(6_000, 3, seed=1, spread_ms=30 * 3_600_000, scale=1.0, offset=1e4)
    whole = cut.run(events, [])
    pieces = cut.run(events, list(range(1, 6_000, 37)))
    assert whole == pieces
    expected = backfill(cut.TRANSACTIONS, to_arrow(events, FIELDS), FIELDS).to_pylist()
    abs_tol = backfilled.tolerance(events)
    for row in expected:
        got = whole[row.pop("event_id")]
        assert all(backfilled.same(got[k], v, abs_tol) for k, v in row.items()), (got, row)


def test_a_window_reads_its_tiles_and_the_rows_of_its_edges_only():
    """A window of 40,000+ rows reads ~32 tiles and two edges; its amounts 1e9 from 0 with a spread of 1: a
    variance combined from tiles about any point but each tile's own mean would lose every digit."""
    rng = np.random.default_rng(7)
    n = 50_000
    ts = np.sort(START + rng.integers(0, 3_600_000, n))
    table = pa.table(
        {
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("ms")).cast(TS_TYPE),
            "user_id": pa.array(["u"] * n),
            "amount": pa.array(1e9 + rng.standard_normal(n)),
        }
    )
    index = WindowIndex(("user_id",), {"amount": "double"})
    index.insert(table.slice(0, n - 10))
    rows = index.insert(table.slice(n - 10))
    windows = (Window("sum", "amount", 3_600_000_000, 0), Window("stddev_samp", "amount", 3_600_000_000, 0))
    seg = index._segments(rows, windows)[3_600_000_000, 0]
    assert seg.tiled is not None and seg.lengths.min() > 40_000
    # Two edges of at most a tile each (~n / _TILES rows) instead of the whole window.
    assert seg.reduced.total <= 2 * 10 * 2 * n / _TILES
    got = [a.to_numpy() for a in index.aggregate(rows, windows)]
    values = table["amount"].to_numpy()
    for i in range(10):
        window = values[(ts >= ts[n - 10 + i] - 3_600_000) & (ts <= ts[n - 10 + i])]
        np.testing.assert_allclose(got[0][i], window.sum(), rtol=1e-9)
        deviations = window - window.mean()  # two passes over the rows: the reference
        np.testing.assert_allclose(got[1][i], np.sqrt((deviations @ deviations) / (len(window) - 1)), rtol=1e-9)
