"""The door the steps' state goes through (`dataflows.flow.step_state`), and the plain state of each object behind it:
rebuilt from its `state()` (pickled, as a snapshot stores it), an object behaves as the original from there on."""

from __future__ import annotations

import pickle
import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.flow.config import load_config
from dataflows.flow.messages import DeadLetter, Event, FeaturedEvent, FeaturePart, Label, Origin, Release
from dataflows.flow.shards import FeatureJoin
from dataflows.flow.state_journal import snapshot_log
from dataflows.flow.step_state import NOT_SAVED, STATE_FORMAT, StateFormatError, StepState, pack
from dataflows.watch.alerts import AlertEvaluator, AlertSettings
from dataflows.watch.metrics_reporter import MetricsReporter
from models import OnlineLearner, make_model
from tests.dataflows.test_alerts import CASES, transitions

T0 = 1_767_225_600_000


def stored(state):
    """A state as a resume sees it: pickled and read back."""
    return pickle.loads(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))


# -- the door ---------------------------------------------------------------------------------------------


def test_what_the_door_saves_it_gives_back_with_the_live_chunks(tmp_path):
    door = StepState("step", tmp_path, ("rows", "ids"))
    assert door.unpack(None) is None and door.open("k", None) == {"rows": [], "ids": []} and door.saving
    blobs = [
        door.save({"n": n}, {"rows": (b"r%d" % n, n), "ids": (b"i%d" % n, n)}, dead_below={"rows": 0, "ids": n})
        for n in range(1, 4)
    ]
    again = StepState("step", tmp_path, ("rows", "ids"))
    saved = again.unpack(blobs[1])
    assert saved["n"] == 2
    # The chunks of the third snapshot, which Bytewax never committed, are gone; 'ids' keeps its newest only.
    assert again.open("k", saved) == {"rows": [b"r1", b"r2"], "ids": [b"i2"]}
    assert [row["seq"] for row in snapshot_log(tmp_path)] == [1, 2, 3]
    assert StepState("step", tmp_path, ("rows", "ids")).open("other key", None) == {"rows": [], "ids": []}


def test_a_door_with_no_recovery_directory_saves_nothing_and_its_marker_is_refused(tmp_path):
    door = StepState("step", None, ("rows",))
    assert door.open("k", None) == {"rows": []} and not door.saving
    assert door.save({"n": 1}, {"rows": (b"r", 1)}, dead_below={"rows": 0}) == NOT_SAVED
    with pytest.raises(StateFormatError, match="no recovery directory"):
        door.unpack(NOT_SAVED)
    assert not (tmp_path / "eddy-state.sqlite3").exists()


def test_a_snapshot_of_another_format_or_step_is_refused_by_name():
    door = StepState("score_and_learn", None, ())
    with pytest.raises(StateFormatError, match=f"state format {STATE_FORMAT - 1}, this eddy needs {STATE_FORMAT}"):
        door.unpack(pickle.dumps({"format": STATE_FORMAT - 1, "step": "score_and_learn", "state": {}}))
    with pytest.raises(StateFormatError, match="step 'score_and_learn'"):
        door.unpack(pack("compute_features", {}))


# -- the learner step's objects ---------------------------------------------------------------------------


def event(i: int) -> Event:
    return Event(f"e{i:05d}", T0 + i * 1000, {}, None, Origin("events", 0, i))


labelled = st.lists(st.tuples(st.booleans(), st.floats(0.0, 1.0)), min_size=1, max_size=80)


@settings(max_examples=40, deadline=None)
@given(labelled, st.integers(0, 80), st.lists(st.sampled_from(["bad json", "no ts", "late"]), max_size=5))
def test_the_metrics_reporter_rebuilt_from_its_state_reports_the_same_counts(labels, at, dead):
    learner = OnlineLearner(make_model(), label_horizon_ms=10_000)
    reporter = MetricsReporter(every_events=7, every_s=60.0)
    copy = None
    for i, (y, _) in enumerate(labels):
        if i == min(at, len(labels) - 1):
            copy = MetricsReporter.from_state(stored(reporter.state()))
        for r in (reporter, copy):
            if r is not None:
                r.scored(event(i), "v1", 1000.0 + i)
                r.labels += y
                if i < len(dead):
                    r.dead_letter(dead[i])
        learner.score(f"e{i}", T0 + i, {"a": float(i)}, y)
    ours, theirs = (r.report(learner, 2000.0, None, final=True).figures for r in (reporter, copy))
    wall_clock = {"events_per_s", "events_per_s_run", "latency_ms_p50", "latency_ms_p99"}
    assert {k: v for k, v in ours.items() if k not in wall_clock} == {
        k: v for k, v in theirs.items() if k not in wall_clock
    }
    assert reporter.state() == copy.state()


