"""River pipelines by name: choice, errors, determinism, feature types."""

from __future__ import annotations

import itertools
import numbers
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from river import base, checks, compose, datasets, linear_model, preprocessing

from models.pipelines import MODELS, ScaleAndEncode, _numbers, _strings, make_model


def _mixed_events(n: int) -> list[tuple[dict, bool]]:
    """Phishing rows with a string, a bool and sometimes-absent features added, deterministically."""
    events = []
    for i, (x, y) in enumerate(itertools.islice(datasets.Phishing(), n)):
        x = dict(x)
        x["colour"] = ("red", "green", "blue")[i % 3]
        x["flag"] = i % 2 == 0
        if i % 5 == 0:
            del x["https"]
        events.append((x, y))
    return events


def _prequential_scores(model: base.Classifier, events) -> list[dict]:
    scores = []
    for x, y in events:
        scores.append(model.predict_proba_one(x))
        model.learn_one(x, y)
    return scores


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_name_builds_a_fresh_classifier(name):
    first, second = make_model(name), make_model(name)
    assert isinstance(first, base.Classifier)
    assert first is not second


@pytest.mark.parametrize("name", sorted(MODELS))
def test_two_runs_give_identical_scores(name):
    events = _mixed_events(200)
    assert _prequential_scores(make_model(name), events) == _prequential_scores(make_model(name), events)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_absent_features_and_mixed_types_are_accepted(name):
    model = make_model(name)
    scores = _prequential_scores(model, _mixed_events(100))
    assert all(0.0 <= p <= 1.0 for s in scores for p in s.values())
    assert model.predict_proba_one({}) is not None


def test_default_is_logistic_regression():
    assert repr(make_model()) == repr(make_model("logistic_regression"))


def test_unknown_name_lists_known_ones_and_suggests_the_nearest():
    with pytest.raises(ValueError, match="did you mean 'logistic_regression'") as info:
        make_model("logistic_regresion")
    for name in MODELS:
        assert name in str(info.value)


def test_unknown_name_far_from_any_has_no_suggestion():
    with pytest.raises(ValueError, match="unknown model 'zzz'") as info:
        make_model("zzz")
    assert "did you mean" not in str(info.value)


def test_default_equals_textbook_pipeline_on_numeric_data():
    events = list(itertools.islice(datasets.Phishing(), 400))
    textbook = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    assert _prequential_scores(make_model(), events) == _prequential_scores(textbook, events)


@pytest.mark.parametrize("without_strings_every", [0, 3])
def test_default_equals_rivers_own_selectors_on_mixed_data(without_strings_every):
    """Strings one-hot encoded, numbers (bools as 0/1) scaled, as River's own type selectors compose it; also
    for all-number rows after strings were seen (the encoder's zeros)."""
    events = _mixed_events(400)
    if without_strings_every:
        events = [
            ({k: v for k, v in x.items() if k != "colour"} if i % without_strings_every == 0 else x, y)
            for i, (x, y) in enumerate(events)
        ]
    strings = compose.SelectType(str) | preprocessing.OneHotEncoder()
    numeric = compose.SelectType(numbers.Number) | preprocessing.StandardScaler()
    reference = (strings + numeric) | linear_model.LogisticRegression()
    assert _prequential_scores(make_model(), events) == _prequential_scores(reference, events)


@pytest.mark.parametrize("x", [{"amount": 3.0, "n": 2, "vip": True}, {"amount": 3.0, "n": 2, "country": "FR"}])
def test_scale_and_encode_never_changes_its_input(x):
    before = dict(x)
    step = ScaleAndEncode()
    step.learn_one(x)
    assert step.transform_one(x)["amount"] == 0.0
    assert x == before


def test_bools_are_scaled_as_zero_one():
    events = _mixed_events(300)
    as_ints = [({k: int(v) if isinstance(v, bool) else v for k, v in x.items()}, y) for x, y in events]
    assert _prequential_scores(make_model(), events) == _prequential_scores(make_model(), as_ints)


def test_strings_are_one_hot_encoded_and_learned():
    model = make_model()
    for i in range(1000):
        y = i % 2 == 0
        model.learn_one({"category": "risky" if y else "safe"}, y)
    assert model.predict_proba_one({"category": "risky"})[True] > 0.75
    assert model.predict_proba_one({"category": "safe"})[True] < 0.25


GENERAL_CHECKS = [
    "check_repr",
    "check_str",
    "check_clone_same_class",
    "check_clone_is_idempotent",
    "check_pickling_supports_roundtrip",
    "check_repr_roundtrips_clone",
]


@pytest.mark.parametrize("check", GENERAL_CHECKS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_river_general_checks(name, check):
    """River's data-driven checks need scikit-learn, which eddy does not install; these do not."""
    getattr(checks.common, check)(make_model(name))


class Code(str):
    """A str subclass: not a string feature (exact type), nor a number."""


feature_values = st.one_of(
    st.floats(),
    st.integers(),
    st.booleans(),
    st.sampled_from(["FR", "", Code("x"), None, np.float64(1.5), np.int32(2), Decimal("0.5"), b"b", (1,)]),
)


@given(st.dictionaries(st.text(max_size=3), feature_values, max_size=8))
def test_numbers_and_strings_select_the_same_features_in_the_same_order_on_every_path(x):
    assert list(_numbers(x).items()) == [(k, v) for k, v in x.items() if isinstance(v, numbers.Number)]
    assert list(_strings(x).items()) == [(k, v) for k, v in x.items() if type(v) is str]
