"""Online quality metrics for a binary classifier, kept in plain picklable state.

River's `metrics.ROCAUC` is an approximation; `ExactROCAUC` is the Mann–Whitney statistic with ties
counted ½, and `BinnedROCAUC` the same statistic over scores grouped in fixed bins, in bounded memory and
with a stated error bound. `LogLoss` and `Accuracy` give exactly River's numbers (same clipping, same
incremental mean). Every metric but `BinnedROCAUC` can be reverted, so `Rolling` keeps any of them over the
last `window` labels.

The learner records a label for three members on every event but reads the figures only every thousand
events or so, so the costly parts are deferred: `ExactROCAUC` queues labels and counts their pairs with
numpy when read, and `QualityTracker` queues labels and folds them in with numpy. AUC pair counts and bin
counts are exact integers, so they do not depend on when the queues are folded in.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

EPSILON = 1e-15
QUEUE = 4096
"""Labels an `ExactROCAUC` or a `QualityTracker` queues at most before folding them in unasked, so that a
run that never reads its figures keeps a bounded queue."""


def _below_x2(queries: np.ndarray, runs: list[np.ndarray]) -> int:
    """Σ over queries q of 2 × #(values < q) + #(values == q), the values being sorted runs."""
    total = 0
    for run in runs:
        total += int(np.searchsorted(run, queries, "left").sum()) + int(np.searchsorted(run, queries, "right").sum())
    return total


def _above_x2(queries: np.ndarray, runs: list[np.ndarray]) -> int:
    """Σ over queries q of 2 × #(values > q) + #(values == q), the values being sorted runs."""
    return 2 * len(queries) * sum(len(run) for run in runs) - _below_x2(queries, runs)


def _sorted(values: list[float]) -> np.ndarray:
    run = np.sort(np.array(values, dtype=np.float64))
    run.flags.writeable = False
    return run


def _push(runs: list[np.ndarray], run: np.ndarray) -> None:
    """Append a sorted run, merging while the previous run is less than twice as long: O(log n) runs, and
    each score is copied O(log n) times over its life."""
    if not len(run):
        return
    runs.append(run)
    while len(runs) > 1 and len(runs[-2]) < 2 * len(runs[-1]):
        last = runs.pop()
        merged = np.sort(np.concatenate((runs.pop(), last)), kind="stable")  # timsort: two runs, linear
        merged.flags.writeable = False
        runs.append(merged)


def _remove(runs: list[np.ndarray], values: np.ndarray, what: str) -> list[np.ndarray]:
    """`runs` (as one run) less the sorted multiset `values`; ValueError if a value is not there."""
    if not len(values):
        return runs
    whole = np.sort(np.concatenate(runs), kind="stable") if len(runs) > 1 else runs[0] if runs else np.empty(0)
    # The k-th copy of a value sits k places after the value's first position.
    at = np.searchsorted(whole, values, "left") + (np.arange(len(values)) - np.searchsorted(values, values, "left"))
    if (at >= len(whole)).any() or not np.array_equal(whole[at], values):
        raise ValueError(f"ExactROCAUC.revert: a {what} score that was never added (or reverted twice)")
    kept = np.delete(whole, at)
    kept.flags.writeable = False
    return [kept] if len(kept) else []


