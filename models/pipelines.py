"""River pipelines chosen by name, so that a config value (`EDDY_MODEL`) picks the online learner.

Every pipeline takes `x` as a dict of feature → float, int, bool or str, where a feature may be absent
(SQL NULLs are left out by the caller). Seeds are fixed: two runs on the same events give the same scores.
Features named in `text_fields` are free text: River's text extractors turn them into hashed term weights
(`models.text`), which every model takes as they come (counts or TF-IDF need no scaling).
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Sequence

from river import base, linear_model, preprocessing

from models.text import TextColumns, TextSettings

SEED = 42

MODELS = {
    "logistic_regression": "one-hot strings + standard-scaled numbers (bools as 0/1) → logistic regression",
    "adaptive_random_forest": "adaptive random forest of 10 Hoeffding trees with drift detectors (slow)",
    "hoeffding_adaptive_tree": "one Hoeffding adaptive tree with drift detection",
}


def make_model(
    name: str = "logistic_regression", text_fields: Sequence[str] = (), text: TextSettings | None = None
) -> base.Classifier:
    """A fresh, unfitted River classifier for `name`, one of `MODELS`; the features named in `text_fields`
    go through `text`'s extractor (`models.text`), one each.

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
    columns = None
    if text_fields:
        settings = text or TextSettings()
        columns = TextColumns({field: settings.vectorizer(field) for field in text_fields})
    if name == "logistic_regression":
        return ScaleAndEncode(columns) | linear_model.LogisticRegression()
    if name == "adaptive_random_forest":
        from river import forest  # imported on demand: it pulls in scipy.stats, a second of start-up

        return _with_text(columns, forest.ARFClassifier(seed=SEED))
    if name == "hoeffding_adaptive_tree":
        from river import tree

        return _with_text(columns, tree.HoeffdingAdaptiveTreeClassifier(seed=SEED))
    nearest = difflib.get_close_matches(name, MODELS, n=1)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}{hint}")


def _with_text(columns: TextColumns | None, model: base.Classifier) -> base.Classifier:
    """Trees take numbers and categories as they come; a text field as a category would split on whole
    messages, so it becomes its term weights first."""
    return model if columns is None else columns | model


class ScaleAndEncode(base.Transformer):
    """River's `StandardScaler` on the numeric features (bools as 0/1) and `OneHotEncoder` on the string ones.

    The same numbers as `(SelectType(str) | OneHotEncoder()) + (SelectType(numbers.Number) | StandardScaler())`
    at a fraction of the cost: one type scan a call tells the usual all-numbers row, where a union would scan
    it once per branch, and a River pipeline ending in a transformer (each branch) transforms once more after
    learning, and throws the result away.

    >>> step = ScaleAndEncode()
    >>> for x in ({"amount": 1.0, "country": "FR"}, {"amount": 3.0, "country": "DE"}):
    ...     step.learn_one(x)
    >>> step.transform_one({"amount": 3.0, "country": "FR"})
    {'amount': 1.0, 'country_FR': 1, 'country_DE': 0}
    >>> step.transform_one({"amount": 1.0})
    {'amount': -1.0, 'country_FR': 0, 'country_DE': 0}

    With `text`, the text fields become their extractors' term weights (`models.text.TextColumns`), which
    are not scaled: a word seen once in each message it is in has a variance of zero there, and scaling
    would make it 0.

    >>> from models.text import TextSettings
    >>> step = ScaleAndEncode(TextColumns({"body": TextSettings(buckets=16).vectorizer("body")}))
    >>> step.learn_one({"amount": 1.0, "body": "refund now"})
    >>> step.transform_one({"amount": 1.0, "body": "refund"})
    {'amount': 0.0, 'body#8': 1.0}
    """

    text: TextColumns | None = None  # what a step pickled without text fields resumes with

    def __init__(self, text: TextColumns | None = None) -> None:
        self.text = text
        self.scaler = preprocessing.StandardScaler()
        self.encoder = preprocessing.OneHotEncoder()

    def learn_one(self, x: dict) -> None:
        if self.text is not None:
            self.text.learn_one(x)
            x = self.text.others(x)
        if set(map(type, x.values())) <= _NUMBER_TYPES:  # the usual row: every feature a number, at C speed
            self.scaler.learn_one(x)
            return
        self.encoder.learn_one(_strings(x))
        self.scaler.learn_one(_numbers(x))

    def transform_one(self, x: dict) -> dict:
        if self.text is not None:
            out = self._transform(self.text.others(x))
            out.update(self.text.features(x))
            return out
        return self._transform(x)

    def _transform(self, x: dict) -> dict:
        if set(map(type, x.values())) <= _NUMBER_TYPES:
            out = self.scaler.transform_one(x)
            out.update(self.encoder.transform_one({}))  # the zeros of the categories seen so far
            return out
        out = self.scaler.transform_one(_numbers(x))
        out.update(self.encoder.transform_one(_strings(x)))
        return out


_NUMBER_TYPES = frozenset({int, float, bool})


def _numbers(x: dict) -> dict:
    """The numeric features (bools count as 0/1) of a row that is not all numbers.

    `compose.SelectType(numbers.Number)` does the same through an ABC `isinstance` check per feature, which
    costs more than the scaler itself at tens of thousands of events a second: only values of other types
    than int, float, bool and str pay it here."""
    return {k: v for k, v in x.items() if type(v) in _NUMBER_TYPES or _other_number(v)}


def _strings(x: dict) -> dict:
    """The string features (exactly `str`), for one-hot encoding."""
    return {k: v for k, v in x.items() if type(v) is str}


def _other_number(v: object) -> bool:
    """numpy scalars, Decimals and the like: rare, so the slow ABC check is paid only for them."""
    return type(v) is not str and isinstance(v, numbers.Number)
