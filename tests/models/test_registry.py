"""The registry keeps every refit's metadata and model; the gate rejects bad models and counts them."""

from __future__ import annotations

import json
import pickle
import time

import lightgbm
import numpy as np
import pytest
from river import datasets

from models import lightgbm_member
from models import registry as registry_module
from models.ensemble import Ensemble
from models.gate import Gate, roc_auc
from models.registry import ModelRegistry, flush_writes

PHISHING = list(datasets.Phishing())


def small(**params) -> Ensemble:
    defaults = {"refit_every": 100, "window": 300, "lag": 20, "num_boost_round": 20}
    return Ensemble(**{**defaults, **params})


def test_every_refit_is_saved_with_its_metadata_and_only_the_last_k_are_kept(tmp_path):
    model = small(registry_dir=str(tmp_path), keep=2)
    for i, (x, y) in enumerate(PHISHING[:530]):
        model.predict_proba_one(x)
        model.learn_one(
            x, y, ts=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}+00:00", source=1000 + i, features_version="abc123"
        )
    flush_writes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000004.json", "v000004.txt", "v000005.json", "v000005.txt"]
    record = json.loads((tmp_path / "v000005.json").read_text())
    assert record["version"] == 5 and record["accepted_total"] + record["rejected_total"] == 5
    assert record["accepted"] == (" > " not in record["reason"])
    assert (record["trigger"], record["search"], record["trained_on"]) == ("schedule", None, "train")
    assert 1 <= record["champion_version"] < 5
    assert record["started_at"] == 500 and record["effect_at"] == 520
    assert record["window"] == {
        "first_position": 201,
        "last_position": 500,
        "rows": 300,
        "first_ts": "2026-01-01T00:03:20.000+00:00",
        "last_ts": "2026-01-01T00:08:19.000+00:00",
        "first_source": 1200,
        "last_source": 1499,
        "features_versions": ["abc123"],
    }
    assert record["features_version"] == "abc123"
    assert record["params"]["deterministic"] is True and record["num_boost_round"] == 20
    assert set(record["metrics"]) >= {"log_loss", "auc", "baseline_log_loss"}
    booster = lightgbm.Booster(model_file=str(tmp_path / "v000005.txt"))
    assert booster.num_trees() == 20
    assert [r["version"] for r in model.registry.versions()] == [4, 5]


def test_files_are_written_behind_the_caller_and_a_flush_waits_for_them(tmp_path, monkeypatch):
    written, write = [], registry_module._write

    def slow_write(directory, keep, record, member):
        time.sleep(0.3)
        written.append(record["version"])
        write(directory, keep, record, member)

    monkeypatch.setattr(registry_module, "_write", slow_write)
    registry = ModelRegistry(tmp_path, keep=5)
    started = time.perf_counter()
    for version in (1, 2):
        registry.save({"version": version, "accepted": True}, None)
    assert time.perf_counter() - started < 0.3 and written == []  # saved in memory, the files still to come
    assert [r["version"] for r in registry.versions()] == [1, 2]
    registry_module.flush_writes()
    assert written == [1, 2] and sorted(p.name for p in tmp_path.iterdir()) == ["v000001.json", "v000002.json"]
    restored = pickle.loads(pickle.dumps(registry))
    assert restored.versions() == registry.versions()


def test_a_write_that_fails_is_logged_and_the_registry_goes_on(tmp_path, caplog):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the registry directory should be")
    registry = ModelRegistry(blocked)
    registry.save({"version": 1, "accepted": True}, None)
    flush_writes()
    assert "could not write version 1" in caplog.text and registry.accepted == 1
    registry = ModelRegistry(tmp_path / "fine")
    registry.save({"version": 2, "accepted": True}, None)
    flush_writes()
    assert (tmp_path / "fine" / "v000002.json").exists()


