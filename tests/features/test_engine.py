"""The online engine: point in time, lateness (through the flow's ordering), ties, label hiding, eviction,
reload, snapshots."""

from __future__ import annotations

import os
import re

import pytest

from features import FeatureEngine, FeatureFileError
from tests.features.conftest import FIELDS, USER_COUNTS, RowOrder, event, revive

MIN = 60_000


def by_id(batch) -> dict:
    return {e["event_id"]: f for e, f in batch}


def test_features_see_the_past_and_never_the_future(sql_dir):
    engine = FeatureEngine(sql_dir, FIELDS)
    first = engine.push([event(0, 0, amount=1.0), event(1, MIN, amount=2.0), event(2, 2 * MIN, amount=40.0)])
    assert by_id(first) == {
        "e0000": {"n_1h": 1, "sum_1h": 1.0, "previous_id": None},
        "e0001": {"n_1h": 2, "sum_1h": 3.0, "previous_id": "e0000"},
        "e0002": {"n_1h": 3, "sum_1h": 43.0, "previous_id": "e0001"},
    }


def test_windows_forget_what_is_older_than_their_range(sql_dir):
    engine = FeatureEngine(sql_dir, FIELDS)
    engine.push([event(0, 0), event(1, 30 * MIN)])
    out = by_id(engine.push([event(2, 61 * MIN), event(3, 62 * MIN)]))
    assert out["e0002"]["n_1h"] == 2


def test_events_with_equal_ts_see_each_other_and_lag_breaks_ties_by_event_id(sql_dir):
    engine = FeatureEngine(sql_dir, FIELDS)
    out = by_id(engine.push([event(2, 1000), event(1, 1000)]))
    assert list(out) == ["e0001", "e0002"]
    assert [f["n_1h"] for f in out.values()] == [2, 2]
    assert out["e0002"]["previous_id"] == "e0001"


def test_arrival_order_within_the_lateness_does_not_matter(sql_dir):
    in_order = [event(i, i * 1000, amount=float(i)) for i in range(6)]
    shuffled = [in_order[k] for k in (1, 0, 3, 2, 5, 4)]
    a, b = FeatureEngine(sql_dir, FIELDS), FeatureEngine(sql_dir, FIELDS)
    out_a = by_id(a.push(in_order))
    order = RowOrder(lateness_ms=1000)
    batches = [b.push(order.push(shuffled[:3])), b.push(order.push(shuffled[3:])), b.push(order.flush())]
    assert {k: v for batch in batches for k, v in by_id(batch).items()} == out_a
    assert not order.late


def test_late_events_get_no_features_are_counted_and_stay_out_of_the_windows(sql_dir):
    engine, order = FeatureEngine(sql_dir, FIELDS), RowOrder(lateness_ms=1000)
    engine.push(order.push([event(0, 0), event(1, 10_000)]))
    out = engine.push(order.push([event(2, 5_000), event(3, 20_000)]))
    assert [event_id for event_id, _ in order.late] == ["e0002"] and "e0002" not in by_id(out)
    assert "before the watermark 9000" in order.late[0][1]
    assert order.order.counters["late_events"] == 1
    assert by_id(engine.push(order.flush()))["e0003"]["n_1h"] == 3


def test_nothing_is_accepted_behind_a_flush(sql_dir):
    engine, order = FeatureEngine(sql_dir, FIELDS), RowOrder(lateness_ms=5_000)
    engine.push(order.push([event(0, 0)]))
    assert len(engine.push(order.flush())) == 1
    assert engine.push(order.push([event(1, 0)])).events == [] and len(order.late) == 1


def test_the_label_reaches_the_flow_but_not_the_sql(sql_dir):
    engine = FeatureEngine(sql_dir, {**FIELDS, "label": "boolean"})
    released = engine.push([event(0, 0, label=True)])
    assert released.events[0]["label"] is True
    assert "label" not in engine.buffer.table.column_names


def test_values_never_become_sql_text(sql_dir):
    engine = FeatureEngine(sql_dir, FIELDS)
    nasty = "u'); DROP TABLE events; --"
    out = [*engine.push([event(0, 0, user=nasty), event(1, 1, user=nasty)])]
    assert [f["n_1h"] for _, f in out] == [1, 2]


def test_memory_is_bounded_by_the_horizon_not_the_stream(sql_dir):
    engine = FeatureEngine(sql_dir, FIELDS)
    for start in range(0, 10_000, 500):
        engine.push([event(i, i * 2_000, user=f"u{i % 7}") for i in range(start, start + 500)])
    assert len(engine.buffer) <= 3_600_000 // 2_000 + 1
    assert engine.counters["evicted"] >= 10_000 - 1_801 - 1


