"""Implicit negatives through the dataflow (the backtest path): `[labels] default` learns every event that
reaches its label horizon unlabelled as that label, with the features it was scored with, and counts it."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import orjson
import pytest

from dataflows.flow.config import ConfigError, load_config
from dataflows.tools import datasets
from dataflows.tools.backtest import run_backtest
from features.timestamps import to_ms
from models import OnlineLearner, make_model

HORIZON_MS = 600_000


def only_positives_labelled(n: int) -> list[dict]:
    """Payments whose fraud labels come inline and whose legitimate ones never come, as a card issuer's do."""
    events = []
    for event in datasets.transactions(n, seed=11, fraud_rate=0.02):
        if not event["label"]:
            del event["label"]
        events.append(event)
    return events


def test_unlabelled_events_are_learned_as_the_default_with_their_scoring_features(tmp_path):
    events = only_positives_labelled(2_000)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    config = load_config(env={})
    config = replace(
        config,
        ensemble={"enabled": False},
        include_features=True,
        label_default=False,
        flow=replace(config.flow, label_horizon_ms=HORIZON_MS, lateness_ms=0),
    )
    run_backtest(path, config, tmp_path / "out", report=False)
    out = tmp_path / "out"
    predictions = [orjson.loads(line) for line in (out / "predictions.jsonl").read_bytes().splitlines()]
    final = orjson.loads((out / "metrics.jsonl").read_bytes().splitlines()[-1])
    assert len(predictions) == len(events)

    # The same learner fed the features each prediction published: its scores are the flow's only if the
    # flow learned each expired event as False with the features it was scored with, at the same point.
    reference = OnlineLearner(make_model(config.model), HORIZON_MS, label_default=False)
    labels = {e["event_id"]: e.get("label") for e in events}
    for p in predictions:
        p["ts"] = to_ms(datetime.fromisoformat(p["ts"]))
        result = reference.score(p["event_id"], p["ts"], p["features"], labels[p["event_id"]])
        assert result.score == p["score"], p["event_id"]

    last = max(p["ts"] for p in predictions)
    expected = sum(1 for p in predictions if labels[p["event_id"]] is None and p["ts"] + HORIZON_MS < last)
    assert expected > 1_000
    assert final["learner"]["labels_default"] == reference.counters["labels_default"] == expected
    assert final["learner"]["labels_expired"] == 0
    assert final["quality"]["score"]["labels"] == expected + sum(1 for v in labels.values() if v)
    assert final["model"]["river"] == final["quality"]["score"]["labels"]


def test_without_the_setting_unlabelled_events_only_expire(tmp_path):
    events = only_positives_labelled(600)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    config = load_config(env={})
    assert config.label_default is None
    config = replace(config, ensemble={"enabled": False}, flow=replace(config.flow, label_horizon_ms=60_000))
    run_backtest(path, config, tmp_path / "out", report=False)
    final = orjson.loads((tmp_path / "out" / "metrics.jsonl").read_bytes().splitlines()[-1])
    assert final["learner"]["labels_default"] == 0 and final["learner"]["labels_expired"] > 400


def test_the_setting_reads_from_the_file_and_the_environment(tmp_path):
    path = tmp_path / "eddy.toml"
    path.write_text("[labels]\ndefault = false\n")
    assert load_config(path, env={}).label_default is False
    assert load_config(path, env={"EDDY_LABEL_DEFAULT": "none"}).label_default is None
    assert load_config(path, env={"EDDY_LABEL_DEFAULT": "true"}).label_default is True
    with pytest.raises(ConfigError, match="EDDY_LABEL_DEFAULT"):
        load_config(path, env={"EDDY_LABEL_DEFAULT": "nope"})
    path.write_text('[labels]\ndefault = "no"\n')
    with pytest.raises(ConfigError, match=r"\[labels\] default must be true or false"):
        load_config(path, env={})
    path.write_text("[labels]\ndefualt = false\n")
    with pytest.raises(ConfigError, match=r"unknown \[labels\] key"):
        load_config(path, env={})