def part(seq: int, key: str, family: str, features: dict) -> FeaturePart:
    return FeaturePart(seq, key, family, features, "v1")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(range(6)), st.integers(0, 6))
def test_the_feature_join_rebuilt_from_its_state_joins_as_the_original(order, at):
    """Two releases of two events, each with a part from two shards; the parts arrive in any order and the
    join is rebuilt from its state after any of them."""
    events = [event(i) for i in range(4)]
    items = [
        Release(0, [events[0], events[1]], ("user_id:0", "merchant_id:0"), ("user_id", "merchant_id"), "v1"),
        Release(
            1,
            [events[2], Label("e00002", True, T0, Origin("labels", 0, 0)), events[3]],
            ("user_id:0",),
            ("user_id",),
            "v1",
        ),
        part(0, "user_id:0", "user_id", {"e00000": {"u": 0}, "e00001": {"u": 1}}),
        part(0, "merchant_id:0", "merchant_id", {"e00000": {"m": 0}, "e00001": {"m": 1}}),
        part(1, "user_id:0", "user_id", {"e00002": {"u": 2}, "e00003": {"u": 3}}),
        DeadLetter(b"{", None, "not JSON", "decode", Origin("events", 0, 9)),
    ]
    pushed = [items[i] for i in order]
    if order.index(1) < order.index(0):  # a release never overtakes the one before it
        pushed = [items[0] if x is items[1] else items[1] if x is items[0] else x for x in pushed]

    def run(rebuild: bool) -> list:
        join, out = FeatureJoin(), []
        for i, item in enumerate(pushed):
            if rebuild and i == at:
                join = FeatureJoin.from_state(stored(join.state()))
            out.extend(join.push([item]))
        return [(type(o).__name__, getattr(o, "features", None), getattr(o, "event_id", None)) for o in out]

    assert run(rebuild=True) == run(rebuild=False)


reports = st.lists(st.sampled_from([report for case in CASES.values() for report in case]), max_size=12)


@settings(max_examples=60, deadline=None)
@given(reports, reports)
def test_the_alert_evaluator_rebuilt_from_its_state_fires_and_clears_as_the_original(before, after):
    evaluator = AlertEvaluator()
    transitions(evaluator, before)
    rebuilt = AlertEvaluator.from_state(stored(evaluator.state()), AlertSettings())
    assert rebuilt.state() == evaluator.state()
    assert transitions(rebuilt, after) == transitions(evaluator, after)


def test_the_rules_of_a_rebuilt_alert_evaluator_are_the_ones_it_is_given():
    evaluator = AlertEvaluator()
    assert transitions(evaluator, CASES["consumer_lag"][:2]) == [("consumer_lag", "firing")]
    off = AlertEvaluator.from_state(stored(evaluator.state()), AlertSettings.from_table({"enabled": False}))
    assert off.active == evaluator.active and transitions(off, CASES["consumer_lag"][2:]) == []


# -- at the learner step's boundary -----------------------------------------------------------------------


def test_the_learner_steps_snapshot_waits_for_the_registry_files_its_state_names(tmp_path, monkeypatch):
    """Refit files are written behind the scoring thread; a snapshot is taken only once they are on disk."""
    from dataflows.flow.steps import ScoreAndLearn
    from models import registry as registry_module

    written, write = [], registry_module._write

    def slow_write(directory, keep, record, member):
        time.sleep(0.2)
        write(directory, keep, record, member)
        written.append(record["version"])

    monkeypatch.setattr(registry_module, "_write", slow_write)
    base = load_config()
    ensemble = {**base.ensemble, "refit_every": 100, "window": 300, "lag": 10, "num_boost_round": 5}
    ensemble.update(background="none", registry_dir=str(tmp_path / "registry"))
    (tmp_path / "state").mkdir()
    step = ScoreAndLearn(replace(base, ensemble=ensemble), None, None, tmp_path / "state", "eddy")
    features = [{"a": (i * 7919 % 1000) / 1000, "b": float(i % 3)} for i in range(250)]
    items = [
        FeaturedEvent(Event(f"e{i}", T0 + i, {}, features[i]["a"] > 0.5, Origin("events", 0, i)), features[i], "v1")
        for i in range(250)
    ]
    step.on_batch(items)
    versions = [r["version"] for r in step.state.learner.model.registry.versions()]
    assert versions == [1, 2] and written != versions  # the files are still being written
    blob = step.snapshot()
    assert written == versions
    resumed = ScoreAndLearn(replace(base, ensemble=ensemble), None, blob, tmp_path / "state", "eddy")
    assert resumed.state.learner.model.registry.versions() == step.state.learner.model.registry.versions()
