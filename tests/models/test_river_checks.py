"""The Ensemble (with its LightGBM member) passes River's own estimator checks, one pytest case per check."""

from __future__ import annotations

import functools

import pytest
from river import checks

from models.ensemble import Ensemble


def _cases():
    for params in Ensemble._unit_test_params():
        model = Ensemble(**params)
        for check in checks.yield_checks(model):
            name = check.func.__name__ if isinstance(check, functools.partial) else check.__name__
            yield pytest.param(model, check, id=f"{name}")


@pytest.mark.parametrize(("model", "check"), list(_cases()))
def test_river_check(model, check):
    check(model.clone())


def test_the_check_data_is_enough_for_lightgbm_to_take_part():
    from river import datasets

    for params in Ensemble._unit_test_params():
        model = Ensemble(**params)
        for x, y in datasets.Phishing().take(200):
            model.learn_one(x, y)
        assert model.lightgbm_version is not None
