"""The segment plan: the shipped SQL runs on it, its features do not depend on how the stream is cut, it
survives restores, forgets what it evicts, and gives way to the file's own SQL where it cannot answer."""

from __future__ import annotations

import itertools
import logging
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features import FeatureEngine
from features.backfill import backfill
from features.planner import plan_group
from features.schema import to_arrow
from features.segments import WindowIndex, _Segments
from features.spec import load_group
from tests.features.conftest import FIELDS, REPO, RowOrder, in_event_time, revive
from tests.features.test_online_equals_backfill import same, tolerance

TRANSACTIONS = REPO / "sql" / "transactions"
HEADER = "-- group: g\n-- entity: user_id\n-- horizon: 1h\n"
START = 1_767_225_600_000


def payments(n: int, seed: int = 0, gap_ms: int = 20_000) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "event_id": f"p{i:05d}",
            "ts": START + i * gap_ms + rng.choice([0, 0, 1, 500]),
            "user_id": f"u{rng.randrange(12)}",
            "merchant_id": f"m{rng.randrange(5)}",
            "amount": rng.choice([None, round(rng.uniform(1, 500), 2), 1e6]),
            "category": "grocery",
            "country": "FR",
        }
        for i in range(n)
    ]


def by_id(batches) -> dict:
    return {event["event_id"]: features for batch in batches for event, features in batch}


def planned(path, fields=FIELDS):
    return plan_group(load_group(path, fields), fields)


def run(events: list[dict], cuts: list[int], sql_dir=TRANSACTIONS, fields=FIELDS) -> dict:
    engine = FeatureEngine(sql_dir, fields)
    bounds = [0, *cuts, len(events)]
    return by_id([engine.push(batch) for batch in in_event_time([events[a:b] for a, b in itertools.pairwise(bounds)])])


def test_the_shipped_transactions_sql_runs_on_segment_plans():
    groups = {g.name: g for g in FeatureEngine(TRANSACTIONS, FIELDS).catalog.groups}
    assert all(g.segments is not None for g in groups.values())
    # Bare windows are read straight off the index; only user_day's two computed items need DuckDB.
    assert [name for name, g in groups.items() if g.segments.residual_sql] == ["user_day"]
    assert {n for n, _ in groups["user_day"].segments.outputs} == {
        "user_count_24h",
        "user_sum_24h",
        "user_mean_24h",
        "user_std_24h",
        "user_max_24h",
    }


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_features_are_bit_identical_however_the_stream_is_cut(seed, cuts):
    events = payments(300, seed)
    assert_same_bits(run(events, sorted(cuts)), run(events, []))


def assert_same_bits(got: dict, want: dict) -> None:
    """The same events with the same features, compared with `==` on floats, not a tolerance: recovery and
    replays depend on exactly the same numbers."""
    assert got.keys() == want.keys()
    for event_id, features in want.items():
        assert got[event_id] == features, event_id


def test_the_segment_plan_equals_the_backfill_on_the_shipped_sql():
    events = payments(600, seed=3, gap_ms=150_000)
    online = run(events, [100, 101, 350])
    expected = backfill(TRANSACTIONS, to_arrow(events, FIELDS), FIELDS).to_pylist()
    abs_tol = tolerance(events)
    assert len(expected) == len(online) == 600
    for row in expected:
        got = online[row.pop("event_id")]
        assert all(same(got[k], v, abs_tol) for k, v in row.items()), (got, row)


@pytest.mark.parametrize("how", ["snapshot", "pickle", "deepcopy"])
def test_a_restored_engine_rebuilds_its_indexes_and_gives_the_same_bits(how):
    events = payments(400, seed=5)
    whole = run(events, list(range(50, 400, 50)))
    engine, order = FeatureEngine(TRANSACTIONS, FIELDS), RowOrder()
    got = by_id([engine.push(order.push(events[i : i + 50])) for i in range(0, 200, 50)])
    assert engine._indexes
    engine = revive(engine, how, TRANSACTIONS)
    assert engine._indexes == {}
    got |= by_id([*(engine.push(order.push(events[i : i + 50])) for i in range(200, 400, 50))])
    got |= by_id([engine.push(order.flush())])
    assert got == whole