class ExactROCAUC:
    """Exact area under the ROC curve: the share of (positive, negative) pairs ranked right, ties ½.

    A positive with score s adds the number of negatives below s plus half the ties; a negative adds
    the positives above it plus half the ties. Pair counts are kept doubled so that they stay integers.
    `get` is None until both classes have been seen. Memory grows with the number of labels (8 bytes
    each): use `Rolling` for a bounded version.

    `update` and `revert` only queue the label; `get` folds the queue in: each new score's pairs are
    counted by binary search in the sorted runs of earlier scores, and the runs are merged as they grow.

    >>> auc = ExactROCAUC()
    >>> for y, p in [(True, 0.9), (False, 0.1), (False, 0.9), (True, 0.4)]:
    ...     auc.update(y, p)
    >>> print(auc.get())
    0.625

    """

    def __init__(self) -> None:
        self.pairs_x2 = 0
        self._runs: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])  # negatives, positives
        self._added: tuple[list[float], list[float]] = ([], [])
        self._removed: tuple[list[float], list[float]] = ([], [])
        self._queued = 0

    def __deepcopy__(self, memo: dict) -> ExactROCAUC:
        """The sorted runs are read-only arrays, replaced rather than changed, so a copy shares them and
        copies only the queues: a copy costs the scores queued since the last fold, not every score."""
        clone = type(self).__new__(type(self))
        clone.pairs_x2, clone._queued = self.pairs_x2, self._queued
        clone._runs = (list(self._runs[0]), list(self._runs[1]))
        clone._added = (list(self._added[0]), list(self._added[1]))
        clone._removed = (list(self._removed[0]), list(self._removed[1]))
        memo[id(self)] = clone
        return clone

    def update(self, y_true: bool, p_true: float) -> None:
        if p_true != p_true:
            raise ValueError("ExactROCAUC: the score is NaN")
        self._added[bool(y_true)].append(p_true)
        self._queued += 1
        if self._queued >= QUEUE:
            self._fold()

    def extend(self, ys: np.ndarray, ps: np.ndarray) -> None:
        """`update` for arrays of labels and scores at once."""
        if np.isnan(ps).any():
            raise ValueError("ExactROCAUC: a score is NaN")
        self._added[0].extend(ps[~ys].tolist())
        self._added[1].extend(ps[ys].tolist())
        self._queued += len(ps)
        if self._queued >= QUEUE:
            self._fold()

    def revert(self, y_true: bool, p_true: float) -> None:
        self._removed[bool(y_true)].append(p_true)
        self._queued += 1
        if self._queued >= QUEUE:
            self._fold()

    def get(self) -> float | None:
        self._fold()
        negatives, positives = self.counts
        if not positives or not negatives:
            return None
        return self.pairs_x2 / (2 * positives * negatives)

    @property
    def counts(self) -> tuple[int, int]:
        """(negatives, positives) folded in so far."""
        return sum(len(r) for r in self._runs[0]), sum(len(r) for r in self._runs[1])

    @property
    def positives(self) -> np.ndarray:
        """Every positive's score, sorted."""
        return self._merged(1)

    @property
    def negatives(self) -> np.ndarray:
        """Every negative's score, sorted."""
        return self._merged(0)

    def _merged(self, label: int) -> np.ndarray:
        self._fold()
        runs = self._runs[label]
        return np.sort(np.concatenate(runs), kind="stable") if runs else np.empty(0)

    def _fold(self) -> None:
        if not self._queued:
            return
        (neg_runs, pos_runs), (add_neg, add_pos), (del_neg, del_pos) = self._runs, self._added, self._removed
        self._added, self._removed, self._queued = ([], []), ([], []), 0
        if add_neg or add_pos:
            new_neg, new_pos = _sorted(add_neg), _sorted(add_pos)
            self.pairs_x2 += _below_x2(new_pos, neg_runs) + _above_x2(new_neg, pos_runs) + _below_x2(new_pos, [new_neg])
            _push(neg_runs, new_neg)
            _push(pos_runs, new_pos)
        if del_neg or del_pos:
            old_neg, old_pos = _sorted(del_neg), _sorted(del_pos)
            # Pairs with a removed score: removed positives with every negative, every positive with
            # removed negatives, less the (removed, removed) pairs counted twice.
            involved = _below_x2(old_pos, neg_runs) + _above_x2(old_neg, pos_runs) - _below_x2(old_pos, [old_neg])
            self._runs = (_remove(neg_runs, old_neg, "negative"), _remove(pos_runs, old_pos, "positive"))
            self.pairs_x2 -= involved