def test_any_failed_write_is_logged_and_later_writes_and_flushes_go_on(tmp_path, caplog, monkeypatch):
    write = registry_module._write

    def failing_once(directory, keep, record, member):
        if record["version"] == 1:
            raise TypeError("a record that cannot be written")
        write(directory, keep, record, member)

    monkeypatch.setattr(registry_module, "_write", failing_once)
    registry = ModelRegistry(tmp_path)
    for version in (1, 2):
        registry.save({"version": version, "accepted": True}, None)
    flush_writes()
    assert "could not write version 1" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000002.json"]


def test_without_a_directory_the_registry_lives_in_memory():
    registry = ModelRegistry(keep=2)
    for version in range(1, 5):
        registry.save({"version": version, "accepted": version % 2 == 0}, None)
    assert [r["version"] for r in registry.versions()] == [3, 4]
    assert (registry.accepted, registry.rejected) == (2, 2)
    assert registry.load(1) is None


def test_gate_rejects_inverted_predictions_and_accepts_good_ones():
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    good = np.where(labels, 0.8, 0.2)
    assert Gate().judge(labels, good, base_rate=0.3)[0]
    accepted, reason, metrics, rejected_by = Gate().judge(labels, 1 - good, base_rate=0.3)
    assert not accepted and reason.startswith("log_loss") and metrics["log_loss"] > metrics["baseline_log_loss"]
    assert rejected_by == "gate", "missing the base rate is a failed refit, whatever the champion"
    assert Gate().judge(labels, 1 - good, base_rate=0.3, champion=1 - good).rejected_by == "gate"
    assert not Gate("auc", 0.7).judge(labels, 1 - good, base_rate=0.3)[0]
    assert Gate("auc", 0.7).judge(labels, good, base_rate=0.3)[0]
    above_threshold = Gate("log_loss", 0.1).judge(labels, good, base_rate=0.3)
    assert (above_threshold.accepted, above_threshold.rejected_by) == (False, "gate")
    assert Gate().judge(labels, good, base_rate=0.3).rejected_by is None
    with pytest.raises(ValueError, match="unknown gate metric 'f1'"):
        Gate("f1")


def test_a_metric_undefined_on_the_holdout_is_a_gate_failure():
    verdict = Gate("auc").judge([True] * 50, [0.9] * 50, base_rate=0.5)
    assert (verdict.accepted, verdict.rejected_by) == (False, "gate") and "undefined" in verdict.reason


def test_roc_auc_counts_ties_as_half():
    assert roc_auc([False, True, False, True], [0.1, 0.9, 0.5, 0.5]) == pytest.approx(0.875)


def test_the_gate_rejects_a_deliberately_bad_model_and_the_previous_one_stays(monkeypatch):
    model = small()
    for x, y in PHISHING[:250]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    assert model.lightgbm_version == 2
    good = model.lightgbm
    real_encode = lightgbm_member.Encoded.of

    def inverted(rows, labels, *args, **kwargs):
        return real_encode(rows, [not y for y in labels], *args, **kwargs)

    monkeypatch.setattr(lightgbm_member.Encoded, "of", inverted)
    for x, y in PHISHING[250:450]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    assert model.lightgbm_version == 2 and model.lightgbm is good
    assert (model.registry.accepted, model.registry.rejected) == (2, 2)
    rejected = model.registry.versions()[-1]
    assert rejected["version"] == 4 and not rejected["accepted"] and "log_loss" in rejected["reason"]
    assert rejected["rejected_by"] == "gate" and model.health()["last"]["rejected_by"] == "gate"


def test_a_single_class_window_is_rejected_and_river_serves_alone():
    model = small(refit_every=50, lag=0)
    for x, _ in PHISHING[:120]:
        model.learn_one(x, False)
    assert model.lightgbm is None and model.registry.rejected == 2
    assert model.registry.versions()[0]["reason"] == "training slice holds a single class"
    assert model.registry.versions()[0]["rejected_by"] == "fit"
