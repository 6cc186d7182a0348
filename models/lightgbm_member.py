"""LightGBM as an ensemble member: a booster plus the columns and category codes of its training window.

Columns and category codes are fixed per model version, so a feature added to the SQL reaches LightGBM at
its next refit, and a feature that disappears is read as missing (NaN), never an error. Predictions always
go through a booster parsed from `model_to_string()`, so a live model and one restored from a snapshot
give bit-identical scores.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import lightgbm
import numpy as np

NAN = math.nan
NUMBERS = frozenset((float, int, bool))
CHUNK = 8  # rows a background refit thread handles between GIL releases, so the scoring thread never waits long

MAX_CATEGORIES = 1000
ROWS_PER_CATEGORY = 20
FEW_CATEGORIES = 50
"""A string feature with more values than `MAX_CATEGORIES`, or than `FEW_CATEGORIES` and one per `ROWS_PER_CATEGORY`
rows, in a window is left out of that window's model."""

DEFAULT_PARAMS: dict = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "verbose": -1,
    # Same window, same model: required for a recovered run to reproduce an uninterrupted one.
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    # 63 bins rather than LightGBM's 255: a fit takes a quarter less of the core it shares with the flow, for
    # a log loss within a few per cent (docs/benchmarks.md, "Costs behind the code's choices").
    "max_bin": 63,
}


