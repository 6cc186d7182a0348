"""Exact ROC AUC against a brute-force pair count, binned ROC AUC within its stated bound of it; log loss and
accuracy against River's own metrics."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from river import metrics, utils

from models.metrics import (
    BIN_FLOOR,
    BIN_MANTISSA_BITS,
    BINS,
    Accuracy,
    BinnedROCAUC,
    ExactROCAUC,
    LogLoss,
    QualityTracker,
    Rolling,
    score_bins,
)

# Few distinct scores so that ties between positives and negatives are common.
scores = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0))
labelled = st.lists(st.tuples(st.booleans(), scores), max_size=80)
# Fraud-like scores: most near 0, some near 1, many tied or a hair apart (so that bins hold both classes).
near_zero = st.builds(lambda m, e: m * 2.0**e, st.floats(1.0, 2.0), st.integers(-80, -1))
fraud_scores = st.one_of(
    scores,
    near_zero,
    near_zero.map(lambda q: 1.0 - q),
    st.sampled_from([1e-30, 1e-6, 1.01e-6, 0.01, 0.0101, 0.5 - 1e-12, 0.5 + 1e-12, 1.0 - 1e-9]),
    st.floats(0.0, 1e-3),
)
fraud_labelled = st.lists(st.tuples(st.booleans(), fraud_scores), max_size=80)


def brute_force_auc(pairs: list[tuple[bool, float]]) -> float | None:
    positives = [p for y, p in pairs if y]
    negatives = [p for y, p in pairs if not y]
    if not positives or not negatives:
        return None
    right = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return right / (len(positives) * len(negatives))


def brute_force_binned(pairs: list[tuple[bool, float]]) -> tuple[float, float] | tuple[None, None]:
    """The binned estimate and its bound, pair by pair: a pair in one bin counts ½ and adds ½ to the bound."""
    bins = score_bins(np.array([p for _, p in pairs], dtype=np.float64)).tolist() if pairs else []
    positives = [b for (y, _), b in zip(pairs, bins, strict=True) if y]
    negatives = [b for (y, _), b in zip(pairs, bins, strict=True) if not y]
    if not positives or not negatives:
        return None, None
    right = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    same = sum(p == n for p in positives for n in negatives)
    return right / (len(positives) * len(negatives)), 0.5 * same / (len(positives) * len(negatives))


def assert_within_bound(estimate, bound, pairs):
    """The binned estimate is the pair-by-pair binned count, and within its bound of the exact AUC."""
    expected_estimate, expected_bound = brute_force_binned(pairs)
    assert_same(estimate, expected_estimate)
    assert_same(bound, expected_bound)
    exact = brute_force_auc(pairs)
    if exact is not None:
        assert abs(estimate - exact) <= bound + 1e-12


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
            assert report["roc_auc_rolling"] == brute_force_auc(seen[-window:])
            assert_within_bound(report["roc_auc"], report["roc_auc_max_error"], seen)
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
    assert_within_bound(report["roc_auc"], report["roc_auc_max_error"], pairs)
    assert_same(report["roc_auc_rolling"], brute_force_auc(pairs[-window:]))


@settings(max_examples=300)
@given(fraud_labelled)
def test_binned_auc_is_within_its_bound_of_the_exact_auc_after_every_update(pairs):
    auc = BinnedROCAUC()
    for i, (y, p) in enumerate(pairs):
        auc.update(y, p)
        assert_within_bound(auc.get(), auc.max_error(), pairs[: i + 1])


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.5, 0.05, 0.002]),
    st.sampled_from(["logit-normal", "rounded", "near-zero", "few-values"]),
)
def test_binned_auc_is_within_its_bound_on_thousands_of_clustered_and_tied_scores(seed, rate, shape):
    rng = np.random.default_rng(seed)
    n = 20_000
    ys = rng.random(n) < rate
    z = np.where(ys, rng.normal(-1.0, 2.0, n), rng.normal(-6.0, 1.5, n))
    ps = {
        "logit-normal": 1 / (1 + np.exp(-z)),
        "rounded": np.round(1 / (1 + np.exp(-z)), 3),  # heavily tied
        "near-zero": np.exp(np.where(ys, -10.0, -30.0) * rng.random(n)),  # down to 1e-13, every bin busy
        "few-values": rng.choice([0.0, 1e-9, 0.01, 0.0101, 0.5, 1.0], n),
    }[shape]
    binned, exact = BinnedROCAUC(), ExactROCAUC()
    binned.extend(ys, ps)
    exact.extend(ys, ps)
    if exact.get() is None:
        assert binned.get() is None and binned.max_error() is None
        return
    assert abs(binned.get() - exact.get()) <= binned.max_error() + 1e-12
    # The bound itself, from a per-label bin count: the pairs that share a bin.
    bins = score_bins(ps)
    pos = np.bincount(bins[ys], minlength=BINS)
    neg = np.bincount(bins[~ys], minlength=BINS)
    assert binned.max_error() == pytest.approx(0.5 * float(pos @ neg) / (ys.sum() * (~ys).sum()), rel=1e-12)


def test_binned_auc_on_a_million_fraud_like_scores_is_within_a_few_ten_thousandths():
    """1 % positives, scores from a logistic model: the bound is small enough to quote four decimals."""
    rng = np.random.default_rng(7)
    n = 1_000_000
    ys = rng.random(n) < 0.01
    ps = 1 / (1 + np.exp(-np.where(ys, rng.normal(-1.0, 2.0, n), rng.normal(-6.0, 1.5, n))))
    binned, exact = BinnedROCAUC(), ExactROCAUC()
    binned.extend(ys, ps)
    exact.extend(ys, ps)
    assert abs(binned.get() - exact.get()) <= binned.max_error() < 2e-4


@settings(max_examples=200)
@given(st.lists(st.tuples(fraud_scores, st.booleans()), max_size=60), st.data())
def test_binned_auc_is_exact_with_a_zero_bound_when_no_bin_holds_both_classes(scored, data):
    """Each bin is given one class: every pair is in different bins, so every pair is ranked exactly."""
    ps = np.array([p for p, _ in scored], dtype=np.float64)
    bins = score_bins(ps).tolist()
    label_of_bin = {b: y for b, (_, y) in zip(bins, scored, strict=True)}
    pairs = [(label_of_bin[b], p) for b, p in zip(bins, ps.tolist(), strict=True)]
    auc = BinnedROCAUC()
    for y, p in pairs:
        auc.update(y, p)
    exact = brute_force_auc(pairs)
    if exact is None:
        assert auc.get() is None and auc.max_error() is None
    else:
        assert auc.max_error() == 0.0
        assert auc.get() == exact


@given(fraud_scores, fraud_scores)
def test_bins_follow_the_scores_and_keep_relative_resolution(a, b):
    """The bin never decreases with the score; two scores in one bin are within a factor 1 + 2**-m of each
    other in min(p, 1 - p), or both beyond the floor."""
    lo, hi = min(a, b), max(a, b)
    bin_lo, bin_hi = score_bins(np.array([lo, hi])).tolist()
    assert 0 <= bin_lo <= bin_hi < BINS
    if bin_lo == bin_hi:
        q_lo, q_hi = sorted((min(lo, 1 - lo), min(hi, 1 - hi)))
        assert (lo <= 0.5) == (hi <= 0.5)
        assert q_hi < BIN_FLOOR or q_hi <= q_lo * (1 + 2.0**-BIN_MANTISSA_BITS)


def test_bin_count_extremes_and_mirror():
    assert BINS == 8065
    extremes = np.array([-1.0, -0.0, 0.0, BIN_FLOOR / 2, 0.5, 0.5 + 2**-53, 1.0 - BIN_FLOOR / 2, 1.0, 2.0])
    assert score_bins(extremes).tolist() == [0, 0, 0, 0, BINS // 2, BINS // 2 + 1, BINS - 1, BINS - 1, BINS - 1]
    q = np.geomspace(BIN_FLOOR, 0.5, 100_001)[:-1]
    assert np.array_equal(np.unique(score_bins(q)), np.arange(BINS // 2))  # every bin below ½'s is reached
    above = 1.0 - q  # 1 - above is exact, and its bins mirror those below ½
    assert np.array_equal(score_bins(above), BINS - 1 - score_bins(1.0 - above))


@given(fraud_labelled, st.integers(1, 2**40))
def test_binned_auc_is_the_same_at_counts_past_int64_products(pairs, k):
    """Counts k times larger give the same figures, even where P·N no longer fits in an int64."""
    small, large = BinnedROCAUC(), BinnedROCAUC()
    for y, p in pairs:
        small.update(y, p)
    large.bins = small.bins * k
    assert_same(large.get(), small.get())
    assert_same(large.max_error(), small.max_error())


def test_binned_update_equals_extend():
    rng = np.random.default_rng(3)
    ys, ps = rng.random(500) < 0.3, rng.random(500) ** 8
    one, batch = BinnedROCAUC(), BinnedROCAUC()
    for y, p in zip(ys.tolist(), ps.tolist(), strict=True):
        one.update(y, p)
    batch.extend(ys, ps)
    assert np.array_equal(one.bins, batch.bins)
    with pytest.raises(ValueError, match="NaN"):
        batch.extend(np.array([True]), np.array([math.nan]))


def test_pickled_tracker_does_not_grow_with_the_number_of_labels():
    rng = np.random.default_rng(5)
    sizes = {}
    for n in (100_000, 1_000_000):
        tracker = QualityTracker(window=1000)
        ys, ps = (rng.random(n) < 0.01).tolist(), (rng.random(n) ** 20).tolist()
        for y, p in zip(ys, ps, strict=True):
            tracker.update(y, p)
        sizes[n] = len(pickle.dumps(tracker))  # whatever is still queued is folded in first
    # Only the bins in use are pickled: at most all of them, however many labels were counted.
    assert sizes[1_000_000] < 1.25 * sizes[100_000]
    assert sizes[1_000_000] < 2 * BINS * 8 + 25_000
