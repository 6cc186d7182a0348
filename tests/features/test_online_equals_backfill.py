"""The promise: for any stream, batch split and arrival order within the lateness, the online features
equal the backfill's: counts, strings and extremes exactly, NULL exactly where the backfill has NULL, and
floats within 1e-9 relative, or absolute 1e-9 times the stream's largest amount (never more than 1e-9), so
the comparison shrinks with the data (a sum of 5e-324 that became 0.0 is a difference). Floats are not compared
bit for bit: DuckDB adds a window's values in an order that depends on the rest of its input, and the backfill
sees another input than a micro-batch does. Bit-for-bit equality however the stream is cut is the online
plans' promise, checked in `test_segments.py`."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import FeatureEngine
from features.backfill import backfill
from features.schema import to_arrow
from tests.features.conftest import FIELDS, REPO, USER_COUNTS, RowOrder

SHORT = """\
-- group: short
-- entity: user_id, merchant_id
-- horizon: 10s
SELECT
    event_id,
    count(*) OVER w AS pair_n_10s,
    avg(amount) OVER w AS pair_mean_10s,
    stddev_samp(amount) OVER w AS pair_std_10s,
    max(amount) OVER w AS pair_max_10s,
    CASE WHEN ts - lag(ts) OVER previous <= INTERVAL 10 SECONDS
         THEN amount - lag(amount) OVER previous END AS pair_change
FROM events
WINDOW previous AS (PARTITION BY user_id, merchant_id ORDER BY ts, event_id),
    w AS (PARTITION BY user_id, merchant_id ORDER BY ts RANGE BETWEEN INTERVAL 10 SECONDS PRECEDING AND CURRENT ROW)
"""


# Runs on a segment plan (see features.segments): several frames, one ending before the current row.
JOINED = """\
-- group: joined
-- entity: merchant_id, user_id
-- horizon: 10s
SELECT
    event_id,
    count(*) OVER w AS j_n,
    count(amount) OVER w AS j_n_amount,
    min(amount) OVER (PARTITION BY user_id, merchant_id ORDER BY ts
                      RANGE BETWEEN INTERVAL 5 SECONDS PRECEDING AND CURRENT ROW) AS j_min_5s,
    amount - avg(amount) OVER earlier AS j_vs_earlier,
    date_diff('millisecond', max(ts) OVER earlier, ts) AS j_ms_since_earlier,
    var_pop(amount) OVER earlier AS j_var_earlier
FROM events
WINDOW w AS (PARTITION BY user_id, merchant_id ORDER BY ts RANGE BETWEEN INTERVAL 10 SECONDS PRECEDING AND CURRENT ROW),
    earlier AS (PARTITION BY user_id, merchant_id ORDER BY ts
                RANGE BETWEEN INTERVAL 10 SECONDS PRECEDING AND INTERVAL 1 MILLISECOND PRECEDING)
