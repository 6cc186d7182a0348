"""The Ensemble blends River and LightGBM, reports both, and copes with features that come and go."""

from __future__ import annotations

import copy
import math
import numbers
import pickle
import random
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import datasets, evaluate, linear_model, metrics, preprocessing

from models.ensemble import Ensemble
from models.lightgbm_member import LightGBMMember, Schema

PHISHING = list(datasets.Phishing())


def small(**params) -> Ensemble:
    defaults = {"refit_every": 100, "window": 300, "lag": 20, "num_boost_round": 20}
    return Ensemble(**{**defaults, **params})


def test_river_alone_until_a_lightgbm_model_is_in_force():
    model = small()
    river = model.river.clone()
    for x, y in PHISHING[:120]:
        scored = model.predict_proba_one_detailed(x)
        assert scored.scores["lightgbm"] is None and scored.versions["lightgbm"] is None
        shares = {k: scored.weights[k] for k in ("river", "lightgbm", "stack")}
        assert shares == {"river": 1.0, "lightgbm": 0.0, "stack": 0.0}
        assert scored.score == river.predict_proba_one(x)[True]
        assert model.predict_proba_one(x) == {False: 1 - scored.score, True: scored.score}
        model.learn_one(x, y)
        river.learn_one(x, y)
    scored = model.predict_proba_one_detailed(PHISHING[120][0])
    assert scored.versions == {"river": 120, "lightgbm": 1}
    assert sum(scored.weights[k] for k in ("river", "lightgbm", "stack")) == pytest.approx(1.0)
    low, high = sorted(scored.scores.values())
    assert low <= scored.score <= high


def test_metrics_are_reported_per_member_and_for_the_ensemble():
    model = small()
    for x, y in PHISHING[:400]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    report = model.metrics()
    assert report["river"]["n"] == report["ensemble"]["n"] == 400
    assert report["lightgbm"]["n"] == 400 - 120
    assert all(0 < m["log_loss"] < 1 for m in report.values())


def test_learn_one_without_a_prior_prediction_scores_the_same():
    a, b = small(), small()
    for x, y in PHISHING[:300]:
        a.predict_proba_one(x)
        a.learn_one(x, y)
        b.learn_one(x, y)
    assert a.metrics() == b.metrics()


def test_an_added_feature_reaches_river_at_once_and_lightgbm_at_its_next_refit():
    model = small(lag=0)
    rng = random.Random(1)
    for i, (x, y) in enumerate(PHISHING[:400]):
        if i >= 150:
            x = {**x, "new_signal": float(y) + rng.gauss(0, 0.3)}
        model.learn_one(x, y)
        if i == 150:
            assert "new_signal" in model.river["LogisticRegression"].weights
            assert "new_signal" not in model.lightgbm.schema.columns
    assert "new_signal" in model.lightgbm.schema.columns


def test_a_removed_feature_breaks_neither_member():
    model = small(lag=0)
    for x, y in PHISHING[:200]:
        model.learn_one(x, y)
    dropped = {k: v for k, v in PHISHING[200][0].items() if k != "empty_server_form_handler"}
    scored = model.predict_proba_one_detailed(dropped)
    assert all(0 < p < 1 for p in scored.scores.values())
    model.learn_one(dropped, True)
    assert 0 < model.predict_proba_one({})[True] < 1


def test_string_features_get_fixed_codes_and_unknown_values_are_missing():
    schema = Schema.infer([{"country": "FR", "amount": 3}, {"country": "DE", "flag": True}])
    assert schema.columns == ("amount", "country", "flag")
    assert schema.encode({"country": "FR", "amount": 2.5, "flag": False}) == [2.5, 1.0, 0.0]
    assert all(math.isnan(v) for v in schema.encode({"country": "ZZ", "amount": "oops"}))
    model = small(lag=0)
    for i, (x, y) in enumerate(PHISHING[:200]):
        model.learn_one({**x, "country": "FR" if y else random.Random(i).choice(["DE", "ES"])}, y)
    assert model.lightgbm.schema.codes[model.lightgbm.schema.columns.index("country")] == {"DE": 0, "ES": 1, "FR": 2}
    assert 0 < model.predict_proba_one_detailed({"country": "never seen"}).scores["lightgbm"] < 1


def test_rows_encode_the_same_one_at_a_time_and_in_batches_on_either_thread():
    schema = Schema.infer([{"country": "FR", "amount": 3}, {"country": "DE", "n": 1}])
    rows = [
        {"country": "DE", "amount": np.float64(2.5), "n": True},
        {"country": 7, "amount": 10**20, "n": "x"},
        {"amount": float("nan")},
        {},
    ]
    expected = np.array([[2.5, 0.0, 1.0], [1e20, math.nan, math.nan], [math.nan] * 3, [math.nan] * 3])
    assert np.array_equal(np.array([schema.encode(x) for x in rows]), expected, equal_nan=True)
    assert np.array_equal(schema.matrix(rows), expected, equal_nan=True)
    assert np.array_equal(schema.matrix(rows * 40, yield_gil=True), np.vstack([expected] * 40), equal_nan=True)
    assert schema.matrix([]).shape == (0, 3)


