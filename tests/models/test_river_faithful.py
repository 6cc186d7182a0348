"""OnlineLearner on River's Phishing data gives River's own numbers: same scores, same metrics."""

from __future__ import annotations

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing

from models.learner import UNTRAINED_SCORE, OnlineLearner
from models.pipelines import make_model

PHISHING = list(datasets.Phishing())


def textbook():
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def brute_force_auc(labels: list[bool], scores: list[float]) -> float:
    positives = [s for y, s in zip(labels, scores, strict=True) if y]
    negatives = [s for y, s in zip(labels, scores, strict=True) if not y]
    right = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return right / (len(positives) * len(negatives))


@pytest.fixture(scope="module")
def inline():
    """Every Phishing event scored and learned with its label inline, in order."""
    online = OnlineLearner(make_model(), label_horizon_ms=0, window=100)
    scores = [online.score(f"e{i}", i, x, y).score for i, (x, y) in enumerate(PHISHING)]
    return online, scores


def test_scores_equal_rivers_test_then_train_loop(inline):
    _, scores = inline
    model, expected = textbook(), []
    for x, y in PHISHING:
        expected.append(model.predict_proba_one(x)[True])
        model.learn_one(x, y)
    assert max(abs(a - b) for a, b in zip(scores, expected, strict=True)) <= 1e-9
    assert scores == expected, "eddy's default pipeline should give exactly the textbook numbers"


@pytest.mark.parametrize("metric, figure", [(metrics.LogLoss, "log_loss"), (metrics.Accuracy, "accuracy")])
def test_cumulative_metrics_equal_progressive_val_score(inline, metric, figure):
    online, _ = inline
    expected = evaluate.progressive_val_score(datasets.Phishing(), textbook(), metric()).get()
    assert online.report()[figure] == pytest.approx(expected, rel=0, abs=1e-12)


def test_auc_is_near_rivers_approximation_and_within_its_bound_of_the_brute_force(inline):
    online, scores = inline
    approximate = evaluate.progressive_val_score(datasets.Phishing(), textbook(), metrics.ROCAUC()).get()
    report = online.report()
    assert report["roc_auc"] == pytest.approx(approximate, abs=0.005)
    exact = brute_force_auc([y for _, y in PHISHING], scores)
    assert 0 < report["roc_auc_max_error"] < 0.005
    assert abs(report["roc_auc"] - exact) <= report["roc_auc_max_error"]
    last = PHISHING[-100:]
    assert report["roc_auc_rolling"] == pytest.approx(brute_force_auc([y for _, y in last], scores[-100:]), abs=1e-12)


def test_delayed_labels_score_like_a_model_that_is_k_labels_behind(inline):
    """Labels k events late: event i is scored by a model that learned events 0 … i-k-1."""
    k = 25
    online = OnlineLearner(make_model(), label_horizon_ms=10 * k)
    delayed = []
    for i, (x, _) in enumerate(PHISHING):
        delayed.append(online.score(f"e{i}", i, x).score)
        if i >= k:
            assert online.label(f"e{i - k}", PHISHING[i - k][1])
    reference, expected = textbook(), []
    for i, (x, _) in enumerate(PHISHING):
        if i > k:
            reference.learn_one(*PHISHING[i - k - 1])
        expected.append(reference.predict_proba_one(x)[True])
    assert delayed == expected
    assert delayed[: k + 1] == [UNTRAINED_SCORE] * (k + 1)
    assert sum(a != b for a, b in zip(delayed, inline[1], strict=True)) > len(PHISHING) // 2

    first_unlabelled = len(PHISHING) - k
    assert online.expire(first_unlabelled + 10 * k) == 0
    assert online.expire(len(PHISHING) - 1 + 10 * k + 1) == k
    report = online.report()
    learned = len(PHISHING) - k
    assert (report["labels_delayed"], report["labels_expired"], report["labels"]) == (learned, k, learned)
    reference.learn_one(*PHISHING[first_unlabelled - 1])
    probes = [x for x, _ in PHISHING[:50]]
    assert [online.predict(x) for x in probes] == [reference.predict_proba_one(x)[True] for x in probes]