BIN_MANTISSA_BITS = 6
"""Mantissa bits a `BinnedROCAUC` bin keeps: the scores of one bin are within a factor 1 + 2**-6 of each
other in min(p, 1 - p), so resolution is relative, as fine near 0 and 1 as near ½."""
BIN_FLOOR = 2.0**-64
"""Scores nearer than this to 0 (or to 1) share the bin of 0 (or of 1), which bounds the number of bins."""
_SHIFT = 52 - BIN_MANTISSA_BITS
_FLOOR_KEY = int(np.float64(BIN_FLOOR).view(np.int64)) >> _SHIFT
_HALF = (int(np.float64(0.5).view(np.int64)) >> _SHIFT) - _FLOOR_KEY  # the bin of ½, the top of the lower half
BINS = 2 * _HALF + 1
"""Bins of a `BinnedROCAUC`: 63 octaves from 2**-64 to ½ of 2**6 bins each, mirrored above ½, and ½'s: 8065."""


def score_bins(ps: np.ndarray) -> np.ndarray:
    """The `BinnedROCAUC` bin of each score, in 0..BINS-1, non-decreasing in the score.

    Positive float64s order like their bit patterns, so the bit pattern of q = min(p, 1 - p), clipped to
    [BIN_FLOOR, ½] and shifted right to keep `BIN_MANTISSA_BITS` mantissa bits, numbers the bins of the
    lower half; the upper half mirrors it (1 - p is exact for p in [½, 1]). Scores are clipped to [0, 1].

    >>> print(score_bins(np.array([0.0, 1e-30, 0.1, 0.1001, 0.5, 0.9, 1.0])).tolist())
    [0, 0, 3878, 3878, 4032, 4186, 8064]

    """
    ps = np.clip(np.asarray(ps, dtype=np.float64), 0.0, 1.0)
    q = np.clip(np.minimum(ps, 1.0 - ps), BIN_FLOOR, 0.5)
    lower = (q.view(np.int64) >> _SHIFT) - _FLOOR_KEY
    return np.where(ps <= 0.5, lower, 2 * _HALF - lower)


def _dot(a: np.ndarray, b: np.ndarray, most: int) -> int:
    """Σ a·b exactly for non-negative int64 arrays whose sum of products is at most `most`: in int64 while
    that cannot overflow, else in Python integers (a run of years at thousands of labels a second)."""
    if most < 2**63:
        return int(np.dot(a, b))
    return sum(x * y for x, y in zip(a.tolist(), b.tolist(), strict=True))


