"""The quality gate a refitted model must pass on the held-out, most recent slice of its window."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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


class Verdict(NamedTuple):
    """A gate's decision on one model. `rejected_by` says why structurally, for alerts that tell a failed refit
    from a healthy one that lost: `"gate"` (it failed the quality bar: its metric is undefined or does not pass
    the threshold or base rate), `"champion"` (it passed the bar but the model in force did better), None
    (accepted)."""

    accepted: bool
    reason: str
    metrics: dict[str, float]
    rejected_by: str | None = None


@dataclass(frozen=True)
class Gate:
    """Accept a model if its held-out metric passes `threshold` and beats the model in force (the champion).

    `metric="log_loss"`: accept if log loss <= threshold; with no threshold, the model must beat a constant
    predictor of the training base rate on the same slice. `metric="auc"`: accept if AUC >= threshold
    (0.5 when none is given). With a champion, the challenger must also do at least as well as it on the
    held-out rows the champion was not trained on (ties go to the challenger: it is the newer model).
    """

    metric: str = "log_loss"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown gate metric {self.metric!r}; known metrics: {', '.join(METRICS)}")

    def judge(
        self,
        labels: Sequence[bool],
        probs: Sequence[float],
        base_rate: float,
        champion: Sequence[float] | None = None,
        unseen_from: int = 0,
    ) -> Verdict:
        """The verdict on a model's held-out predictions; `champion` holds the model in force's predictions on
        the same rows, of which those from index `unseen_from` on are new to it.

        >>> labels = [True, False] * 20
        >>> good, better = [0.7 if y else 0.3 for y in labels], [0.9 if y else 0.1 for y in labels]
        >>> Gate().judge(labels, good, 0.5).rejected_by is None
        True
        >>> Gate().judge(labels, better[::-1], 0.5).rejected_by
        'gate'
        >>> Gate().judge(labels, good, 0.5, champion=better).rejected_by
        'champion'
        """
        baseline = log_loss(labels, [base_rate] * len(labels))
        metrics = {
            "log_loss": log_loss(labels, probs),
            "auc": roc_auc(labels, probs),
            "baseline_log_loss": baseline,
            "holdout_rows": float(len(labels)),
        }
        value = metrics[self.metric]
        if math.isnan(value):
            return Verdict(False, f"{self.metric} is undefined on the held-out slice", metrics, "gate")
        better = operator.le if self.metric == "log_loss" else operator.ge
        sign = ("<=", ">") if self.metric == "log_loss" else (">=", "<")
        if self.metric == "log_loss":
            limit = baseline if self.threshold is None else self.threshold
        else:
            limit = 0.5 if self.threshold is None else self.threshold
        if not better(value, limit):
            return Verdict(False, f"{self.metric} {value:.5f} {sign[1]} {limit:.5f}", metrics, "gate")
        reason = f"{self.metric} {value:.5f} {sign[0]} {limit:.5f}"
        if champion is None:
            return Verdict(True, reason, metrics)
        ys, new = labels[unseen_from:], probs[unseen_from:]
        metric = log_loss if self.metric == "log_loss" else roc_auc
        ours, theirs = metric(ys, new), metric(ys, champion[unseen_from:])
        metrics.update(compared_rows=float(len(ys)), challenger=ours, champion=theirs)
        if math.isnan(ours) or math.isnan(theirs):
            return Verdict(
                True,
                f"{reason}; not compared with the model in force: {self.metric} undefined on its unseen rows",
                metrics,
            )
        if better(ours, theirs):
            return Verdict(True, f"{reason}; {ours:.5f} {sign[0]} {theirs:.5f} of the model in force", metrics)
        return Verdict(
            False,
            f"{self.metric} {ours:.5f} {sign[1]} {theirs:.5f} of the model in force on {len(ys)} rows",
            metrics,
            "champion",
        )