def test_aggregates_the_plan_does_not_compute_run_the_files_sql_and_equal_the_backfill(tmp_path):
    path = tmp_path / "g.sql"
    window = "OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)"
    # DuckDB sums BIGINT into a HUGEINT, a type the segment plan does not produce.
    path.write_text(HEADER + f"SELECT event_id, sum(n) {window} AS n_1h FROM events\n")
    fields = {**FIELDS, "n": "bigint"}
    assert planned(path, fields).segments is None
    events = [{**e, "n": None if e["amount"] is None else int(e["amount"] * 100)} for e in payments(200, seed=4)]
    online = run(events, [1, 60, 61, 150], tmp_path, fields)
    expected = backfill(tmp_path, to_arrow(events, fields), fields).to_pylist()
    assert [online[row.pop("event_id")] for row in expected] == expected
    path.write_text(HEADER + f"SELECT event_id, max(n) {window} AS n_max, avg(n) {window} AS n_mean FROM events\n")
    assert planned(path, {**FIELDS, "n": "bigint"}).segments is not None


def test_events_years_apart_fall_back_to_the_files_sql_and_stay_exact(caplog):
    events = payments(40, seed=9)
    later = START + 3 * 365 * 86_400_000  # beyond the ~2 years one index key spans
    events += [{**e, "event_id": f"q{i:03d}", "ts": later + i * 20_000} for i, e in enumerate(payments(40, seed=10))]
    with caplog.at_level(logging.WARNING, logger="eddy.features"):
        online = run(events, [40, 41, 60])
    assert "window index" in caplog.text
    expected = backfill(TRANSACTIONS, to_arrow(events, FIELDS), FIELDS).to_pylist()
    abs_tol = tolerance(events)
    for row in expected:
        got = online[row.pop("event_id")]
        assert all(same(got[k], v, abs_tol) for k, v in row.items()), (got, row)


def test_the_index_forgets_evicted_events_and_entities():
    index = WindowIndex(("user_id",), {"amount": "double"})
    for step in range(200):
        batch = [
            {"event_id": f"e{step}-{i}", "ts": START + step * 60_000 + i, "user_id": f"u{step}-{i}", "amount": 1.0}
            for i in range(500)
        ]
        index.insert(to_arrow(batch, FIELDS))
        index.evict(START + (step - 5) * 60_000)
    # 100,000 events and as many users went through; about six steps' worth stay.
    assert len(index) <= 6 * 500 * 1.25 + 4096
    assert len(index._codes) <= 2 * len(index) + 4096


def test_an_edit_that_reads_a_new_column_rebuilds_the_index_from_history(tmp_path):
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    window = "OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)"
    path = sql_dir / "user.sql"
    path.write_text(HEADER + f"SELECT event_id, sum(amount) {window} AS total FROM events\n")
    events = payments(200, seed=11)
    engine, order = FeatureEngine(sql_dir, FIELDS), RowOrder()
    engine.push(order.push(events[:120]))
    assert engine._indexes[("user_id",)].columns == {"amount": "double"}
    path.write_text(
        HEADER + f"SELECT event_id, sum(amount) {window} AS total, count(country) {window} AS n FROM events\n"
    )
    online = by_id([engine.push(order.push(events[120:])), engine.push(order.flush())])
    assert engine._indexes[("user_id",)].columns == {"amount": "double", "country": "string"}
    expected = backfill(sql_dir, to_arrow(events, FIELDS), FIELDS).to_pylist()
    abs_tol = tolerance(events)
    # The new count covers the hour before the edit at once: the index was rebuilt from the buffered events.
    checked = [row for row in expected if row["event_id"] in online]
    assert len(checked) >= 80 and any(row["n"] > 1 for row in checked)
    for row in checked:
        got = online[row.pop("event_id")]
        assert all(same(got[k], v, abs_tol) for k, v in row.items()), (got, row)


def test_a_release_in_one_batch_equals_it_in_two():
    events = payments(300, seed=13)
    two, one = FeatureEngine(TRANSACTIONS, FIELDS), FeatureEngine(TRANSACTIONS, FIELDS)
    expected, got, batches = {}, {}, 0
    for i in range(0, 300, 70):
        order = RowOrder()  # the chunk as the ordering releases it: all but its newest ts, then the rest
        expected |= by_id([two.push(order.push(events[i : i + 70])), two.push(order.flush())])
        batch = one.push(events[i : i + 70])
        got |= by_id([batch])
        batches += 1
        assert len(batch) == len(events[i : i + 70])
    assert got == expected
    assert one.counters["batches"] == batches < two.counters["batches"]