def test_an_edit_loads_under_a_new_version_and_applies_to_buffered_history(sql_dir):
    engine = FeatureEngine(sql_dir, FIELDS)
    engine.push([event(i, i * MIN, amount=10.0) for i in range(5)])
    before = engine.features_version
    edited = USER_COUNTS.replace("sum(amount) OVER last_hour", "max(amount) OVER last_hour + 1")
    (sql_dir / "user_counts.sql").write_text(edited)
    os.utime(sql_dir / "user_counts.sql", ns=(1, 1))
    out = engine.push([event(5, 5 * MIN, amount=3.0), event(6, 6 * MIN)])
    assert engine.features_version != before and out.features_version == engine.features_version
    assert out.reload.changed and out.reload.previous_version == before
    assert engine.push([]).reload is None
    assert by_id(out)["e0005"] == {"n_1h": 6, "sum_1h": 11.0, "previous_id": "e0004"}


def test_added_and_removed_files_are_noticed(sql_dir):
    engine = FeatureEngine(sql_dir, FIELDS)
    (sql_dir / "double.sql").write_text(
        "-- group: d\n-- entity: none\n-- horizon: 0s\nSELECT event_id, amount * 2 AS twice FROM events\n"
    )
    report = engine.reload()
    assert report.changed and "twice" in engine.feature_names
    (sql_dir / "user_counts.sql").unlink()
    assert engine.reload().changed
    assert engine.feature_names == ["twice"]


def test_an_invalid_edit_keeps_the_previous_definitions_and_says_why(sql_dir):
    engine = FeatureEngine(sql_dir, FIELDS)
    before = engine.features_version
    (sql_dir / "user_counts.sql").write_text(USER_COUNTS.replace("sum(amount)", "sum(amout)"))
    report = engine.reload()
    assert not report.changed and engine.features_version == before
    assert "line 7" in str(report.errors[0]) and "amout" in str(report.errors[0])
    assert engine.counters["reload_errors"] == 1
    assert engine.push([event(0, 0)]).reload is None
    (sql_dir / "user_counts.sql").write_text("-- group: g\n")
    out = engine.push([])
    assert not out.reload.changed and "missing header key(s) entity, horizon" in str(out.reload.errors[0])
    assert by_id(engine.push([event(1, 1)]))["e0001"]["sum_1h"] == 2.0


def test_a_bad_folder_fails_at_start(tmp_path):
    (tmp_path / "bad.sql").write_text("SELECT 1\n")
    with pytest.raises(FeatureFileError, match=re.escape("bad.sql': line 1: missing header key")):
        FeatureEngine(tmp_path, FIELDS)


def stream(n: int) -> list[dict]:
    return [event(i, i * 7_000 + (i % 3) * 1_000, user=f"u{i % 4}", amount=float(i % 11)) for i in range(n)]


@pytest.mark.parametrize("how", ["snapshot", "pickle", "deepcopy"])
def test_state_survives_snapshot_pickle_and_deepcopy(sql_dir, how):
    events = stream(300)
    whole = FeatureEngine(sql_dir, FIELDS)
    expected = [by_id(whole.push(events[i : i + 50])) for i in range(0, 300, 50)]

    engine = FeatureEngine(sql_dir, FIELDS)
    got = [by_id(engine.push(events[i : i + 50])) for i in range(0, 150, 50)]
    engine.push([])
    engine = revive(engine, how, sql_dir)
    assert engine._con is None
    got += [by_id(engine.push(events[i : i + 50])) for i in range(150, 300, 50)]
    assert got == expected
    assert engine.counters == whole.counters


def test_a_snapshot_with_other_fields_is_refused(sql_dir):
    blob = FeatureEngine(sql_dir, FIELDS).snapshot()
    with pytest.raises(ValueError, match="differs from the fields given"):
        FeatureEngine.restore(blob, sql_dir, {**FIELDS, "extra": "bigint"})


def test_the_phishing_pass_through_gives_each_event_its_own_fields():
    from dataflows.tools.datasets import phishing
    from features.timestamps import to_ms
    from tests.features.conftest import REPO

    events = [{**e, "ts": to_ms(e["ts"])} for e in phishing(limit=50)]
    fields = {k: "double" for k in events[0] if k not in ("event_id", "ts", "label")}
    engine = FeatureEngine(REPO / "sql" / "phishing", fields)
    out = [*engine.push(events)]
    assert len(out) == 50
    assert all(f == {k: float(e[k]) for k in fields} for e, f in out)
