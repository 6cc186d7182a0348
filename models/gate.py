"""The quality gate a refitted model must pass on the held-out, most recent slice of its window."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS = 1e-15
METRICS = ("log_loss", "auc")


def log_loss(labels: Sequence[bool], probs: Sequence[float]) -> float:
    """Mean binary log loss, probabilities clipped away from 0 and 1."""
    y = np.asarray(labels, dtype=bool)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p)))) if len(y) else math.nan


def roc_auc(labels: Sequence[bool], probs: Sequence[float]) -> float:
    """Exact ROC AUC (ties count one half); NaN when the slice holds a single class."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(probs, dtype=np.float64)
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass(frozen=True)
class Gate:
    """Accept a model if its held-out metric passes `threshold`.

    `metric="log_loss"`: accept if log loss <= threshold; with no threshold, the model must beat a constant
    predictor of the training base rate on the same slice. `metric="auc"`: accept if AUC >= threshold
    (0.5 when none is given).
    """

    metric: str = "log_loss"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown gate metric {self.metric!r}; known metrics: {', '.join(METRICS)}")

    def judge(
        self, labels: Sequence[bool], probs: Sequence[float], base_rate: float
    ) -> tuple[bool, str, dict[str, float]]:
        """(accepted, reason, metrics) for a model's held-out predictions."""
        baseline = log_loss(labels, [base_rate] * len(labels))
        metrics = {
            "log_loss": log_loss(labels, probs),
            "auc": roc_auc(labels, probs),
            "baseline_log_loss": baseline,
            "holdout_rows": float(len(labels)),
        }
        value = metrics[self.metric]
        if math.isnan(value):
            return False, f"{self.metric} is undefined on the held-out slice", metrics
        if self.metric == "log_loss":
            limit = baseline if self.threshold is None else self.threshold
            if value <= limit:
                return True, f"log_loss {value:.5f} <= {limit:.5f}", metrics
            return False, f"log_loss {value:.5f} > {limit:.5f}", metrics
        limit = 0.5 if self.threshold is None else self.threshold
        if value >= limit:
            return True, f"auc {value:.5f} >= {limit:.5f}", metrics
        return False, f"auc {value:.5f} < {limit:.5f}", metrics
