"""OnlineLearner: test-then-train, delayed and early labels, expiry, counters, snapshot-ability."""

from __future__ import annotations

import copy
import itertools
import pickle

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from river import datasets, dummy

from models.learner import DEADLINE_SLACK, UNTRAINED_SCORE, OnlineLearner
from models.pipelines import MODELS, make_model

HORIZON = 10_000
EVENTS = list(itertools.islice(datasets.Phishing(), 200))


def learner(horizon: int = HORIZON, name: str = "logistic_regression") -> OnlineLearner:
    return OnlineLearner(make_model(name), label_horizon_ms=horizon, window=50)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_untrained_model_scores_one_half(name):
    assert learner(name=name).score("e0", 0, EVENTS[0][0]).score == UNTRAINED_SCORE


def test_model_that_saw_only_false_scores_zero():
    online = learner(name="hoeffding_adaptive_tree")
    online.score("e0", 0, {"a": 1.0}, False)
    assert online.score("e1", 1, {"a": 1.0}).score == 0.0


def test_inline_label_is_scored_before_it_is_learned():
    online, reference = learner(), make_model()
    for i, (x, y) in enumerate(EVENTS):
        result = online.score(f"e{i}", i, x, y)
        assert result.score == reference.predict_proba_one(x)[True]
        assert result.label_inline and result.learned
        reference.learn_one(x, y)
    assert online.report()["labels_inline"] == len(EVENTS)
    assert online.report()["pending_events"] == 0


def test_delayed_label_learns_the_features_and_counts_the_score_given_at_scoring_time():
    online, reference = learner(), make_model()
    x, y = dict(EVENTS[0][0]), EVENTS[0][1]
    result = online.score("e0", 0, x)
    assert not result.learned and not result.label_inline
    x["https"] = 123.0
    assert online.label("e0", y) is True
    reference.learn_one(EVENTS[0][0], y)
    probe = EVENTS[1][0]
    assert online.predict(probe) == reference.predict_proba_one(probe)[True]
    assert online.report()["labels_delayed"] == 1
    assert online.report()["log_loss"] == pytest.approx(0.6931471805599453)


def test_label_before_its_event_is_applied_when_the_event_is_scored():
    online, reference = learner(), make_model()
    online.score("warm-up", 0, EVENTS[0][0], EVENTS[0][1])
    reference.learn_one(*EVENTS[0])
    x, y = EVENTS[1]
    assert online.label("e1", y) is False
    assert online.report()["pending_labels"] == 1
    result = online.score("e1", 5, x)
    assert result.learned and not result.label_inline
    assert result.score == reference.predict_proba_one(x)[True]
    reference.learn_one(x, y)
    assert online.predict(EVENTS[2][0]) == reference.predict_proba_one(EVENTS[2][0])[True]
    report = online.report()
    assert (report["labels_early"], report["pending_labels"], report["pending_events"]) == (1, 0, 0)


def test_label_before_any_event_waits_a_horizon_from_the_first_event_time():
    online = learner()
    online.label("late", True)
    online.score("e0", 1_000_000, EVENTS[0][0])
    online.expire(1_000_000 + HORIZON)
    assert online.report()["pending_labels"] == 1
    online.expire(1_000_000 + HORIZON + 1)
    assert online.report()["pending_labels"] == 0
    assert online.report()["labels_unmatched"] == 1


def test_event_expires_strictly_after_the_horizon_and_its_label_then_goes_unmatched():
    online = learner()
    online.score("e0", 1_000, EVENTS[0][0])
    assert online.expire(1_000 + HORIZON) == 0
    assert online.expire(1_000 + HORIZON + 1) == 1
    assert online.report()["labels_expired"] == 1
    assert online.label("e0", True) is False
    online.expire(1_000 + 3 * HORIZON)
    report = online.report()
    assert (report["labels_unmatched"], report["labels"], report["pending_labels"]) == (1, 0, 0)


def test_scoring_advances_event_time_and_expires_old_events():
    online = learner()
    online.score("old", 0, EVENTS[0][0])
    online.score("new", HORIZON + 1, EVENTS[1][0])
    assert online.report()["labels_expired"] == 1
    assert online.label("new", True) is True


def test_out_of_order_event_expires_by_its_own_time():
    online = learner()
    online.score("b", 5_000, EVENTS[0][0])
    online.score("a", 1_000, EVENTS[1][0])
    assert online.expire(1_000 + HORIZON + 1) == 1
    assert online.label("b", True) is True


