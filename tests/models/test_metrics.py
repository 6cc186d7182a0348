"""Exact ROC AUC against a brute-force pair count; log loss and accuracy against River's own metrics."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river import metrics, utils

from models.metrics import Accuracy, ExactROCAUC, LogLoss, QualityTracker, Rolling

# Few distinct scores so that ties between positives and negatives are common.
scores = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0))
labelled = st.lists(st.tuples(st.booleans(), scores), max_size=80)


def brute_force_auc(pairs: list[tuple[bool, float]]) -> float | None:
    positives = [p for y, p in pairs if y]
    negatives = [p for y, p in pairs if not y]
    if not positives or not negatives:
        return None
    right = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return right / (len(positives) * len(negatives))


def assert_same(ours, expected):
    if expected is None:
        assert ours is None
    else:
        assert ours == pytest.approx(expected, rel=0, abs=1e-12)


@given(labelled)
def test_exact_auc_equals_brute_force_after_every_update(pairs):
    auc = ExactROCAUC()
    for i, (y, p) in enumerate(pairs):
        auc.update(y, p)
        assert_same(auc.get(), brute_force_auc(pairs[: i + 1]))


@given(labelled, st.integers(1, 20))
def test_rolling_auc_equals_brute_force_over_the_last_n(pairs, window):
    auc = Rolling(ExactROCAUC(), window)
    for i, (y, p) in enumerate(pairs):
        auc.update(y, p)
        assert_same(auc.get(), brute_force_auc(pairs[max(0, i + 1 - window) : i + 1]))


@given(labelled)
def test_log_loss_and_accuracy_equal_river_exactly(pairs):
    ours_loss, ours_acc = LogLoss(), Accuracy()
    river_loss, river_acc = metrics.LogLoss(), metrics.Accuracy()
    for y, p in pairs:
        ours_loss.update(y, p)
        ours_acc.update(y, p)
        river_loss.update(y, p)
        river_acc.update(y, p > 0.5)
        assert ours_loss.get() == river_loss.get()
        assert ours_acc.get() == river_acc.get()


@given(labelled, st.integers(1, 20))
def test_rolling_log_loss_and_accuracy_equal_river_rolling(pairs, window):
    ours_loss, ours_acc = Rolling(LogLoss(), window), Rolling(Accuracy(), window)
    river_loss = utils.Rolling(metrics.LogLoss, window_size=window)
    river_acc = utils.Rolling(metrics.Accuracy, window_size=window)
    for i, (y, p) in enumerate(pairs):
        ours_loss.update(y, p)
        ours_acc.update(y, p)
        river_loss.update(y, p)
        river_acc.update(y, p > 0.5)
        assert ours_loss.get() == pytest.approx(river_loss.get(), rel=1e-12, abs=1e-12)
        assert ours_acc.get() == river_acc.get()
        last = pairs[max(0, i + 1 - window) : i + 1]
        clipped = [(y, min(max(p, 1e-15), 1 - 1e-15)) for y, p in last]
        mean_loss = math.fsum(-math.log(p if y else 1 - p) for y, p in clipped)
        assert ours_loss.get() == pytest.approx(mean_loss / len(last), rel=1e-9, abs=1e-9)


def test_loss_clips_certain_wrong_answers_like_river():
    loss = LogLoss()
    loss.update(True, 0.0)
    assert loss.get() == pytest.approx(-math.log(1e-15))


def test_undefined_figures_are_none():
    tracker = QualityTracker(window=3)
    assert all(v is None for k, v in tracker.report().items() if k != "labels")
    tracker.update(True, 0.8)
    tracker.update(True, 0.3)
    report = tracker.report()
    assert report["roc_auc"] is None and report["roc_auc_rolling"] is None
    assert report["accuracy"] == 0.5 and report["labels"] == 2


def test_nan_score_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        ExactROCAUC().update(True, math.nan)
    with pytest.raises(ValueError, match="NaN"):
        QualityTracker().update(False, math.nan)


def test_reverting_a_score_never_added_is_refused():
    auc = ExactROCAUC()
    auc.update(True, 0.5)
    auc.update(False, 0.5)
    auc.revert(True, 0.25)
    with pytest.raises(ValueError, match="positive score that was never added"):
        auc.get()
    twice = ExactROCAUC()
    twice.update(False, 0.5)
    twice.revert(False, 0.5)
    twice.revert(False, 0.5)
    with pytest.raises(ValueError, match="negative score that was never added"):
        twice.get()


# A step is a label, or None: read the figures there (which folds the queued labels in).
steps = st.lists(st.one_of(st.tuples(st.booleans(), scores), st.none()), max_size=120)


@pytest.fixture
def short_queue(monkeypatch):
    """Fold every few labels unasked too, so that runs merge and queues fill many times in one example
    (the same for every example, so it need not be reset between them)."""
    monkeypatch.setattr("models.metrics.QUEUE", 5)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps, st.integers(1, 20))
def test_auc_is_exact_whenever_it_is_read(short_queue, steps, window):
    cumulative, rolling = ExactROCAUC(), Rolling(ExactROCAUC(), window)
    seen = []
    for step in steps:
        if step is None:
            assert_same(cumulative.get(), brute_force_auc(seen))
            assert_same(rolling.get(), brute_force_auc(seen[-window:]))
        else:
            seen.append(step)
            cumulative.update(*step)
            rolling.update(*step)
    assert_same(cumulative.get(), brute_force_auc(seen))
    assert_same(rolling.get(), brute_force_auc(seen[-window:]))
    assert sorted(p for y, p in seen if y) == list(cumulative.positives)
    assert sorted(p for y, p in seen if not y) == list(cumulative.negatives)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps, st.integers(1, 20))
def test_tracker_equals_metrics_updated_one_label_at_a_time(short_queue, steps, window):
    """Labels folded in with numpy give the figures of each metric updated as every label comes: the same
    counts, and log losses within a few ulps (a sum instead of River's running mean)."""
    tracker = QualityTracker(window)
    eager = {
        "log_loss": LogLoss(),
        "log_loss_rolling": Rolling(LogLoss(), window),
        "accuracy": Accuracy(),
        "accuracy_rolling": Rolling(Accuracy(), window),
    }
    seen = []
    for step in [*steps, None]:
        if step is None:
            report = tracker.report()
            for name, metric in eager.items():
                expected = metric.get()
                assert report[name] == (None if expected is None else pytest.approx(expected, rel=1e-9, abs=1e-9))
            assert (report["roc_auc"], report["roc_auc_rolling"]) == (
                brute_force_auc(seen),
                brute_force_auc(seen[-window:]),
            )
            assert report["labels"] == len(seen)
        else:
            seen.append(step)
            tracker.update(*step)
            for metric in eager.values():
                metric.update(*step)


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="Rolling: window must be at least 1"):
        Rolling(LogLoss(), 0)
    with pytest.raises(ValueError, match="QualityTracker: window must be at least 1"):
        QualityTracker(window=0)


