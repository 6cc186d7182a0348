"""The raw string fields declared in `[fields]` reach LightGBM as categorical features; River never sees them."""

from __future__ import annotations

import pickle
import random
from dataclasses import replace

import pytest

from dataflows.flow.config import ConfigError, load_config
from dataflows.flow.messages import Event, FeaturedEvent, Origin
from dataflows.flow.model_choice import build_model
from dataflows.flow.steps import ScoreAndLearn
from models import make_model

T0 = 1_767_225_600_000
COUNTRIES = ("FR", "DE", "NL", "BR", "XX")


def events(n: int, seed: int = 3) -> list[FeaturedEvent]:
    """Fraud lives in one country: only the raw `country` field tells it; the features are noise."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        country = rng.choice(COUNTRIES)
        label = rng.random() < (0.6 if country == "XX" else 0.05)
        fields = {"user_id": f"u{i}", "merchant_id": "m1", "amount": 10.0, "category": "food", "country": country}
        origin = Origin("events", i % 3, i)
        out.append(FeaturedEvent(Event(f"e{i}", T0 + i, fields, label, origin), {"noise": rng.random()}, "v1"))
    return out


def step_for(tmp_path, **ensemble) -> ScoreAndLearn:
    base = load_config()
    settings = {**base.ensemble, "refit_every": 400, "window": 800, "lag": 50, "num_boost_round": 100}
    settings.update(background="none", registry_dir=str(tmp_path / "registry"), **ensemble)
    return ScoreAndLearn(replace(base, ensemble=settings), None, None, None, "eddy")


def test_string_fields_reach_lightgbm_as_categories_and_never_river(tmp_path):
    step = step_for(tmp_path)
    model = step.state.learner.model
    assert model.lightgbm_fields == ["user_id", "merchant_id", "category", "country"]
    stream = events(1_200)
    step.on_batch(stream)
    schema = model.lightgbm.schema
    assert schema.columns == ("category", "country", "merchant_id", "noise"), "user_id: an identifier, left out"
    assert schema.codes[1] == {country: code for code, country in enumerate(sorted(COUNTRIES))}
    # River learned from the features alone: a River model fed them gives its scores exactly.
    river = make_model(step.config.model)
    for item in stream:
        river.learn_one(item.features, item.event.label)
    x = {"noise": 0.5}
    assert model.river.predict_proba_one(x) == river.predict_proba_one(x)
    # LightGBM tells the fraud country; an unseen country reads as missing; the mapping survives a pickle.
    lgbm = model.lightgbm
    xx, fr = lgbm.predict_proba({**x, "country": "XX"}), lgbm.predict_proba({**x, "country": "FR"})
    assert xx > 0.5 > 0.25 > fr, (xx, fr)
    assert lgbm.predict_proba({**x, "country": "never seen"}) == lgbm.predict_proba(x)
    restored = pickle.loads(pickle.dumps(model))
    assert restored.lightgbm.predict_proba({**x, "country": "XX"}) == xx


def test_categorical_fields_false_keeps_the_features_only(tmp_path):
    step = step_for(tmp_path, categorical_fields=False)
    step.on_batch(events(600))
    model = step.state.learner.model
    assert model.lightgbm_fields == []
    assert [r["features"] for r in model.registry.versions()] == [["noise"]]


def test_categorical_fields_naming_a_field_that_is_not_a_string_fails_fast(tmp_path):
    base = load_config()
    with pytest.raises(ConfigError, match=r"categorical_fields names \['amount'\], which \[fields\] does not declare"):
        build_model(replace(base, ensemble={**base.ensemble, "categorical_fields": ["amount"]}))
    assert build_model(
        replace(base, ensemble={**base.ensemble, "categorical_fields": ["country"]})
    ).lightgbm_fields == ["country"]