def test_second_label_for_a_labelled_event_is_unmatched():
    online = learner()
    online.score("e0", 0, EVENTS[0][0], True)
    online.label("e0", False)
    online.expire(2 * HORIZON)
    report = online.report()
    assert (report["labels_inline"], report["labels_unmatched"], report["labels"]) == (1, 1, 1)


def test_inline_label_wins_over_an_early_one():
    online = learner()
    online.label("e0", False)
    assert online.score("e0", 0, EVENTS[0][0], True).label_inline
    report = online.report()
    assert (report["labels_inline"], report["labels_early"], report["labels_unmatched"]) == (1, 0, 1)


def test_duplicate_event_is_counted_and_the_latest_is_kept():
    online = learner()
    online.score("e0", 0, EVENTS[0][0])
    online.score("e0", 1, EVENTS[1][0])
    assert online.report()["events_duplicate"] == 1
    assert online.label("e0", True) is True
    assert online.expire(10 * HORIZON) == 0


@pytest.mark.parametrize("label", [1, 0, "true", None])
def test_labels_must_be_bool(label):
    online = learner()
    with pytest.raises(TypeError, match="must be a bool"):
        online.label("e0", label)
    if label is not None:
        with pytest.raises(TypeError, match="must be a bool"):
            online.score("e0", 0, {}, label)


def test_negative_horizon_is_refused():
    with pytest.raises(ValueError, match="label_horizon_ms must be >= 0"):
        OnlineLearner(make_model(), label_horizon_ms=-1)


def test_pending_events_stay_bounded_by_the_horizon_when_labels_never_come():
    online = learner(horizon=50)
    for i in range(1000):
        online.score(f"e{i}", i, EVENTS[i % len(EVENTS)][0])
        assert online.report()["pending_events"] <= 51
        assert len(online.event_deadlines) <= 51


def through_state(online: OnlineLearner) -> OnlineLearner:
    """What a recovery snapshot does: the learner's plain state, pickled, and the learner rebuilt from it."""
    return OnlineLearner.from_state(pickle.loads(pickle.dumps(online.state())))


@pytest.mark.parametrize("snapshot", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o)), through_state])
def test_snapshot_mid_stream_continues_identically(snapshot):
    online = learner()
    for i, (x, _) in enumerate(EVENTS[:100]):
        online.score(f"e{i}", i * 100, x)
        if i >= 5:
            online.label(f"e{i - 5}", EVENTS[i - 5][1])
    twin = snapshot(online)
    for i, (x, y) in enumerate(EVENTS[100:], start=100):
        assert online.score(f"e{i}", i * 100, x, y) == twin.score(f"e{i}", i * 100, x, y)
    assert online.report() == twin.report()


