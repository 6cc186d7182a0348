"""River pipelines chosen by name, so that a config value (`EDDY_MODEL`) picks the online learner.

Every pipeline takes `x` as a dict of feature → float, int, bool or str, where a feature may be absent
(SQL NULLs are left out by the caller). Seeds are fixed: two runs on the same events give the same scores.
"""

from __future__ import annotations

import difflib
import numbers

from river import base, linear_model, preprocessing

SEED = 42

MODELS = {
    "logistic_regression": "one-hot strings + standard-scaled numbers (bools as 0/1) → logistic regression",
    "adaptive_random_forest": "adaptive random forest of 10 Hoeffding trees with drift detectors (slow)",
    "hoeffding_adaptive_tree": "one Hoeffding adaptive tree with drift detection",
}


def make_model(name: str = "logistic_regression") -> base.Classifier:
    """A fresh, unfitted River classifier for `name`, one of `MODELS`.

    The default is River's textbook `StandardScaler() | LogisticRegression()` with a one-hot branch for
    string-valued features; on all-numeric data it gives exactly the same numbers as the textbook
    pipeline. Bools are numbers in Python, so they are scaled as 0/1. Trees take strings natively.

    >>> from river import datasets, metrics
    >>> model = make_model()
    >>> metric = metrics.ROCAUC()
    >>> for x, y in datasets.Phishing().take(500):
    ...     metric.update(y, model.predict_proba_one(x))
    ...     model.learn_one(x, y)
    >>> print(metric)
    ROCAUC: 92.73%

    """
    if name == "logistic_regression":
        strings = Strings() | preprocessing.OneHotEncoder()
        numeric = Numbers() | preprocessing.StandardScaler()
        return (strings + numeric) | linear_model.LogisticRegression()
    if name == "adaptive_random_forest":
        from river import forest  # imported on demand: it pulls in scipy.stats, a second of start-up

        return forest.ARFClassifier(seed=SEED)
    if name == "hoeffding_adaptive_tree":
        from river import tree

        return tree.HoeffdingAdaptiveTreeClassifier(seed=SEED)
    nearest = difflib.get_close_matches(name, MODELS, n=1)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}{hint}")


class Numbers(base.Transformer):
    """Keeps the numeric features (bools count as 0/1).

    `compose.SelectType(numbers.Number)` does the same through an ABC `isinstance` check per feature,
    which costs more than the scaler itself at tens of thousands of events a second.

    >>> Numbers().transform_one({"amount": 2.5, "n": 3, "vip": True, "country": "FR"})
    {'amount': 2.5, 'n': 3, 'vip': True}
    """

    def transform_one(self, x: dict) -> dict:
        if set(map(type, x.values())) <= _NUMBER_TYPES:  # the usual row: every feature a number, at C speed
            return dict(x)
        return {k: v for k, v in x.items() if type(v) in _NUMBER_TYPES or _other_number(v)}


class Strings(base.Transformer):
    """Keeps the string features (for one-hot encoding).

    >>> Strings().transform_one({"amount": 2.5, "country": "FR"})
    {'country': 'FR'}
    """

    def transform_one(self, x: dict) -> dict:
        if str not in set(map(type, x.values())):  # the usual row: no string feature, told at C speed
            return {}
        return {k: v for k, v in x.items() if type(v) is str}


_NUMBER_TYPES = frozenset({int, float, bool})


def _other_number(v: object) -> bool:
    """numpy scalars, Decimals and the like: rare, so the slow ABC check is paid only for them."""
    return type(v) is not str and isinstance(v, numbers.Number)
