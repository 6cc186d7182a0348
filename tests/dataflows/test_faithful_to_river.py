"""River's Phishing data through Kafka and eddy gives exactly River's own test-then-train numbers."""

from __future__ import annotations

import pytest
from river import datasets as river_datasets
from river import evaluate, linear_model, metrics, preprocessing

from dataflows.tools import datasets
from dataflows.watch.metrics_reporter import ROC_AUC_METHOD
from tests.flowkit import PHISHING_CONFIG, by_id, config_for, outputs, publish, run_flow

pytestmark = pytest.mark.kafka


def rivers_own_loop() -> list[float]:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    scores = []
    for x, y in river_datasets.Phishing():
        scores.append(model.predict_proba_one(x)[True])
        model.learn_one(x, y)
    return scores


def brute_force_auc(labels: list[bool], scores: list[float]) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_phishing_scores_and_metrics_equal_rivers(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=1)
    events = list(datasets.phishing())
    publish(kafka_bootstrap, topics.events, events)

    run_flow(config_for(topics, kafka_bootstrap, PHISHING_CONFIG))

    predictions, reports, dead = outputs(kafka_bootstrap, topics)
    assert dead == []
    ours = by_id(predictions)
    expected = rivers_own_loop()
    assert len(ours) == len(expected) == 1250
    # `==` on floats: the same pipeline on the same values in the same order gives River's bits.
    assert [ours[event["event_id"]]["score"] for event in events] == expected

    final = reports[-1]["quality"]["score"]
    fresh = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    log_loss = evaluate.progressive_val_score(river_datasets.Phishing(), fresh, metrics.LogLoss()).get()
    fresh = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    accuracy = evaluate.progressive_val_score(river_datasets.Phishing(), fresh, metrics.Accuracy()).get()
    assert final["log_loss"] == pytest.approx(log_loss, abs=1e-12)
    assert final["accuracy"] == accuracy
    labels = [e["label"] for e in events]
    assert 0 < final["roc_auc_max_error"] < 0.005
    assert abs(final["roc_auc"] - brute_force_auc(labels, expected)) <= final["roc_auc_max_error"]
    fresh = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    approximate = evaluate.progressive_val_score(river_datasets.Phishing(), fresh, metrics.ROCAUC()).get()
    assert final["roc_auc"] == pytest.approx(approximate, abs=0.01)
    assert reports[-1]["roc_auc_method"] == ROC_AUC_METHOD