plan = st.lists(
    st.tuples(
        st.integers(0, 30_000),
        st.sampled_from(["inline", "after", "before", "never"]),
        st.integers(0, 5),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(plan, st.integers(0, 20_000))
def test_every_label_and_event_is_accounted_for(events, horizon):
    """Whatever the order, each label ends learned or unmatched, and each event labelled or expired."""
    online = OnlineLearner(make_model(), label_horizon_ms=horizon)
    steps = []
    for i, (ts, how, shift, y) in enumerate(events):
        steps.append((2 * i, ("score", f"e{i}", ts, y if how == "inline" else None)))
        if how in ("after", "before"):
            steps.append((2 * i + (2 * shift + 1 if how == "after" else -2 * shift - 1), ("label", f"e{i}", y)))
    for _, step in sorted(steps, key=lambda s: s[0]):
        if step[0] == "score":
            online.score(step[1], step[2], {"x": 1.0}, step[3])
        else:
            online.label(step[1], step[2])
    online.expire(10**9)
    report = online.report()
    label_messages = sum(how in ("after", "before") for _, how, _, _ in events)
    learned = report["labels_delayed"] + report["labels_early"]
    assert learned + report["labels_unmatched"] == label_messages
    assert report["labels_inline"] + learned + report["labels_expired"] == len(events)
    assert report["labels"] == report["labels_inline"] + learned
    assert report["pending_events"] == report["pending_labels"] == 0


def within_bounds(online: OnlineLearner) -> bool:
    return (
        len(online.event_deadlines) <= 2 * len(online.pending_events) + DEADLINE_SLACK
        and len(online.label_deadlines) <= 2 * len(online.pending_labels) + DEADLINE_SLACK
    )


def test_deadline_queues_stay_within_twice_the_pending_entries_when_labels_come():
    """100k events labelled 10 events late, then 100k labels that come 10 labels before their events: the
    deadline queues hold about what is pending (10), not one entry per event of the 24 h horizon."""
    online = OnlineLearner(dummy.PriorClassifier(), label_horizon_ms=86_400_000)
    n, late = 100_000, 10
    for i in range(n):
        online.score(f"e{i}", i, {"a": 1.0})
        if i >= late:
            assert online.label(f"e{i - late}", i % 2 == 0)
        assert within_bounds(online)
    for i in range(n):
        assert not online.label(f"f{i}", i % 2 == 0)
        if i >= late:
            assert online.score(f"f{i - late}", n + i, {"a": 1.0}).learned
        assert within_bounds(online)
    report = online.report()
    assert (report["pending_events"], report["pending_labels"]) == (late, late)
    assert (report["labels_delayed"], report["labels_early"], report["labels_expired"]) == (n - late, n - late, 0)
    assert len(online.event_deadlines) <= 2 * late + DEADLINE_SLACK
    assert len(online.label_deadlines) <= 2 * late + DEADLINE_SLACK


class NeverCompacts(OnlineLearner):
    """The learner with every stale deadline entry kept until its deadline."""

    def _compact(self) -> None:
        pass


steps = st.lists(
    st.one_of(
        st.tuples(st.just("score"), st.integers(0, 5), st.integers(0, 30_000), st.sampled_from([None, None, True])),
        st.tuples(st.just("label"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("expire"), st.integers(0, 40_000)),
    ),
    max_size=80,
)
# Three events pending, two labelled: the event queue is rebuilt around the third, which must still expire.
EVENTS_REBUILT = [
    *(("score", i, i, None) for i in range(3)),
    ("label", 0, True),
    ("label", 1, False),
    ("expire", 5_000),
]
# Labels e0 (deadline 1000) and e1..e4 (1500), three of them matched: the label queue is rebuilt around e0
# and e4, and e0 alone must go unmatched at 1200.
LABELS_REBUILT = [
    ("score", 5, 0, None),
    ("label", 0, True),
    ("expire", 500),
    *(("label", i, True) for i in range(1, 5)),
    *(("score", i, 500, None) for i in range(1, 4)),
    ("expire", 1_200),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps, st.integers(0, 20_000))
@example(EVENTS_REBUILT, 1_000)
@example(LABELS_REBUILT, 1_000)
def test_rebuilding_the_deadline_queues_changes_nothing_but_their_size(monkeypatch, steps, horizon):
    """With a rebuild whenever a queue holds a stale entry, the same events and labels expire, at the same
    calls, as when every stale entry waits for its deadline (ids reused: duplicates, relabels, early labels)."""
    monkeypatch.setattr("models.learner.DEADLINE_SLACK", 0)
    online = OnlineLearner(dummy.PriorClassifier(), label_horizon_ms=horizon)
    reference = NeverCompacts(dummy.PriorClassifier(), label_horizon_ms=horizon)
    for step in [*steps, ("expire", 10**9)]:
        results = []
        for learner_ in (online, reference):
            if step[0] == "score":
                results.append(learner_.score(f"e{step[1]}", step[2], {"a": 1.0}, step[3]))
            elif step[0] == "label":
                results.append(learner_.label(f"e{step[1]}", step[2]))
            else:
                results.append(learner_.expire(step[1]))
        assert results[0] == results[1]
        assert online.report() == reference.report()
        assert online.pending_events == reference.pending_events
        assert online.pending_labels == reference.pending_labels
        assert len(online.event_deadlines) <= 2 * len(online.pending_events)
        assert len(online.label_deadlines) <= 2 * len(online.pending_labels)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 399), st.integers(0, 12))
def test_a_learner_rebuilt_from_its_state_scores_and_refits_as_the_original(at, delay):
    """An ensemble with refits pending and labels waiting: the learner rebuilt from `state()` at any event
    gives the original's scores, member scores and versions, and the same report, from there on."""
    from models.ensemble import Ensemble

    def fresh() -> OnlineLearner:
        model = Ensemble(refit_every=100, window=300, lag=30, num_boost_round=10, background=None)
        return OnlineLearner(model, label_horizon_ms=HORIZON, window=50)

    def feed(online: OnlineLearner, start: int, stop: int) -> list:
        out = []
        for i in range(start, stop):
            x, y = EVENTS[i % len(EVENTS)]
            meta = {"ts": float(i), "offset": i, "features_version": "v1"}
            out.append(online.score(f"e{i}", i * 100, x, y if i % 2 else None, meta))
            if i % 2 == 0 and i >= delay:
                online.label(f"e{i - delay}", EVENTS[(i - delay) % len(EVENTS)][1])
        return out

    whole = fresh()
    expected = feed(whole, 0, 400)
    online = fresh()
    assert feed(online, 0, at) == expected[:at]
    rebuilt = through_state(online)
    assert feed(rebuilt, at, 400) == expected[at:]
    # The quality figures are sums over the same labels; a snapshot folds a tracker's queue early, which may
    # change the last digit of a sum.
    assert flat(rebuilt.report()) == pytest.approx(flat(whole.report()), rel=1e-12, abs=1e-15)


def flat(report: dict, prefix: str = "") -> dict:
    out = {}
    for name, value in report.items():
        out.update(flat(value, f"{prefix}{name}.") if isinstance(value, dict) else {f"{prefix}{name}": value})
    return out


class Recording(dummy.NoChangeClassifier):
    """A River classifier that keeps what it learned, in order."""

    def __init__(self):
        super().__init__()
        self.learned: list[tuple[dict, bool]] = []

    def learn_one(self, x, y):
        self.learned.append((dict(x), y))
        super().learn_one(x, y)


def test_with_a_label_default_an_unlabelled_event_is_learned_at_its_horizon_with_its_scoring_features():
    online = OnlineLearner(Recording(), label_horizon_ms=HORIZON, label_default=False)
    online.score("paid", 0, {"amount": 12.0, "n_10m": 1.0})
    online.score("fraud", 10, {"amount": 900.0, "n_10m": 5.0})
    assert online.label("fraud", True)
    online.score("later", HORIZON, {"amount": 13.0})  # not past the horizon of "paid" yet: nothing more learned
    assert online.model.learned == [({"amount": 900.0, "n_10m": 5.0}, True)]
    online.expire(HORIZON + 1)
    assert online.model.learned[1] == ({"amount": 12.0, "n_10m": 1.0}, False)  # as scored, not as of now
    report = online.report()
    assert (report["labels_default"], report["labels_expired"], report["labels"]) == (1, 0, 2)
    assert online.predict_detailed({"amount": 1.0})[2] == {"river": 2}
    online.expire(2 * HORIZON + 1)
    assert online.model.learned[2] == ({"amount": 13.0}, False)
    assert (online.report()["labels_default"], online.report()["pending_events"]) == (2, 0)


def test_without_a_label_default_an_unlabelled_event_is_dropped_at_its_horizon():
    online = OnlineLearner(Recording(), label_horizon_ms=HORIZON)
    online.score("paid", 0, {"amount": 12.0})
    online.expire(HORIZON + 1)
    assert online.model.learned == []
    assert (online.report()["labels_default"], online.report()["labels_expired"]) == (0, 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(at=st.integers(0, 300), batch=st.integers(1, 40))
def test_implicit_labels_are_the_same_across_snapshots_and_batching(at, batch):
    """A flow checks expiry as each event is scored or at a batch's end (`expire`): either way, and across a
    snapshot, the same events are learned as negatives in the same order."""

    def feed(online: OnlineLearner, start: int, stop: int) -> list:
        out = []
        for i in range(start, stop):
            x, y = EVENTS[i % len(EVENTS)]
            out.append(online.score(f"e{i}", i * 100, x))
            if y and i % 3:
                online.label(f"e{i}", True)
            if i % batch == 0:
                online.expire(i * 100)
        return out

    def fresh() -> OnlineLearner:
        return OnlineLearner(Recording(), label_horizon_ms=2_000, window=50, label_default=False)

    whole = fresh()
    expected = feed(whole, 0, 300)
    online = fresh()
    assert feed(online, 0, at) == expected[:at]
    rebuilt = OnlineLearner.from_state(pickle.loads(pickle.dumps(online.state())), label_default=False)
    assert feed(rebuilt, at, 300) == expected[at:]
    assert rebuilt.model.learned == whole.model.learned
    assert rebuilt.report()["labels_default"] == whole.report()["labels_default"] > 0


def test_a_label_default_must_be_a_bool():
    with pytest.raises(TypeError, match="label"):
        OnlineLearner(Recording(), label_horizon_ms=HORIZON, label_default="no")
