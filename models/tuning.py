"""A bounded, seeded hyperparameter search for a LightGBM refit: Optuna's TPE sampler over a small space.

Optuna rather than hyperopt: both offer seeded TPE, but Optuna is the better kept of the two (regular releases,
typed API, `enqueue_trial` to start from known-good parameters) and runs in memory without a database. The
search is bounded by its trial count alone, never by a time budget: a search cut short by the clock would pick
other parameters on a slower machine, and a refit must give the same model wherever and whenever it runs. Each
trial trains on the older part of the window and stops early on the newer part (time-based validation, never
shuffled), so a trial's cost is its rounds until the validation log loss stops improving.

Class imbalance is searched rather than fixed: `scale_pos_weight` ranges from 1 (probabilities as they are,
what log loss rewards) to the square root of the negatives-to-positives ratio (the rare class weighted half way
to level, on a log scale), and the holdout's log loss decides.

>>> import random
>>> from models.lightgbm_member import Encoded
>>> rng = random.Random(0)
>>> rows = [{"a": rng.random(), "b": rng.random()} for _ in range(600)]
>>> labels = [r["a"] + 0.3 * rng.random() > 0.8 for r in rows]
>>> window = Encoded.of(rows, labels)
>>> first = search(window, train=slice(0, 480), valid=slice(480, None), trials=4, seed=7, params={})
>>> first == search(window, train=slice(0, 480), valid=slice(480, None), trials=4, seed=7, params={})
True
>>> sorted(first.params) == sorted(SPACE), first.trials
(True, 4)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models import lightgbm_member
from models.gate import log_loss
from models.lightgbm_member import Encoded

RANGES: dict[str, tuple[float, float | None]] = {
    "learning_rate": (0.03, 0.15),
    "num_leaves": (15, 63),
    "min_data_in_leaf": (20, 200),
    "feature_fraction": (0.7, 1.0),
    "lambda_l2": (1e-3, 10.0),
    "scale_pos_weight": (1.0, None),  # up to the square root of the negatives-to-positives ratio
}
"""The parameters a search tunes and their ranges (log scale but for `feature_fraction`); the others stay as
`DEFAULT_PARAMS` (and `lgbm_params`) set them. Narrow on purpose: a holdout of a few thousand rows with a rare
class picks noise among wide ranges."""
SPACE = tuple(RANGES)
DEFAULTS = {"feature_fraction": 1.0, "lambda_l2": 1e-3, "scale_pos_weight": 1.0}

MAX_ROUNDS = 400
"""Boosting rounds a trial may use before early stopping ends it."""

STOPPING_ROUNDS = 20


@dataclass(frozen=True)
class Found:
    """The best trial: its parameters (the searched ones), its rounds at the best validation log loss, and that loss."""

    params: dict[str, Any]
    num_boost_round: int
    valid_log_loss: float
    trials: int
    model_str: str = field(repr=False, compare=False)
    """The best trial's model (trained on the older part of the window)."""
    valid_scores: np.ndarray = field(repr=False, compare=False)
    """Its predictions on the validation slice."""


def search(
    window: Encoded,
    train: slice,
    valid: slice,
    trials: int,
    seed: int,
    params: Mapping[str, Any],
    max_rounds: int = MAX_ROUNDS,
) -> Found:
    """The best of `trials` parameter sets by log loss on `window[valid]`, each trained on `window[train]` with
    early stopping on `window[valid]`. The first trial is `params` over the defaults as they are, so a search
    never ends worse on the validation slice than the untuned fit. Deterministic for a window and `seed`."""
    import optuna  # imported here: ~0.5 s, paid by the refit worker only

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = lightgbm_member.merged_params(params, seed)
    positives = float(window.labels[train].sum())
    negatives = float(len(window.labels[train])) - positives
    imbalance = math.sqrt(max(1.0, negatives / positives)) if positives else 1.0
    datasets = lightgbm_member._datasets(window, train, valid)
    valid_labels = window.labels[valid]
    best: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        tuned = {name: _suggest(trial, name, low, high, imbalance) for name, (low, high) in RANGES.items()}
        booster = lightgbm_member.train(
            window, train, {**base, **tuned}, max_rounds, valid, STOPPING_ROUNDS, datasets=datasets
        )
        rounds = booster.best_iteration or max_rounds
        trial.set_user_attr("rounds", rounds)
        scores = booster.predict(window.matrix[valid], num_iteration=rounds, num_threads=1)
        loss = log_loss(valid_labels, scores)
        loss = loss if math.isfinite(loss) else math.inf
        if not best or loss < best["loss"]:  # the first of equal trials wins, as in `study.best_trial`
            best.update(loss=loss, model_str=booster.model_to_string(num_iteration=rounds), scores=scores)
        return loss

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(5, trials // 2)))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.enqueue_trial(
        {name: _clip(name, base[name] if name in base else DEFAULTS[name], imbalance) for name in RANGES}
    )
    study.optimize(objective, n_trials=trials)
    trial = study.best_trial
    return Found(
        dict(trial.params),
        int(trial.user_attrs["rounds"]),
        float(trial.value),
        len(study.trials),
        best["model_str"],
        best["scores"],
    )


def _bounds(name: str, imbalance: float) -> tuple[float, float]:
    low, high = RANGES[name]
    return low, imbalance if high is None else high


def _suggest(trial, name: str, low: float, high: float | None, imbalance: float) -> float | int:
    low, high = _bounds(name, imbalance)
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(name, low, high, log=True)
    return trial.suggest_float(name, low, high, log=name != "feature_fraction")


def _clip(name: str, value: float, imbalance: float) -> float | int:
    low, high = _bounds(name, imbalance)
    clipped = min(max(value, low), high)
    return int(clipped) if isinstance(low, int) and isinstance(high, int) else float(clipped)
