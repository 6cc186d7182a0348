"""A warm start is pinned in the recovery directory: a run killed before its first snapshot starts again from
the checkpoint it first chose, not from one it wrote itself before it was killed."""

from __future__ import annotations

from dataclasses import replace

import pytest
from river import datasets

from dataflows.flow.config import ConfigError, ModelSettings, load_config
from dataflows.flow.warm_start import PIN, warm_start_checkpoint
from models.checkpoints import RiverCheckpoints, flush_writes
from models.pipelines import make_model


def _checkpoint_run(registry, run: str, labels: int) -> None:
    model, checkpoints = make_model(), RiverCheckpoints(registry / run / "checkpoints", every=labels)
    checkpoints.observe(model, 0, "v1")
    for n, (x, y) in enumerate(datasets.Phishing().take(labels), start=1):
        model.learn_one(x, y)
        checkpoints.observe(model, n, "v1")
    flush_writes()


def test_the_checkpoint_chosen_first_is_kept_for_the_recovery_directory(tmp_path):
    registry, recovery = tmp_path / "registry", tmp_path / "recovery"
    recovery.mkdir()
    _checkpoint_run(registry, "20261201T000000Z-aaaaaa", 100)
    base = load_config(env={})
    config = replace(
        base,
        ensemble={**base.ensemble, "registry_dir": str(registry)},
        model_settings=ModelSettings(warm_start=True),
    )
    chosen = warm_start_checkpoint(config, "v1", state_dir=recovery)
    assert (recovery / PIN).exists() and chosen.meta["labels"] == 100

    # The run, killed before its first snapshot, had written a checkpoint of its own: newer, not chosen.
    _checkpoint_run(registry, "20261202T000000Z-bbbbbb", 50)
    assert warm_start_checkpoint(config, "v1").meta["labels"] == 50  # without the pin: the newest
    assert warm_start_checkpoint(config, "v1", state_dir=recovery).path == chosen.path

    chosen.path.unlink()
    with pytest.raises(ConfigError, match="which is gone"):
        warm_start_checkpoint(config, "v1", state_dir=recovery)