def test_deepcopy_is_independent_of_the_original():
    auc = ExactROCAUC()
    auc.update(True, 0.7)
    auc.update(False, 0.2)
    assert auc.get() == 1.0  # folded: the copy shares the sorted runs
    auc.update(True, 0.1)  # queued
    twin = copy.deepcopy(auc)
    auc.update(False, 0.9)
    twin.update(False, 0.05)
    twin.revert(True, 0.7)
    assert (auc.get(), twin.get()) == (brute_force_auc([(True, 0.7), (False, 0.2), (True, 0.1), (False, 0.9)]), 0.5)
    assert list(auc.negatives) == [0.2, 0.9] and list(twin.negatives) == [0.05, 0.2]
    assert list(auc.positives) == [0.1, 0.7] and list(twin.positives) == [0.1]


@settings(max_examples=30)
@given(labelled, labelled)
def test_tracker_survives_pickle_and_deepcopy(first, second):
    tracker = QualityTracker(window=7)
    for y, p in first:
        tracker.update(y, p)
    copies = [pickle.loads(pickle.dumps(tracker)), copy.deepcopy(tracker)]
    for y, p in second:
        for t in (tracker, *copies):
            t.update(y, p)
    assert all(c.report() == tracker.report() for c in copies)


@given(labelled, st.integers(1, 10))
def test_tracker_report_matches_its_parts(pairs, window):
    tracker = QualityTracker(window)
    for y, p in pairs:
        tracker.update(y, p)
    report = tracker.report()
    assert report["labels"] == len(pairs)
    assert_same(report["roc_auc"], brute_force_auc(pairs))
    assert_same(report["roc_auc_rolling"], brute_force_auc(pairs[-window:]))
