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
CHUNK = 8  # rows a background refit handles between GIL releases: the scoring thread waits ~0.05 ms at most

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
}


@dataclass(frozen=True)
class Schema:
    """The columns a model version was trained on; string columns carry their category codes."""

    columns: tuple[str, ...]
    codes: tuple[dict[str, int] | None, ...]

    @classmethod
    def infer(cls, rows: Sequence[Mapping]) -> Schema:
        """Every feature seen in `rows`, sorted by name; a feature with any string value is categorical."""
        values: dict[str, set[str] | None] = {}
        for i, x in enumerate(rows):
            if i % CHUNK == 0:
                time.sleep(0)
            for name, value in x.items():
                seen = values.setdefault(name, None)
                if isinstance(value, str):
                    if seen is None:
                        seen = values[name] = set()
                    seen.add(value)
        columns = tuple(sorted(values))
        codes = tuple(None if values[c] is None else {v: i for i, v in enumerate(sorted(values[c]))} for c in columns)
        return cls(columns, codes)

    @property
    def categorical(self) -> list[int]:
        return [i for i, c in enumerate(self.codes) if c is not None]

    def encode(self, x: Mapping) -> list[float]:
        """One row as floats: unknown categories, wrong types and absent features are NaN.

        Exact type checks come first: `isinstance(v, numbers.Real)` is an ABC check that made encoding 4x
        slower, and encoding runs on the scoring thread for every event once LightGBM is in force."""
        row = []
        for name, codes in zip(self.columns, self.codes, strict=True):
            value = x.get(name)
            kind = type(value)
            if codes is not None:
                code = codes.get(value) if kind is str or isinstance(value, str) else None
                row.append(NAN if code is None else float(code))
            elif kind is float:
                row.append(value)
            elif kind is int or kind is bool or isinstance(value, numbers.Real):
                row.append(float(value))
            else:
                row.append(NAN)
        return row

    def matrix(self, rows: Sequence[Mapping], yield_gil: bool = False) -> np.ndarray:
        """Encode many rows. A background refit passes `yield_gil`, releasing the GIL every `CHUNK` rows so
        the scoring thread waits little; the scoring thread does not (each `sleep(0)` costs it ~0.1 ms)."""
        if not yield_gil:
            encoded = [self.encode(x) for x in rows]
        else:
            encoded = []
            for start in range(0, len(rows), CHUNK):
                encoded.extend([self.encode(x) for x in rows[start : start + CHUNK]])
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

    def predict_proba(self, x: Mapping) -> float:
        """P(True | x). One thread: per-row calls are dominated by thread start-up otherwise."""
        row = np.array([self.schema.encode(x)], dtype=np.float64)
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
) -> LightGBMMember:
    """Train on `rows`; deterministic for a given window, parameters and seed."""
    schema = Schema.infer(rows)
    if not schema.columns:
        raise ValueError("no features in the training window")
    merged = {**DEFAULT_PARAMS, "seed": seed, **(params or {})}
    data = lightgbm.Dataset(
        schema.matrix(rows, yield_gil=True),
        label=np.asarray(labels, dtype=np.float64),
        feature_name=[f"f{i}" for i in range(len(schema.columns))],
        categorical_feature=schema.categorical,
        params={"verbose": -1},
    )
    booster = lightgbm.train(merged, data, num_boost_round=num_boost_round)
    return LightGBMMember(booster.model_to_string(), schema)
