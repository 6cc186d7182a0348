"""River pipelines chosen by name, so that a config value (`EDDY_MODEL`) picks the online learner.

Every pipeline takes `x` as a dict of feature → float, int, bool or str, where a feature may be absent
(SQL NULLs are left out by the caller). Seeds are fixed: two runs on the same events give the same scores.
"""

from __future__ import annotations

import difflib
import numbers

from river import base, compose, forest, linear_model, preprocessing, tree

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
        strings = compose.SelectType(str) | preprocessing.OneHotEncoder()
        numeric = compose.SelectType(numbers.Number) | preprocessing.StandardScaler()
        return (strings + numeric) | linear_model.LogisticRegression()
    if name == "adaptive_random_forest":
        return forest.ARFClassifier(seed=SEED)
    if name == "hoeffding_adaptive_tree":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=SEED)
    nearest = difflib.get_close_matches(name, MODELS, n=1)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}{hint}")
