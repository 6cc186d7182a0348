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
CHUNK = 16  # rows handled between GIL releases, so a background refit stalls the scoring thread ~0.1 ms at most

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
        """One row as floats: unknown categories, wrong types and absent features are NaN."""
        row = []
        for name, codes in zip(self.columns, self.codes, strict=True):
            value = x.get(name)
            if codes is not None:
                code = codes.get(value) if isinstance(value, str) else None
                row.append(NAN if code is None else float(code))
            elif isinstance(value, numbers.Real):
                row.append(float(value))
            else:
                row.append(NAN)
        return row

    def matrix(self, rows: Sequence[Mapping]) -> np.ndarray:
        """Encode many rows, yielding the GIL every `CHUNK` rows (this runs beside the scoring thread)."""
        out = np.empty((len(rows), len(self.columns)), dtype=np.float64)
        for start in range(0, len(rows), CHUNK):
            for i in range(start, min(start + CHUNK, len(rows))):
                out[i] = self.encode(rows[i])
            time.sleep(0)
        return out


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

    def predict_many(self, rows: Sequence[Mapping]) -> np.ndarray:
        return self.booster.predict(self.schema.matrix(rows), num_threads=1)

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
        schema.matrix(rows),
        label=np.asarray(labels, dtype=np.float64),
        feature_name=[f"f{i}" for i in range(len(schema.columns))],
        categorical_feature=schema.categorical,
        params={"verbose": -1},
    )
    booster = lightgbm.train(merged, data, num_boost_round=num_boost_round)
    return LightGBMMember(booster.model_to_string(), schema)
