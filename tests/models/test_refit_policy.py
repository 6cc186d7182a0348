"""What a refit must earn to take effect: a seeded search, the champion beaten on the same holdout, and early
refits when a member's error rises (drift), all deterministic."""

from __future__ import annotations

import os
import pickle
import random
from dataclasses import replace

import numpy as np
import pytest
from river.datasets import synth

from models import lightgbm_member, refit
from models.ensemble import Ensemble
from models.gate import Gate, log_loss
from models.registry import ModelRegistry


def rows_and_labels(n: int, seed: int, noise: float = 0.0) -> tuple[tuple[dict, ...], tuple[bool, ...]]:
    """Two informative features and one of noise; `noise` flips that share of the labels."""
    rng = random.Random(seed)
    rows, labels = [], []
    for _ in range(n):
        x = {"a": rng.random(), "b": rng.random(), "c": rng.random()}
        y = x["a"] + 0.5 * x["b"] > 0.9
        rows.append(x)
        labels.append(y != (rng.random() < noise))
    return tuple(rows), tuple(labels)


def test_the_search_is_deterministic_for_a_seed_and_its_parameters_are_recorded():
    rows, labels = rows_and_labels(2_000, seed=1, noise=0.05)
    job = refit.RefitJob(
        1, 2_000, 2_100, rows, labels, window={"first_position": 1}, trials=6, seed=11, refit_whole=True
    )
    first, again = refit.run(job, yield_gil=False), refit.run(pickle.loads(pickle.dumps(job)), yield_gil=False)
    assert first.accepted and first.search == {"trials": 6, "valid_log_loss": first.search["valid_log_loss"]}
    assert first.params == again.params and first.num_boost_round == again.num_boost_round
    assert first.member.model_str == again.member.model_str
    probe = list(rows_and_labels(300, seed=2)[0])
    assert np.array_equal(first.member.predict_many(probe), again.member.predict_many(probe))
    record = first.record(job)
    assert {k: record["params"][k] for k in first.params} == first.params
    assert record["num_boost_round"] == first.num_boost_round and record["trained_on"] == "window"
    # The first trial is the untuned parameters: the search ends no worse than them on the validation slice.
    untuned = refit.run(refit.RefitJob(1, 2_000, 2_100, rows, labels, window={}, seed=11), yield_gil=False)
    assert first.search["valid_log_loss"] <= untuned.metrics["log_loss"]
    # Another seed explores other parameters.
    other = refit.run(refit.RefitJob(1, 2_000, 2_100, rows, labels, window={}, trials=6, seed=12), yield_gil=False)
    assert other.params != first.params


def test_a_model_that_passes_the_gate_is_fitted_again_on_the_whole_window():
    rows, labels = rows_and_labels(1_000, seed=3)
    job = refit.RefitJob(1, 1_000, 1_050, rows, labels, window={"first_position": 1}, refit_whole=True)
    whole = refit.run(job, yield_gil=False)
    assert whole.accepted and whole.trained_on == "window" and whole.trained_until == 1_000
    direct = lightgbm_member.fit(rows, labels, seed=42, yield_gil=False)
    assert whole.member.model_str == direct.model_str
    held_out = refit.run(refit.RefitJob(1, 1_000, 1_050, rows, labels, window={"first_position": 1}), yield_gil=False)
    assert held_out.trained_on == "train" and held_out.trained_until == 800
    assert held_out.member.model_str != whole.member.model_str


def test_a_challenger_worse_than_the_champion_is_rejected_and_kept_with_its_reason():
    clean_rows, clean_labels = rows_and_labels(1_000, seed=4)
    champion = lightgbm_member.fit(clean_rows, clean_labels, num_boost_round=50, yield_gil=False)
    rows, labels = rows_and_labels(1_000, seed=5)
    noisy = tuple(y != (i % 4 == 0) for i, y in enumerate(labels[:800])) + labels[800:]  # a quarter flipped
    job = refit.RefitJob(
        2, 2_000, 2_050, rows, noisy, window={"first_position": 1_001}, num_boost_round=50,
        champion=champion, champion_version=1, champion_last_position=1_000,
    )  # fmt: skip
    result = refit.run(job, yield_gil=False)
    base = log_loss(labels[800:], [sum(noisy[:800]) / 800] * 200)
    assert result.metrics["log_loss"] < base, "the challenger beats the base rate: only the champion stops it"
    assert not result.accepted
    assert result.reason.endswith("of the model in force on 200 rows")
    assert result.metrics["champion"] < result.metrics["challenger"] == result.metrics["log_loss"]
    registry = ModelRegistry()
    registry.save(result.record(job), result.member)
    kept = registry.versions()[-1]
    assert (kept["accepted"], kept["champion_version"], kept["reason"]) == (False, 1, result.reason)
    assert kept["rejected_by"] == result.rejected_by == "champion", "a healthy refit that lost, not a failed one"
    assert registry.load(2) is result.member
    # The same challenger without a champion would have gone into force.
    assert refit.run(replace(job, champion=None), yield_gil=False).accepted


