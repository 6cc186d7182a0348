"""River checkpoints (`models.checkpoints`) and their export (`models.export`), on real River and LightGBM.

- Taken every N labels and at each refit, named by labels learned, the newest `keep` kept; the first
  observation (a resumed run) takes none.
- A model warm-started from a checkpoint scores exactly as the model that wrote it did at that label:
  River alone, and the Ensemble with its LightGBM member and blend.
- Export writes LightGBM's own model text (same predictions), the River pickle with its versions, and the
  logistic regression's weights, which score as River does.
"""

from __future__ import annotations

import json
import pickle
import re

import lightgbm
import pytest
import river
from river import datasets

from models.checkpoints import CheckpointError, RiverCheckpoints, flush_writes, list_checkpoints, warm_start
from models.ensemble import Ensemble
from models.export import linear_weights, main, score_with_weights
from models.pipelines import make_model

PHISHING = list(datasets.Phishing())


def _ensemble() -> Ensemble:
    return Ensemble(refit_every=200, window=400, lag=30, num_boost_round=20, background=None)


def _learn(model, checkpoints: RiverCheckpoints, rows, probe: dict) -> dict[int, float]:
    """Learn `rows` observing after each label; the model's score of `probe` at each label a checkpoint was
    taken."""
    checkpoints.observe(model, 0, "v1")
    at: dict[int, float] = {}
    for n, (x, y) in enumerate(rows, start=1):
        model.learn_one(x, y)
        if checkpoints.observe(model, n, "v1"):
            at[n] = model.predict_proba_one(probe)[True]
    flush_writes()
    return at


def test_checkpoints_every_n_labels_and_at_refits(tmp_path):
    model = _ensemble()
    checkpoints = RiverCheckpoints(tmp_path, every=300, keep=100)
    taken = _learn(model, checkpoints, PHISHING[:1000], PHISHING[0][0])
    refits = [r["started_at"] + model.lag for r in model.registry.versions()]
    assert refits == [230, 430, 630, 830]
    assert sorted(taken) == sorted({300, 600, 900, *refits})
    found = list_checkpoints(tmp_path)
    assert [c.meta["labels"] for c in found] == sorted(taken)
    assert {c.meta["reason"] for c in found if c.meta["labels"] in refits} == {"refit"}
    meta = found[-1].meta
    assert (meta["river_version"], meta["features_version"], meta["kind"]) == (
        river.__version__,
        "v1",
        "ScaleAndEncode | LogisticRegression",
    )

    kept = RiverCheckpoints(tmp_path / "few", every=100, keep=3)
    _learn(make_model(), kept, PHISHING[:1000], PHISHING[0][0])
    assert [c.meta["labels"] for c in list_checkpoints(tmp_path / "few")] == [800, 900, 1000]


def test_the_first_observation_takes_no_checkpoint(tmp_path):
    model = make_model()
    for x, y in PHISHING[:100]:
        model.learn_one(x, y)
    checkpoints = RiverCheckpoints(tmp_path, every=100)
    assert not checkpoints.observe(model, 100, "v1")  # a run resumed at a multiple of N
    assert not checkpoints.observe(model, 100, "v1")
    flush_writes()
    assert list_checkpoints(tmp_path) == []


@pytest.mark.parametrize("kind", ["river", "ensemble"])
def test_a_warm_started_model_scores_as_the_model_that_wrote_the_checkpoint(tmp_path, kind):
    probe = PHISHING[1200][0]
    model = make_model() if kind == "river" else _ensemble()
    taken = _learn(model, RiverCheckpoints(tmp_path, every=250), PHISHING[:1000], probe)
    for checkpoint in list_checkpoints(tmp_path):
        fresh = make_model() if kind == "river" else _ensemble()
        started = warm_start(fresh, checkpoint)
        assert started.predict_proba_one(probe)[True] == taken[checkpoint.meta["labels"]]
    if kind == "ensemble":
        assert started.lightgbm_version == model.lightgbm_version is not None


def test_warm_start_refuses_another_kind_of_model(tmp_path):
    _learn(make_model(), RiverCheckpoints(tmp_path, every=50), PHISHING[:100], PHISHING[0][0])
    with pytest.raises(CheckpointError, match=re.escape("holds a ScaleAndEncode | LogisticRegression model")):
        warm_start(make_model("hoeffding_adaptive_tree"), list_checkpoints(tmp_path)[-1])


def test_export_writes_portable_models(tmp_path):
    model = _ensemble()
    registry = tmp_path / "registry"
    _learn(model, RiverCheckpoints(registry / "20261205T101500Z-abcdef" / "checkpoints", every=250), PHISHING, {})
    out = tmp_path / "out"
    assert main(["--registry", str(registry), str(out)]) == 0

    meta = json.loads((out / "river.json").read_text())
    assert (meta["labels"], meta["river_version"], meta["features_version"]) == (1250, river.__version__, "v1")
    river_model = pickle.loads((out / "river.pkl").read_bytes())
    x = PHISHING[7][0]
    assert river_model.predict_proba_one(x) == model.river.predict_proba_one(x)

    lgbm = json.loads((out / "lightgbm.json").read_text())
    assert lgbm["version"] == model.lightgbm_version
    booster = lightgbm.Booster(model_file=str(out / "lightgbm.txt"))
    row = [[float(x.get(c, float("nan"))) for c in lgbm["columns"]]]
    assert booster.predict(row)[0] == model.lightgbm.predict_proba(x)

    weights = json.loads((out / "logistic_regression.json").read_text())
    assert weights == linear_weights(model.river)
    assert score_with_weights(weights, x) == pytest.approx(model.river.predict_proba_one(x)[True], abs=1e-12)


def test_export_without_a_checkpoint_says_so(tmp_path, capsys):
    assert main(["--registry", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no River checkpoint in" in capsys.readouterr().err
