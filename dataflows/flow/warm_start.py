"""The learner's model at a run's start, from the configuration or warm-started from a checkpoint, and where
the run's checkpoints go (`models.checkpoints`).

A run with no recovery state starts cold, unless `[model] warm_start` (`EDDY_WARM_START=true`, or
`task run:warm`) asks for the newest River checkpoint in the model registry: the run then
scores its first event as the run that wrote the checkpoint would have. A checkpoint trained on other SQL
definitions (another `features_version`) is refused unless `[model] warm_start_any_features` says otherwise:
its weights belong to other features. A run resumed from its recovery directory resumes its own model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from river import base

from dataflows.flow.config import Config, ConfigError
from dataflows.flow.model_choice import build_model
from dataflows.flow.runs import run_registry_dir
from models import make_model
from models.checkpoints import (
    SUBDIR,
    Checkpoint,
    CheckpointError,
    RiverCheckpoints,
    kind,
    list_checkpoints,
    newest_checkpoint,
    warm_start,
)

log = logging.getLogger("eddy")


def warm_start_checkpoint(
    config: Config, features_version: str, run: str | None = None, state_dir: Path | None = None
) -> Checkpoint | None:
    """The checkpoint a run starting now warm-starts from (None unless `[model] warm_start`); ConfigError
    when there is none, or when it was trained on other features and that is not allowed.

    With a recovery directory (`state_dir`) the choice is pinned there (`PIN`): a run killed before its first
    snapshot starts again from the same checkpoint, not from one it wrote itself before it was killed."""
    settings = config.model_settings
    if not settings.warm_start:
        return None
    registry_dir = config.ensemble.get("registry_dir")
    checkpoint = _pinned(state_dir)
    if checkpoint is None:
        checkpoint = newest_checkpoint(registry_dir, exclude=run) if registry_dir else None
    if checkpoint is None:
        raise ConfigError(
            f"warm start: no River checkpoint in the model registry {registry_dir} ([ensemble] registry_dir); "
            "a run writes one every [model] checkpoint_every labels and at each refit. Start cold instead "
            "(EDDY_WARM_START=false)."
        )
    try:
        configured = kind(make_model(config.model))
    except ValueError as exc:
        raise ConfigError(f"{config.source}: [model] name: {exc}") from None
    if checkpoint.meta.get("kind") != configured:
        raise ConfigError(
            f"warm start: {checkpoint.path} holds a {checkpoint.meta.get('kind')} model; [model] name "
            f"({config.model}) builds a {configured}: set [model] name to the checkpoint's model, or start "
            "cold (EDDY_WARM_START=false)"
        )
    trained_on = checkpoint.meta.get("features_version")
    if trained_on != features_version and not settings.warm_start_any_features:
        raise ConfigError(
            f"warm start: {checkpoint.path} was trained on features_version {trained_on}, the SQL in "
            f"{config.sql_dir} is {features_version}: its weights belong to other features. Start cold "
            "(EDDY_WARM_START=false), or set [model] warm_start_any_features = true "
            "(EDDY_WARM_START_ANY_FEATURES=true) to start from it anyway."
        )
    if state_dir is not None:
        _pin(state_dir, checkpoint)
    return checkpoint


PIN = "warm_start.json"
"""The file in a recovery directory that names the checkpoint its run warm-started from."""


def _pinned(state_dir: Path | None) -> Checkpoint | None:
    pin = None if state_dir is None else Path(state_dir) / PIN
    if pin is None or not pin.exists():
        return None
    path = Path(json.loads(pin.read_text())["checkpoint"])
    found = [c for c in list_checkpoints(path.parent) if c.path == path]
    if not found:
        raise ConfigError(
            f"warm start: {pin} names {path}, which is gone; this recovery directory's run warm-started from it "
            "and has no snapshot yet: restore that checkpoint, or start with a fresh recovery directory"
        )
    return found[0]


def _pin(state_dir: Path, checkpoint: Checkpoint) -> None:
    pin = Path(state_dir) / PIN
    if not pin.exists() and pin.parent.is_dir():
        pin.write_text(json.dumps({"checkpoint": str(checkpoint.path)}) + "\n")


def initial_model(config: Config, run: str, features_version: str, state_dir: Path | None = None) -> base.Classifier:
    """The model a run without recovery state starts with: `build_model`'s, warm-started if configured."""
    model = build_model(config, run)
    checkpoint = warm_start_checkpoint(config, features_version, run, state_dir)
    if checkpoint is None:
        return model
    try:
        model = warm_start(model, checkpoint)
    except CheckpointError as exc:
        raise ConfigError(f"warm start: {exc}") from None
    log.info(
        "warm start from %s: %s, %d labels learned, features_version %s, LightGBM version %s",
        checkpoint.path,
        checkpoint.meta["kind"],
        checkpoint.meta["labels"],
        checkpoint.meta["features_version"],
        checkpoint.meta.get("lightgbm_version"),
    )
    return model


def checkpoints_for(config: Config, run: str | None) -> RiverCheckpoints | None:
    """Where the run `run` writes its River checkpoints (None without a registry directory)."""
    registry_dir = config.ensemble.get("registry_dir")
    if not registry_dir:
        return None
    settings = config.model_settings
    directory = Path(run_registry_dir(registry_dir, run)) / SUBDIR
    return RiverCheckpoints(directory, settings.checkpoint_every, settings.checkpoint_keep)
