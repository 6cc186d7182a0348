"""Online quality metrics for a binary classifier, kept in plain picklable state.

River's `metrics.ROCAUC` is an approximation; `ExactROCAUC` is the Mann–Whitney statistic with ties
counted ½, updated in O(log n) per label. `LogLoss` and `Accuracy` give exactly River's numbers (same
clipping, same incremental mean). Every metric can be reverted, so `Rolling` keeps any of them over the
last `window` labels.
"""

from __future__ import annotations

import math
from collections import deque

from sortedcontainers import SortedList

EPSILON = 1e-15


class ExactROCAUC:
    """Exact area under the ROC curve: the share of (positive, negative) pairs ranked right, ties ½.

    A positive with score s adds the number of negatives below s plus half the ties; a negative adds
    the positives above it plus half the ties. Pair counts are kept doubled so that they stay integers.
    `get` is None until both classes have been seen. Memory grows with the number of labels: use
    `Rolling` for a bounded version.

    >>> auc = ExactROCAUC()
    >>> for y, p in [(True, 0.9), (False, 0.1), (False, 0.9), (True, 0.4)]:
    ...     auc.update(y, p)
    >>> print(auc.get())
    0.625

    """

    def __init__(self) -> None:
        self.positives = SortedList()
        self.negatives = SortedList()
        self.pairs_x2 = 0

    def __deepcopy__(self, memo: dict) -> ExactROCAUC:
        """Scores are immutable floats, so copying the sorted lists is a deep copy, 4× faster than
        `copy.deepcopy`'s default; Bytewax deep-copies state every epoch and these lists only grow."""
        clone = type(self).__new__(type(self))
        clone.positives, clone.negatives = self.positives.copy(), self.negatives.copy()
        clone.pairs_x2 = self.pairs_x2
        memo[id(self)] = clone
        return clone

    def _pairs_x2(self, y_true: bool, p_true: float) -> int:
        others = self.negatives if y_true else self.positives
        below, below_or_tied = others.bisect_left(p_true), others.bisect_right(p_true)
        if y_true:
            return below + below_or_tied  # 2 × below + ties
        return 2 * len(others) - below - below_or_tied  # 2 × above + ties

    def update(self, y_true: bool, p_true: float) -> None:
        if math.isnan(p_true):
            raise ValueError("ExactROCAUC: the score is NaN")
        self.pairs_x2 += self._pairs_x2(y_true, p_true)
        (self.positives if y_true else self.negatives).add(p_true)

    def revert(self, y_true: bool, p_true: float) -> None:
        (self.positives if y_true else self.negatives).remove(p_true)
        self.pairs_x2 -= self._pairs_x2(y_true, p_true)

    def get(self) -> float | None:
        if not self.positives or not self.negatives:
            return None
        return self.pairs_x2 / (2 * len(self.positives) * len(self.negatives))


class LogLoss:
    """Binary log loss, equal to River's `metrics.LogLoss` (clipped to [1e-15, 1 - 1e-15]).

    >>> loss = LogLoss()
    >>> for y, p in [(True, 0.9), (False, 0.1), (False, 0.2), (True, 0.65)]:
    ...     loss.update(y, p)
    >>> print(f"{loss.get():.6f}")
    0.216162

    """

    def __init__(self) -> None:
        self.n = 0.0
        self.mean = 0.0

    @staticmethod
    def _loss(y_true: bool, p_true: float) -> float:
        p_true = min(max(p_true, EPSILON), 1 - EPSILON)
        return -math.log(p_true) if y_true else -math.log(1 - p_true)

    def update(self, y_true: bool, p_true: float) -> None:
        self.n += 1.0
        self.mean += (1.0 / self.n) * (self._loss(y_true, p_true) - self.mean)

    def revert(self, y_true: bool, p_true: float) -> None:
        self.n -= 1.0
        if self.n <= 0:
            self.n, self.mean = 0.0, 0.0
        else:
            self.mean -= (1.0 / self.n) * (self._loss(y_true, p_true) - self.mean)

    def get(self) -> float | None:
        return self.mean if self.n else None