"""


@pytest.fixture(scope="module")
def test_sql(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sql")
    (folder / "user_counts.sql").write_text(USER_COUNTS)
    (folder / "short.sql").write_text(SHORT)
    (folder / "joined.sql").write_text(JOINED)
    return folder


def test_every_plan_is_exercised(test_sql):
    groups = FeatureEngine(test_sql, FIELDS).catalog.groups
    plans = {g.name: g.segments is not None for g in groups}
    assert plans == {"joined": True, "short": False, "user_counts": False}
    shipped = FeatureEngine(REPO / "sql" / "transactions", FIELDS).catalog.groups
    assert all(g.segments for g in shipped)


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 60))
    steps = st.sampled_from([0, 0, 1, 999, 1_000, 5_000, 10_000, 11_000, 3_600_000])
    gaps = draw(st.lists(steps, min_size=n, max_size=n))
    events, ts = [], 1_767_225_600_000
    for i, gap in enumerate(gaps):
        ts += gap
        events.append(
            {
                "event_id": f"e{draw(st.integers(0, 10**6)):07d}-{i}",
                "ts": ts,
                "user_id": draw(st.sampled_from(["a", "b", "c", None])),
                "merchant_id": draw(st.sampled_from(["m", "n"])),
                "amount": draw(st.one_of(st.none(), st.sampled_from([1.0, 2.5, 1e6]), st.floats(-1e3, 1e3))),
                "category": "grocery",
                "country": "FR",
                "label": draw(st.booleans()),
            }
        )
    lateness = draw(st.sampled_from([0, 1_000, 5_000]))
    delays = draw(st.lists(st.integers(0, lateness), min_size=n, max_size=n))
    noise = draw(st.permutations(range(n)))
    arrival = [
        e
        for _, _, e in sorted(
            zip([e["ts"] + d for e, d in zip(events, delays, strict=True)], noise, events, strict=True),
            key=lambda t: t[:2],
        )
    ]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    batches = [arrival[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    return events, lateness, batches


def tolerance(events: list[dict]) -> float:
    """The absolute difference allowed between floats computed from `events`: 1e-9 of their largest amount,
    as the rounding of a sum or a difference of amounts is relative to the amounts, not to its result; and
    at most 1e-9."""
    largest = max((abs(e["amount"]) for e in events if e.get("amount") is not None), default=0.0)
    return 1e-9 * min(largest, 1.0)


def same(a, b, abs_tol: float) -> bool:
    """Equal, floats within 1e-9 relative or `abs_tol` absolute (see `tolerance`), NULL only with NULL."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=abs_tol)
    return a == b


def check(sql_dir, events, lateness, batches, plan="segments"):
    engine = FeatureEngine(sql_dir, FIELDS)
    if plan == "sql":
        groups = tuple(replace(g, segments=None) for g in engine.catalog.groups)
        engine.catalog = replace(engine.catalog, groups=groups)
    online, released = {}, []
    order = RowOrder(lateness)
    for batch in [*(engine.push(order.push(b)) for b in batches), engine.push(order.flush())]:
        for event, features in batch:
            online[event["event_id"]] = features
            released.append((event["ts"], event["event_id"]))
    assert not order.late
    assert released == sorted(released)
    expected = backfill(sql_dir, to_arrow(events, FIELDS), FIELDS).to_pylist()
    assert len(online) == len(expected) == len(events)
    abs_tol = tolerance(events)
    for row in expected:
        got = online[row.pop("event_id")]
        assert got.keys() == row.keys()
        for name, value in row.items():
            assert same(got[name], value, abs_tol), (name, got[name], value)


@pytest.mark.slow
@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=scenarios())
@pytest.mark.parametrize("plan", ["segments", "sql"])
def test_online_equals_backfill_with_short_windows_and_eviction(test_sql, plan, scenario):
    check(test_sql, *scenario, plan=plan)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(scenario=scenarios())
@pytest.mark.parametrize("plan", ["segments", "sql"])
def test_online_equals_backfill_on_the_shipped_transactions_sql(plan, scenario):
    check(REPO / "sql" / "transactions", *scenario, plan=plan)


@pytest.mark.parametrize("plan", ["segments", "sql"])
@pytest.mark.parametrize("first", [5.028560593320989e-303, 5e-324, 2.5e-308, 1e300])
def test_extreme_magnitudes_keep_their_sums_and_means(plan, first):
    """Amounts near the smallest and the largest doubles keep DuckDB's sums and means: a mean of 5e-303 is
    not rounded to zero, so `amount / NULLIF(avg(amount), 0)` is 0.0, not NULL."""
    row = {"user_id": "a", "merchant_id": "m", "category": "grocery", "country": "FR", "label": False}
    events = [
        {**row, "event_id": "e0", "ts": 1_767_225_600_000, "amount": first},
        {**row, "event_id": "e1", "ts": 1_767_225_600_001, "amount": 0.0},
        {**row, "event_id": "e2", "ts": 1_767_225_600_002, "amount": first / 3},
    ]
    check(REPO / "sql" / "transactions", events, 0, [events], plan=plan)
