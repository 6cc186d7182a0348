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
        return (EncodedStrings() + ScaledNumbers()) | linear_model.LogisticRegression()
    if name == "adaptive_random_forest":
        from river import forest  # imported on demand: it pulls in scipy.stats, a second of start-up

        return forest.ARFClassifier(seed=SEED)
    if name == "hoeffding_adaptive_tree":
        from river import tree

        return tree.HoeffdingAdaptiveTreeClassifier(seed=SEED)
    nearest = difflib.get_close_matches(name, MODELS, n=1)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}{hint}")


class ScaledNumbers(preprocessing.StandardScaler):
    """River's `StandardScaler` over the numeric features alone (bools as 0/1).

    The same numbers as `SelectType(numbers.Number) | StandardScaler()` at a fraction of the cost: a River
    pipeline whose last step is a transformer transforms once more after learning, and throws it away.

    >>> scaler = ScaledNumbers()
    >>> for x in ({"amount": 1.0, "country": "FR"}, {"amount": 3.0, "country": "DE"}):
    ...     scaler.learn_one(x)
    >>> scaler.transform_one({"amount": 3.0, "country": "FR"})
    {'amount': 1.0}
    """

    def learn_one(self, x: dict) -> None:
        super().learn_one(_numbers(x))

    def transform_one(self, x: dict) -> dict:
        return super().transform_one(_numbers(x))


class EncodedStrings(preprocessing.OneHotEncoder):
    """River's `OneHotEncoder` over the string features alone.

    >>> encoder = EncodedStrings()
    >>> encoder.learn_one({"amount": 1.0, "country": "FR"})
    >>> encoder.transform_one({"amount": 1.0, "country": "FR"})
    {'country_FR': 1}
    """

    def learn_one(self, x: dict) -> None:
        super().learn_one(_strings(x))

    def transform_one(self, x: dict, y: object = None) -> dict:
        return super().transform_one(_strings(x))


_NUMBER_TYPES = frozenset({int, float, bool})


def _numbers(x: dict) -> dict:
    """The numeric features (bools count as 0/1); `x` itself, not a copy, when every feature is one.

    `compose.SelectType(numbers.Number)` does the same through an ABC `isinstance` check per feature, which
    costs more than the scaler itself at tens of thousands of events a second; the usual row is told at C
    speed here."""
    if set(map(type, x.values())) <= _NUMBER_TYPES:
        return x
    return {k: v for k, v in x.items() if type(v) in _NUMBER_TYPES or _other_number(v)}


def _strings(x: dict) -> dict:
    """The string features (exactly `str`), for one-hot encoding."""
    if str not in set(map(type, x.values())):  # the usual row: no string feature, told at C speed
        return {}
    return {k: v for k, v in x.items() if type(v) is str}


def _other_number(v: object) -> bool:
    """numpy scalars, Decimals and the like: rare, so the slow ABC check is paid only for them."""
    return type(v) is not str and isinstance(v, numbers.Number)