@settings(max_examples=200)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False) | st.just(0.1), min_size=1, max_size=60),
    runs=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=1, max_size=12),
)
def test_reducing_runs_in_place_equals_reducing_gathered_segments(values, runs):
    whole = np.array(values)
    lo = np.array([min(a, b, len(whole)) for a, b in runs])
    hi = np.array([min(max(a, b), len(whole)) for a, b in runs])
    in_place = _Segments(lo, hi, index_size=0)  # runs over at least half the index: reduced in place
    gathering = _Segments(lo, hi, index_size=10**9)  # a small part of a long index: its rows gathered
    assert not in_place.gathered and gathering.gathered
    for ufunc, empty in [(np.add, 0.0), (np.maximum, -np.inf), (np.minimum, np.inf)]:
        gathered = gathering.reduce_segments(ufunc, whole[gathering.positions], empty)
        # The same bits: each run is reduced over the same values in the same order either way.
        assert in_place.reduce_segments(ufunc, whole, empty).tolist() == gathered.tolist()
        expected = [ufunc.reduce(whole[a:b]) if b > a else empty for a, b in zip(lo, hi, strict=True)]
        np.testing.assert_allclose(gathered, expected, rtol=1e-9, atol=1e-6)


def test_min_max_and_counts_over_nulls_and_ts_equal_the_backfill(tmp_path):
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    windows = {
        "w": "PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW",
        "before": "PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 10 MINUTES PRECEDING "
        "AND INTERVAL 1 MILLISECOND PRECEDING",
    }
    items = [
        f"{f}({c}) OVER {w} AS {f}_{c}_{w}"
        for w in windows
        for f, c in [("min", "ts"), ("max", "ts"), ("min", "amount"), ("max", "amount"), ("count", "amount")]
    ]
    (sql_dir / "g.sql").write_text(
        HEADER
        + "SELECT event_id, "
        + ", ".join(items)
        + " FROM events WINDOW "
        + ", ".join(f"{name} AS ({spec})" for name, spec in windows.items())
        + "\n"
    )
    assert planned(sql_dir / "g.sql").segments is not None
    events = payments(500, seed=17, gap_ms=30_000)
    online = run(events, [1, 2, 90, 250], sql_dir)
    expected = backfill(sql_dir, to_arrow(events, FIELDS), FIELDS).to_pylist()
    abs_tol = tolerance(events)
    assert any(row["min_amount_w"] is None for row in expected) and any(row["max_ts_before"] for row in expected)
    for row in expected:
        got = online[row.pop("event_id")]
        assert all(same(got[k], v, abs_tol) for k, v in row.items()), (got, row)


def test_computed_items_are_given_exactly_the_columns_they_read(tmp_path):
    window = "OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)"
    path = tmp_path / "g.sql"
    path.write_text(
        HEADER + f"SELECT event_id, CASE WHEN \"country\" = 'FR' THEN amount END / count(*) {window} AS share,\n"
        f"  sum(amount) {window} * 2 AS doubled FROM events\n"
    )
    plan = planned(path).segments
    assert plan is not None and plan.residual_sql is not None
    # The `*` of `sum(...) * 2` could be a star: every column then goes to DuckDB.
    assert plan.residual_columns == ("event_id", "ts", *FIELDS)
    path.write_text(
        HEADER
        + f"SELECT event_id, CASE WHEN \"country\" = 'FR' THEN amount END / count(*) {window} AS share FROM events\n"
    )
    plan = planned(path).segments
    assert plan.residual_columns == ("amount", "country")
    events = payments(300, seed=19)
    online = run(events, [50, 51, 200], tmp_path)
    expected = backfill(tmp_path, to_arrow(events, FIELDS), FIELDS).to_pylist()
    abs_tol = tolerance(events)
    assert any(row["share"] is not None for row in expected)
    for row in expected:
        got = online[row.pop("event_id")]
        assert same(got["share"], row["share"], abs_tol), (got, row)