def test_the_champion_is_compared_only_on_held_out_rows_it_never_trained_on():
    labels = [True, False] * 50
    good = [0.9 if y else 0.1 for y in labels]
    champion = [0.99 if y else 0.01 for y in labels[:60]] + [0.1 if y else 0.9 for y in labels[60:]]
    accepted, reason, metrics, rejected_by = Gate().judge(labels, good, 0.5, champion, unseen_from=60)
    assert accepted and rejected_by is None and metrics["compared_rows"] == 40, reason
    accepted, reason, *_ = Gate().judge(labels, good, 0.5, champion, unseen_from=0)
    assert accepted, "on all the rows the champion's memorised ones would count: it is still worse overall"
    lost = Gate().judge(labels, good, 0.5, [0.99 if y else 0.01 for y in labels])
    assert (lost.accepted, lost.rejected_by) == (False, "champion")
    assert Gate().judge(labels, good, 0.5, good)[0], "a tie goes to the newer model"
    assert not Gate("auc").judge(labels, [0.6 if y else 0.4 for y in labels[:50]] + [0.4] * 50, 0.5, good)[0]


def agrawal(n: int, change_at: int) -> list[tuple[dict, bool]]:
    """A stream whose concept changes abruptly at `change_at` (one Agrawal function for another)."""
    before = synth.Agrawal(classification_function=0, seed=1)
    after = synth.Agrawal(classification_function=2, seed=2)
    return [(x, bool(y)) for x, y in before.take(change_at)] + [(x, bool(y)) for x, y in after.take(n - change_at)]


def run(model: Ensemble, stream) -> list[tuple]:
    for x, y in stream:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    return [
        (r["version"], r["started_at"], r["trigger"], r["window"]["first_position"]) for r in model.registry.versions()
    ]


DRIFT = {
    "refit_every": 2_000,
    "window": 3_000,
    "lag": 100,
    "num_boost_round": 30,
    "keep": 50,
    "background": None,
    "drift_min_rows": 1_000,
}


def test_a_rise_in_a_members_error_starts_an_early_refit_on_the_rows_since_the_change_deterministically():
    stream = agrawal(5_000, change_at=3_000)
    model = Ensemble(**DRIFT)
    refits = run(model, stream)
    drifts = [r for r in refits if r[2].startswith("drift")]
    assert drifts, refits
    _, started_at, reason, first = drifts[0]
    assert 3_000 < started_at < 4_000, "early: the next scheduled refit is at 4,000"
    assert 2_900 <= first <= 3_300, "trained on the rows since the estimated change, not the whole window"
    assert started_at - first + 1 >= DRIFT.get("drift_min_rows", 1_000)
    assert "ADWIN" in reason and "error rise" in reason
    assert model.health()["triggers"] == {"schedule": 2, "drift": len(drifts)}
    assert model.health()["last"]["trigger"] == refits[-1][2]
    # Same run twice, and a run pickled and restored halfway through: the same refit points.
    assert run(Ensemble(**DRIFT), stream) == refits
    halfway = Ensemble(**DRIFT)
    run(halfway, stream[:3_200])
    restored = pickle.loads(pickle.dumps(halfway))
    assert run(restored, stream[3_200:]) == refits


def test_without_a_detector_refits_follow_the_schedule_only():
    refits = run(Ensemble(**DRIFT, drift_detector=None), agrawal(5_000, change_at=3_000))
    assert [(started, trigger) for _, started, trigger, _ in refits] == [(2_000, "schedule"), (4_000, "schedule")]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"search_trials": -1}, "search_trials must be >= 0"),
        ({"drift_detector": "page_hinkley"}, "drift_detector must be one of"),
        ({"drift_min_rows": 1}, "drift_min_rows must be at least 2"),
    ],
)
def test_bad_refit_settings_fail_fast(params, message):
    with pytest.raises(ValueError, match=message):
        Ensemble(**params)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_the_worker_runs_at_normal_priority_only_while_the_flow_waits_for_it():
    pool = refit._pool()
    assert pool.submit(refit._ready).result(timeout=120)
    (pid,) = pool._processes
    assert (os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid)) == (os.SCHED_IDLE, refit.NICE)
    with refit._waited_on():
        assert (os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid)) == (os.SCHED_OTHER, 0)
    assert (os.sched_getscheduler(pid), os.getpriority(os.PRIO_PROCESS, pid)) == (os.SCHED_IDLE, refit.NICE)