class Accuracy:
    """Share of labels where `p_true > 0.5` predicted the right class (a tie predicts False, as River's
    `predict_one` does for `{False: 0.5, True: 0.5}`).

    >>> acc = Accuracy()
    >>> for y, p in [(True, 0.9), (False, 0.1), (False, 0.7), (True, 0.5)]:
    ...     acc.update(y, p)
    >>> print(acc.get())
    0.5

    """

    def __init__(self) -> None:
        self.n = 0
        self.correct = 0

    def update(self, y_true: bool, p_true: float) -> None:
        self.n += 1
        self.correct += (p_true > 0.5) == bool(y_true)

    def revert(self, y_true: bool, p_true: float) -> None:
        self.n -= 1
        self.correct -= (p_true > 0.5) == bool(y_true)

    def get(self) -> float | None:
        return self.correct / self.n if self.n else None


class Rolling:
    """Any metric above over the last `window` labels: the oldest label is reverted as a new one comes.

    >>> auc = Rolling(ExactROCAUC(), window=2)
    >>> for y, p in [(True, 0.1), (False, 0.9), (True, 0.8), (False, 0.2)]:
    ...     auc.update(y, p)
    >>> print(auc.get())
    1.0

    """

    def __init__(self, metric: ExactROCAUC | LogLoss | Accuracy, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"Rolling: window must be at least 1, got {window}")
        self.metric = metric
        self.window = window
        self.recent = deque()

    def update(self, y_true: bool, p_true: float) -> None:
        self.metric.update(y_true, p_true)
        self.recent.append((y_true, p_true))
        if len(self.recent) > self.window:
            self.metric.revert(*self.recent.popleft())

    def get(self) -> float | None:
        return self.metric.get()


class QualityTracker:
    """Cumulative and rolling ROC AUC, log loss and accuracy of the scores a model gave before learning.

    Parameters
    ----------
    window
        How many of the latest labels the rolling figures cover.

    >>> from river import datasets
    >>> from models.pipelines import make_model
    >>> model, tracker = make_model(), QualityTracker(window=100)
    >>> for x, y in datasets.Phishing().take(300):
    ...     tracker.update(y, model.predict_proba_one(x)[True])
    ...     model.learn_one(x, y)
    >>> report = tracker.report()
    >>> print(report["labels"], f"{report['roc_auc']:.4f}", f"{report['accuracy_rolling']:.2f}")
    300 0.9110 0.86

    """

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"QualityTracker: window must be at least 1, got {window}")
        self.window = window
        self.labels = 0
        self.cumulative = (ExactROCAUC(), LogLoss(), Accuracy())
        self.rolling = (ExactROCAUC(), LogLoss(), Accuracy())
        self.recent = deque()

    def update(self, y_true: bool, p_true: float) -> None:
        """Record one label with the probability of True that the model gave before learning it."""
        self.labels += 1
        for metric in self.cumulative:
            metric.update(y_true, p_true)
        for metric in self.rolling:
            metric.update(y_true, p_true)
        self.recent.append((y_true, p_true))
        if len(self.recent) > self.window:
            y_old, p_old = self.recent.popleft()
            for metric in self.rolling:
                metric.revert(y_old, p_old)

    def report(self) -> dict:
        """Every figure by name (None where undefined: no labels yet, or AUC with one class)."""
        (auc, loss, accuracy), (auc_r, loss_r, accuracy_r) = self.cumulative, self.rolling
        return {
            "roc_auc": auc.get(),
            "roc_auc_rolling": auc_r.get(),
            "log_loss": loss.get(),
            "log_loss_rolling": loss_r.get(),
            "accuracy": accuracy.get(),
            "accuracy_rolling": accuracy_r.get(),
            "labels": self.labels,
        }