def reference_infer(rows) -> Schema:
    """The schema as first written: every value of every row looked at in Python."""
    values = {}
    for x in rows:
        for name, value in x.items():
            seen = values.setdefault(name, None)
            if isinstance(value, str):
                if seen is None:
                    seen = values[name] = set()
                seen.add(value)
    columns = tuple(sorted(values))
    return Schema(
        columns, tuple(None if values[c] is None else {v: i for i, v in enumerate(sorted(values[c]))} for c in columns)
    )


def reference_encode(schema: Schema, x) -> list[float]:
    """A row as first encoded: value by value."""
    row = []
    for name, codes in zip(schema.columns, schema.codes, strict=True):
        value = x.get(name)
        if codes is not None:
            code = codes.get(value) if isinstance(value, str) else None
            row.append(math.nan if code is None else float(code))
        elif isinstance(value, numbers.Real):
            row.append(float(value))
        else:
            row.append(math.nan)
    return row


class Label(str):
    """A str subclass: categorical like any string."""


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.5]),
    st.integers(-(2**80), 2**80),
    st.booleans(),
    st.sampled_from(["FR", "DE", "ES", Label("FR"), Label("IT")]),
    st.none(),
    st.sampled_from([np.float64(2.5), np.int64(-3), np.float32(0.1), Decimal("1.25"), b"FR", (1,)]),
)
feature_rows = st.lists(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), values, max_size=4), max_size=30)


@settings(max_examples=300)
@given(feature_rows, feature_rows)
def test_schema_and_encoding_are_bit_for_bit_the_value_by_value_ones(window, scored):
    schema = Schema.infer(window)
    assert schema == reference_infer(window) == Schema.infer(window, yield_gil=True)
    expected = np.array([reference_encode(schema, x) for x in scored], dtype=np.float64).reshape(
        len(scored), len(schema.columns)
    )
    assert np.array([schema.encode(x) for x in scored]).reshape(expected.shape).tobytes() == expected.tobytes()
    for restored in (schema, pickle.loads(pickle.dumps(schema)), copy.deepcopy(schema)):
        assert restored.matrix(scored).tobytes() == expected.tobytes()
        assert restored.matrix(scored, yield_gil=True).tobytes() == expected.tobytes()


@pytest.mark.parametrize("batch", [1, 7, 64, 250])
def test_scoring_a_batch_ahead_gives_the_same_scores_and_no_single_row_calls(batch, monkeypatch):
    """Refits take effect mid-batch (every 100 labels, lag 20): the rest of the batch is scored again at once."""
    events = PHISHING[:600]

    def prequential(model: Ensemble, prepare: bool) -> list:
        out = []
        for start in range(0, len(events), batch):
            xs = [dict(x) for x, _ in events[start : start + batch]]
            if prepare:
                model.prepare(xs)
            for x, (_, y) in zip(xs, events[start : start + batch], strict=True):
                scored = model.predict_proba_one_detailed(x)
                out.append((scored.score, scored.scores, scored.versions, scored.weights))
                model.learn_one(x, y)
        return out

    reference = small(background=None)
    expected = prequential(reference, prepare=False)
    single = []
    real = LightGBMMember.predict_proba
    monkeypatch.setattr(LightGBMMember, "predict_proba", lambda self, x: single.append(1) or real(self, x))
    assert prequential(small(background=None), prepare=True) == expected
    in_effect = [r for r in reference.registry.versions() if r["accepted"]]
    assert expected[-1][2]["lightgbm"] == reference.lightgbm_version == in_effect[-1]["version"] and not single
    assert len({versions["lightgbm"] for _, _, versions, _ in expected}) >= 3, "several refits took effect"


def test_pickle_and_clone_behave_like_river_estimators():
    model = small()
    for x, y in PHISHING[:150]:
        model.learn_one(x, y)
    clone = model.clone()
    assert repr(clone) == repr(model) and clone.lightgbm is None and clone.registry.accepted == 0
    restored = pickle.loads(pickle.dumps(model))
    x = PHISHING[150][0]
    assert restored.predict_proba_one(x) == model.predict_proba_one(x)


def test_it_drops_into_rivers_evaluate_tools():
    result = evaluate.progressive_val_score(
        datasets.Phishing().take(400),
        small(river_model=preprocessing.StandardScaler() | linear_model.LogisticRegression()),
        metrics.ROCAUC(),
    )
    assert result.get() > 0.9


def test_health_reports_the_blend_once_lightgbm_is_in_force():
    model = small()
    for x, y in PHISHING[:119]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    assert model.health()["blend"] is None
    for x, y in PHISHING[119:400]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    blend = model.health()["blend"]
    assert sum(blend[name] for name in ("river", "lightgbm", "stack")) == pytest.approx(1.0)
    assert blend["stack_lightgbm"] != 0.0  # the stack learned what LightGBM adds
