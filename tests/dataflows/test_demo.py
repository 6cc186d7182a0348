"""The demo's printed account of the blend: what LightGBM adds, in figures a person reads."""

from __future__ import annotations

from dataflows.tools.demo import print_blend


def prediction(river: float, lightgbm: float | None, score: float) -> dict:
    return {"score": score, "scores": {"river": river, "lightgbm": lightgbm}}


def test_the_blend_line_shows_lightgbms_share_and_how_far_it_moves_the_score(capsys):
    predictions = [
        prediction(0.2, None, 0.2),
        prediction(0.2, 0.6, 0.5),
        prediction(0.9, 0.7, 0.8),
        prediction(0.5, 0.5, 0.5),
    ]
    blend = {"river": 0.25, "lightgbm": 0.15, "stack": 0.6, "stack_river": 0.7, "stack_lightgbm": 0.45}
    print_blend(predictions, {**blend, "stack_bias": -0.1})
    out = capsys.readouterr().out
    assert "LightGBM scored 3 of 4 events" in out
    assert "by 0.1000 (median), 0.3000 (p99)" in out
    assert "mixture river 0.25, lightgbm 0.15, stack 0.60" in out
    assert "stack coefficients on the logits river +0.70, lightgbm +0.45, bias -0.10" in out


def test_before_any_lightgbm_model_the_blend_line_says_river_alone(capsys):
    print_blend([prediction(0.2, None, 0.2)], None)
    assert "River alone" in capsys.readouterr().out