class BinnedROCAUC:
    """ROC AUC from counts of positives and negatives per score bin, in memory independent of the labels.

    The bins (`score_bins`) follow the scores' order, so a (positive, negative) pair in different bins is
    ranked exactly; a pair in one bin counts ½, off by at most ½ from its true share (0, ½ or 1). Hence

        |get() - exact AUC| <= max_error() = ½ · Σ_b pos_b · neg_b / (P · N)

    with P and N the positives and negatives, and the estimate is exact when no bin holds both classes.
    A bin spans a factor 1 + 2**-6 of min(p, 1 - p): on fraud-like scores (0.2–1 % positives, 1e6 labels,
    AUC 0.98) `max_error` is 1.2e-4 (2.2e-4 with scores rounded to 4 decimals) and the estimate is within
    3e-6 of the exact AUC. `get` is None until both classes have been seen.

    The state is one int64 array of 2 × `BINS` counts: 129 KB (pickled 129 KB), whatever the number of
    labels. Reading costs O(`BINS`); adding a batch is one `np.bincount`.

    >>> auc = BinnedROCAUC()
    >>> for y, p in [(True, 0.9), (False, 0.1), (False, 0.9), (True, 0.4)]:
    ...     auc.update(y, p)
    >>> print(auc.get(), auc.max_error())
    0.625 0.125

    """

    def __init__(self) -> None:
        self.bins = np.zeros((2, BINS), dtype=np.int64)  # negatives, positives

    def __getstate__(self) -> dict:
        """The bins that hold a count (scores fill a few hundred of them): a tenth of the dense array's bytes
        in every recovery snapshot."""
        state = self.__dict__.copy()
        used = np.flatnonzero(self.bins.any(axis=0))
        state["bins"] = (used.astype(np.int32), self.bins[:, used])
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["bins"], tuple):
            used, counts = state["bins"]
            bins = np.zeros((2, BINS), dtype=np.int64)
            bins[:, used] = counts
            state["bins"] = bins
        self.__dict__.update(state)

    def update(self, y_true: bool, p_true: float) -> None:
        if p_true != p_true:
            raise ValueError("BinnedROCAUC: the score is NaN")
        self.bins[int(bool(y_true)), score_bins(np.array([p_true], dtype=np.float64))[0]] += 1

    def extend(self, ys: np.ndarray, ps: np.ndarray) -> None:
        """`update` for arrays of labels and scores at once."""
        if np.isnan(ps).any():
            raise ValueError("BinnedROCAUC: a score is NaN")
        at = score_bins(ps) + BINS * ys.astype(np.int64)
        self.bins += np.bincount(at, minlength=2 * BINS).reshape(2, BINS)

    @property
    def counts(self) -> tuple[int, int]:
        """(negatives, positives) added so far."""
        return int(self.bins[0].sum()), int(self.bins[1].sum())

    def get(self) -> float | None:
        negatives, positives = self.counts
        if not positives or not negatives:
            return None
        neg, pos = self.bins
        below_x2_plus_ties = 2 * (np.cumsum(neg) - neg) + neg  # per bin: 2 × negatives below + same-bin ones
        pairs = positives * negatives
        return _dot(pos, below_x2_plus_ties, 2 * pairs) / (2 * pairs)

    def max_error(self) -> float | None:
        """The bound on |`get()` - exact AUC|: half the share of pairs that share a bin."""
        negatives, positives = self.counts
        if not positives or not negatives:
            return None
        pairs = positives * negatives
        return _dot(self.bins[1], self.bins[0], pairs) / (2 * pairs)


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
    def loss(y_true: bool, p_true: float) -> float:
        """One label's loss, for `add` and `remove` when several metrics share it."""
        p_true = min(max(p_true, EPSILON), 1 - EPSILON)
        return -math.log(p_true) if y_true else -math.log(1 - p_true)

    def update(self, y_true: bool, p_true: float) -> None:
        self.add(self.loss(y_true, p_true))

    def revert(self, y_true: bool, p_true: float) -> None:
        self.remove(self.loss(y_true, p_true))

    def add(self, loss: float) -> None:
        self.n += 1.0
        self.mean += (1.0 / self.n) * (loss - self.mean)

    def remove(self, loss: float) -> None:
        self.n -= 1.0
        if self.n <= 0:
            self.n, self.mean = 0.0, 0.0
        else:
            self.mean -= (1.0 / self.n) * (loss - self.mean)

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

    @staticmethod
    def right(y_true: bool, p_true: float) -> bool:
        """Whether one label was predicted right, for `add` and `remove` when several metrics share it."""
        return (p_true > 0.5) == bool(y_true)

    def update(self, y_true: bool, p_true: float) -> None:
        self.add(self.right(y_true, p_true))

    def revert(self, y_true: bool, p_true: float) -> None:
        self.remove(self.right(y_true, p_true))

    def add(self, right: bool) -> None:
        self.n += 1
        self.correct += right

    def remove(self, right: bool) -> None:
        self.n -= 1
        self.correct -= right

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

    Labels are queued and folded in with numpy when the figures are read (or when `QUEUE` labels wait): the
    learner records three members on every event and reads them every thousand events or so. The cumulative
    AUC is a `BinnedROCAUC`, reported with its error bound as `roc_auc_max_error`. The rolling figures are
    computed afresh over the last `window` labels when read; the rolling AUC is an exact pair count, the log
    losses sums (within a few ulps of `LogLoss` and `Rolling(LogLoss())` updated one label at a time, which
    give River's numbers), the accuracies exact counts.

    Memory does not depend on the number of labels: 129 KB of AUC bins, 17 bytes per label of the window
    and at most `QUEUE` queued labels. Pickled (the queue is folded in first), a tracker takes 146 KB with
    `window=1000`, whether it has seen a thousand labels or a billion.

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
    >>> print(report["labels"], f"{report['roc_auc']:.4f} ± {report['roc_auc_max_error']:.4f}")
    300 0.9111 ± 0.0016
    >>> print(f"{report['roc_auc_rolling']:.4f}", f"{report['accuracy_rolling']:.2f}")
    0.9397 0.86

    (The exact cumulative AUC of these scores is 0.9110.)

    """

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"QualityTracker: window must be at least 1, got {window}")
        self.window = window
        self.labels = 0
        self.auc = BinnedROCAUC()
        self.loss_sum = 0.0
        self.correct = 0
        self.folded = 0
        self.recent_y = np.empty(0, dtype=bool)
        self.recent_p = np.empty(0, dtype=np.float64)
        self.recent_loss = np.empty(0, dtype=np.float64)
        self.queued_y: list[bool] = []
        self.queued_p: list[float] = []

    def __getstate__(self) -> dict:
        """A snapshot carries the folded figures, not the queue (the same figures, in fewer bytes)."""
        self._fold()
        return self.__dict__.copy()

    def update(self, y_true: bool, p_true: float) -> None:
        """Record one label with the probability of True that the model gave before learning it."""
        if p_true != p_true:
            raise ValueError("QualityTracker: the score is NaN")
        self.labels += 1
        self.queued_y.append(y_true)
        self.queued_p.append(p_true)
        if len(self.queued_y) >= QUEUE:
            self._fold()

    def report(self) -> dict:
        """Every figure by name (None where undefined: no labels yet, or AUC with one class)."""
        self._fold()
        n, w = self.folded, len(self.recent_y)
        return {
            "roc_auc": self.auc.get(),
            "roc_auc_max_error": self.auc.max_error(),
            "roc_auc_rolling": _auc(self.recent_y, self.recent_p),
            "log_loss": self.loss_sum / n if n else None,
            "log_loss_rolling": math.fsum(self.recent_loss.tolist()) / w if w else None,
            "accuracy": self.correct / n if n else None,
            "accuracy_rolling": int(np.count_nonzero((self.recent_p > 0.5) == self.recent_y)) / w if w else None,
            "labels": self.labels,
        }

    def _fold(self) -> None:
        if not self.queued_y:
            return
        ys = np.array(self.queued_y, dtype=bool)
        ps = np.array(self.queued_p, dtype=np.float64)
        self.queued_y, self.queued_p = [], []
        clipped = np.clip(ps, EPSILON, 1 - EPSILON)
        losses = -np.log(np.where(ys, clipped, 1 - clipped))
        self.auc.extend(ys, ps)
        self.loss_sum += math.fsum(losses.tolist())
        self.correct += int(np.count_nonzero((ps > 0.5) == ys))
        self.folded += len(ys)
        self.recent_y = _tail(self.recent_y, ys, self.window)
        self.recent_p = _tail(self.recent_p, ps, self.window)
        self.recent_loss = _tail(self.recent_loss, losses, self.window)


def _tail(old: np.ndarray, new: np.ndarray, keep: int) -> np.ndarray:
    """The last `keep` values of `old` followed by `new`, copying only those."""
    start = max(0, len(old) + len(new) - keep)
    if start >= len(old):
        return new[start - len(old) :].copy()
    return np.concatenate((old[start:], new))


def _auc(ys: np.ndarray, ps: np.ndarray) -> float | None:
    """Exact ROC AUC of scores `ps` for labels `ys`, ties counted ½ (None with a single class)."""
    positives, negatives = ps[ys], np.sort(ps[~ys])
    if not len(positives) or not len(negatives):
        return None
    return _below_x2(positives, [negatives]) / (2 * len(positives) * len(negatives))
