"""The stateful steps' plain parts: model inputs and the state-format guard on snapshots."""

from __future__ import annotations

import math
import pickle
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataflows.flow.step_state import STATE_FORMAT, StateFormatError, pack, unpack
from dataflows.flow.steps import model_input


def test_model_input_leaves_out_what_river_cannot_learn_from():
    features = {
        "a": 1.5,
        "nan": float("nan"),
        "inf": float("-inf"),
        "null": None,
        "n": 3,
        "s": "FR",
        "b": True,
        "dec": Decimal("2.5"),
    }
    assert model_input(features) == {"a": 1.5, "n": 3, "s": "FR", "b": True, "dec": 2.5}


def test_a_snapshot_round_trips_under_its_step():
    assert unpack("score_and_learn", pack("score_and_learn", {"n": 1})) == {"n": 1}
    assert unpack("score_and_learn", None) is None


def test_a_snapshot_of_another_format_is_refused_by_name():
    old = pickle.dumps({"format": STATE_FORMAT - 1, "step": "score_and_learn", "state": {}})
    with pytest.raises(StateFormatError, match=rf"step 'score_and_learn': .* state format {STATE_FORMAT - 1}"):
        unpack("score_and_learn", old)


def value_by_value(features: dict) -> dict:
    """The model input spelled out plainly, one value at a time: the reference `model_input` must equal."""

    def kept(value):
        if type(value) in (int, str, bool):
            return value
        if type(value) is float:
            return value if math.isfinite(value) else None
        if isinstance(value, Decimal):
            return float(value)
        return None if value is None else str(value)

    return {name: kept(value) for name, value in features.items() if kept(value) is not None}


numeric_or_null = st.one_of(
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0]),
    st.integers(),
    st.booleans(),
    st.none(),
)
feature_value = st.one_of(
    numeric_or_null, st.text(max_size=2), st.sampled_from([Decimal("2.5"), np.float64(1.5), b"x", (1, 2)])
)
names = st.text(max_size=3)


@given(
    st.one_of(st.dictionaries(names, numeric_or_null, max_size=10), st.dictionaries(names, feature_value, max_size=10))
)
def test_model_input_is_the_value_by_value_one_on_every_path(features):
    got = model_input(features)
    assert list(got.items()) == list(value_by_value(features).items())
    assert [type(v) for v in got.values()] == [type(v) for v in value_by_value(features).values()]


def test_a_snapshot_of_another_step_is_refused():
    with pytest.raises(StateFormatError, match="step 'compute_features'"):
        unpack("compute_features", pack("score_and_learn", {}))


def test_unreadable_bytes_are_refused_with_advice():
    with pytest.raises(StateFormatError, match="fresh recovery directory"):
        unpack("order_by_event_time", b"not a pickle")


def test_a_run_without_recovery_saves_no_state_and_its_marker_is_refused_on_resume():
    from dataflows.flow.config import load_config
    from dataflows.flow.step_state import NOT_SAVED
    from dataflows.flow.steps import ScoreAndLearn

    step = ScoreAndLearn(load_config(), None, None)
    assert step.snapshot() == NOT_SAVED
    with pytest.raises(StateFormatError, match="without snapshots"):
        unpack("score_and_learn", NOT_SAVED)


def test_reports_within_one_micro_batch_time_their_own_events(monkeypatch):
    """Two reports fell in one batch of 2,500 events: with the clock read once per batch the second had no
    elapsed time (no rate), and every event's latency was measured at the batch's start."""
    from dataclasses import replace

    from dataflows.flow import steps
    from dataflows.flow.config import load_config
    from dataflows.flow.messages import Event, FeaturedEvent, Metrics, Origin

    clock = iter(range(10**9))
    monkeypatch.setattr(steps.time, "time", lambda: 1_000_000.0 + next(clock) / 1000)  # 1 ms a reading
    config = load_config()
    config = replace(config, ensemble={"enabled": False}, flow=replace(config.flow, metrics_every_events=1000))
    step = steps.ScoreAndLearn(config, None, None)
    items = [
        FeaturedEvent(
            Event(f"e{i}", 1_767_225_600_000 + i, {}, i % 2 == 0, Origin("events", 0, i, 999_000_000)), {}, "v"
        )
        for i in range(2500)
    ]
    out, _ = step.on_batch(items)
    reports = [item.figures for item in out if isinstance(item, Metrics)]
    assert len(reports) == 2
    assert reports[1]["events_per_s"] == pytest.approx(1000.0, rel=0.01)  # 1,000 events, ~1 ms each
    assert reports[1]["latency_ms_p99"] > reports[0]["latency_ms_p99"] + 900
