"""A bounded, seeded hyperparameter search for a LightGBM refit: Optuna's TPE sampler over a small space.

Optuna rather than hyperopt: both offer seeded TPE, but Optuna is the better kept of the two (regular releases,
typed API, `enqueue_trial` to start from known-good parameters) and runs in memory without a database. The
search is bounded by its trial count alone, never by a time budget: a search cut short by the clock would pick
other parameters on a slower machine, and a refit must give the same model wherever and whenever it runs. Each
trial trains on the older part of the window and stops early on the newer part (time-based validation, never
shuffled), so a trial's cost is its rounds until the validation log loss stops improving.

Class imbalance is searched rather than fixed: `scale_pos_weight` ranges from 1 (probabilities as they are,
what log loss rewards) to the negatives-to-positives ratio (the rare class weighted level), and the holdout's
log loss decides.

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

SPACE = ("learning_rate", "num_leaves", "min_data_in_leaf", "feature_fraction", "lambda_l2", "scale_pos_weight")
"""The parameters a search tunes; the others stay as `DEFAULT_PARAMS` (and `lgbm_params`) set them."""

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
    imbalance = max(1.0, negatives / positives) if positives else 1.0
    datasets = lightgbm_member._datasets(window, train, valid)
    valid_labels = window.labels[valid]
    best: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        tuned = {
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 5, 200, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
            "scale_pos_weight": trial.suggest_float("scale_pos_weight", 1.0, imbalance, log=True),
        }
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
        {
            "learning_rate": float(np.clip(base["learning_rate"], 0.02, 0.3)),
            "num_leaves": int(np.clip(base["num_leaves"], 7, 127)),
            "min_data_in_leaf": int(np.clip(base["min_data_in_leaf"], 5, 200)),
            "feature_fraction": float(np.clip(base.get("feature_fraction", 1.0), 0.5, 1.0)),
            "lambda_l2": float(np.clip(base.get("lambda_l2", 1e-3), 1e-3, 10.0)),
            "scale_pos_weight": float(np.clip(base.get("scale_pos_weight", 1.0), 1.0, imbalance)),
        }
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