@dataclass(frozen=True)
class Schema:
    """The columns a model version was trained on; string columns carry their category codes."""

    columns: tuple[str, ...]
    codes: tuple[dict[str, int] | None, ...]

    def __post_init__(self) -> None:
        # Derived lookups for `_numbers`, rebuilt on unpickling (they are not fields).
        object.__setattr__(self, "_absent", (NAN,) * len(self.columns))
        object.__setattr__(self, "_codes_at", tuple((i, c) for i, c in enumerate(self.codes) if c is not None))

    def __getstate__(self) -> dict:
        return {"columns": self.columns, "codes": self.codes}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "columns", state["columns"])
        object.__setattr__(self, "codes", state["codes"])
        self.__post_init__()

    @classmethod
    def infer(cls, rows: Sequence[Mapping], yield_gil: bool = False) -> Schema:
        """Every feature seen in `rows`, sorted by name; a feature with any string value is categorical, and
        left out if it has more than `MAX_CATEGORIES` values, or more than `FEW_CATEGORIES` and more than one per
        `ROWS_PER_CATEGORY` rows (an identifier: a split on it learns the window's entities by heart). The
        codes are the values' ranks, fixed with the model version; a value the window did not hold reads as
        missing.

        A row whose values are all exactly float, int or bool (the usual case) holds no string, which one
        `set(map(type, ...))` tells at C speed; only other rows are walked value by value. `yield_gil` as
        in `matrix`."""
        names: set = set()
        strings: dict[str, set[str]] = {}
        for i, x in enumerate(rows):
            if yield_gil and i % CHUNK == 0:
                time.sleep(0)
            names.update(x.keys())
            if not set(map(type, x.values())) <= NUMBERS:
                for name, value in x.items():
                    if isinstance(value, str):
                        strings.setdefault(name, set()).add(value)
        most = max(FEW_CATEGORIES, min(MAX_CATEGORIES, len(rows) // ROWS_PER_CATEGORY))
        columns = tuple(sorted(names - {name for name, values in strings.items() if len(values) > most}))
        codes = tuple({v: i for i, v in enumerate(sorted(strings[c]))} if c in strings else None for c in columns)
        return cls(columns, codes)

    @property
    def categorical(self) -> list[int]:
        return [i for i, c in enumerate(self.codes) if c is not None]

    def encode(self, x: Mapping) -> list[float]:
        """One row as floats: unknown categories, wrong types and absent features are NaN."""
        return [float(v) for v in self._numbers(x)]

    def _numbers(self, x: Mapping) -> list[float | int | bool]:
        """One row as numbers of the values `encode` gives (ints and bools not yet converted: numpy's
        float64 conversion is `float()`'s). The usual row, all float, int, bool or absent, takes one
        `map` and one type check at C speed; a row with anything else goes value by value.

        Exact type checks come first: `isinstance(v, numbers.Real)` is an ABC check that made encoding 4x
        slower, and encoding runs on the scoring thread for every event once LightGBM is in force."""
        row = list(map(x.get, self.columns, self._absent))
        for i, codes in self._codes_at:
            value = row[i]
            code = codes.get(value) if type(value) is str or isinstance(value, str) else None
            row[i] = NAN if code is None else float(code)
        if set(map(type, row)) <= NUMBERS:
            return row
        return [
            value
            if type(value) is float
            else float(value)
            if type(value) is int or type(value) is bool or isinstance(value, numbers.Real)
            else NAN
            for value in row
        ]

    def matrix(self, rows: Sequence[Mapping], yield_gil: bool = False) -> np.ndarray:
        """Encode many rows. A refit in a background thread passes `yield_gil`, releasing the GIL every `CHUNK`
        rows so the scoring thread waits little; the scoring thread and a refit in its own process do not
        (each `sleep(0)` costs ~0.07-0.1 ms: 0.3 s of a refit's 0.8 s on a 20,000-row window)."""
        if not yield_gil:
            encoded = [self._numbers(x) for x in rows]
        else:
            encoded = []
            for start in range(0, len(rows), CHUNK):
                encoded.extend([self._numbers(x) for x in rows[start : start + CHUNK]])
                time.sleep(0)
        return np.array(encoded, dtype=np.float64).reshape(len(rows), len(self.columns))


class LightGBMMember:
    """A fitted LightGBM model that scores one feature dict at a time; pickles as its model text."""

    def __init__(self, model_str: str, schema: Schema):
        self.model_str = model_str
        self.schema = schema
        self._booster: lightgbm.Booster | None = None

    @property
    def booster(self) -> lightgbm.Booster:
        if self._booster is None:
            self._booster = lightgbm.Booster(model_str=self.model_str)
        return self._booster

    def warm(self) -> LightGBMMember:
        """Parse the model and score one row now (~15 ms, mostly outside the GIL): a background thread
        calls this so that the scoring thread's first prediction with a new model does not pay it."""
        self.booster.predict(np.full((1, len(self.schema.columns)), NAN), num_threads=1)
        return self

    def predict_proba(self, x: Mapping) -> float:
        """P(True | x). One thread: per-row calls are dominated by thread start-up otherwise."""
        row = np.array([self.schema._numbers(x)], dtype=np.float64)
        return float(self.booster.predict(row, num_threads=1)[0])

    def predict_many(self, rows: Sequence[Mapping], yield_gil: bool = False) -> np.ndarray:
        """P(True) for many rows in one call; `yield_gil` when called from a background refit."""
        return self.booster.predict(self.schema.matrix(rows, yield_gil), num_threads=1)

    def __getstate__(self) -> dict:
        return {"model_str": self.model_str, "schema": self.schema}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _booster=None)


def fit(
    rows: Sequence[Mapping],
    labels: Sequence[bool],
    params: Mapping | None = None,
    num_boost_round: int = 100,
    seed: int = 42,
    yield_gil: bool = True,
) -> LightGBMMember:
    """Train on `rows`; deterministic for a given window, parameters and seed. `yield_gil` (as in
    `Schema.matrix`) when another thread is scoring in this process."""
    window = Encoded.of(rows, labels, yield_gil)
    booster = train(window, slice(None), merged_params(params, seed), num_boost_round)
    return LightGBMMember(booster.model_to_string(), window.schema)


def merged_params(params: Mapping | None, seed: int) -> dict:
    """`DEFAULT_PARAMS` with the seed and `params` over them: what a fit trains with."""
    return {**DEFAULT_PARAMS, "seed": seed, **(params or {})}


@dataclass(frozen=True)
class Encoded:
    """A training window encoded once (one schema for every fit on it), so that a search's trials and the final
    fit on the whole window do not encode the rows again."""

    schema: Schema
    matrix: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, rows: Sequence[Mapping], labels: Sequence[bool], yield_gil: bool = False) -> Encoded:
        schema = Schema.infer(rows, yield_gil)
        if not schema.columns:
            raise ValueError("no features in the training window")
        return cls(schema, schema.matrix(rows, yield_gil), np.asarray(labels, dtype=np.float64))

    def dataset(self, rows: slice, reference: lightgbm.Dataset | None = None) -> lightgbm.Dataset:
        # `feature_pre_filter` off: a search varies `min_data_in_leaf`, which a pre-filtered Dataset fixes.
        return lightgbm.Dataset(
            self.matrix[rows],
            label=self.labels[rows],
            feature_name=[f"f{i}" for i in range(len(self.schema.columns))],
            categorical_feature=self.schema.categorical,
            params={"verbose": -1, "feature_pre_filter": False},
            reference=reference,
        )


def train(
    window: Encoded,
    rows: slice,
    params: Mapping,
    num_boost_round: int,
    valid: slice | None = None,
    stopping_rounds: int | None = None,
    datasets: tuple[lightgbm.Dataset, lightgbm.Dataset | None] | None = None,
) -> lightgbm.Booster:
    """A booster trained on `window.matrix[rows]`; with `valid` and `stopping_rounds`, boosting stops once the
    log loss on `window.matrix[valid]` has not improved for `stopping_rounds` rounds (`best_iteration` is kept).
    `datasets` reuses Datasets already built for these slices (their bins are made once per search)."""
    train_set, valid_set = datasets if datasets is not None else _datasets(window, rows, valid)
    callbacks = []
    if valid_set is not None and stopping_rounds:
        callbacks.append(lightgbm.early_stopping(stopping_rounds, first_metric_only=True, verbose=False))
    return lightgbm.train(
        {**params, "metric": "binary_logloss"},
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[valid_set] if valid_set is not None else None,
        callbacks=callbacks,
    )


def _datasets(window: Encoded, rows: slice, valid: slice | None) -> tuple[lightgbm.Dataset, lightgbm.Dataset | None]:
    train_set = window.dataset(rows)
    return train_set, None if valid is None else window.dataset(valid, reference=train_set)
