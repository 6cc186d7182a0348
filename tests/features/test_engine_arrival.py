"""Arrival mode: features at once, from what has arrived, whatever the order."""

from __future__ import annotations

from features import FeatureEngine

SQL = """-- group: user
-- entity: user_id
-- horizon: 1h
SELECT event_id,
    count(*) OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW) AS n_1h,
    sum(amount) OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)
        AS sum_1h
FROM events
"""


def event(i: int, minute: int, amount: float) -> dict:
    return {"event_id": f"e{i}", "ts": 1_767_225_600_000 + minute * 60_000, "user_id": "u", "amount": amount}


def test_out_of_order_events_get_features_from_what_arrived_before_them(tmp_path):
    (tmp_path / "user.sql").write_text(SQL)
    engine = FeatureEngine(tmp_path, {"user_id": "string", "amount": "double"})

    first = engine.push([event(1, 10, 1.0), event(2, 20, 2.0)])
    late = engine.push([event(3, 15, 4.0)])
    after = engine.push([event(4, 30, 8.0)])

    assert [(e["event_id"], f["n_1h"], f["sum_1h"]) for e, f in first] == [("e1", 1, 1.0), ("e2", 2, 3.0)]
    assert [(e["event_id"], f["n_1h"], f["sum_1h"]) for e, f in late] == [("e3", 2, 5.0)]
    assert [(e["event_id"], f["n_1h"], f["sum_1h"]) for e, f in after] == [("e4", 4, 15.0)]
    assert engine.counters["events"] == 4
    assert list(engine.buffer.table["event_id"].to_pylist()) == ["e1", "e3", "e2", "e4"]
