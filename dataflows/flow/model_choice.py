"""Which model the flow learns with: the configured River pipeline, blended with LightGBM unless disabled."""

from __future__ import annotations

import inspect
from pathlib import Path

from river import base

from dataflows.flow.config import Config, ConfigError
from models import make_model
from models.ensemble import Ensemble
from models.text import HashedText, TextSettings

_ENSEMBLE_PARAMS = set(inspect.signature(Ensemble.__init__).parameters) - {"self", "river_model", "lightgbm_view"}


def build_model(config: Config, run: str | None = None) -> base.Classifier:
    """`[model] name` as a River pipeline; with `[ensemble] enabled` (the default), inside the Ensemble, whose
    refits go to the run's own directory of the registry (`dataflows.flow.runs`) when `run` is given."""
    try:
        text = TextSettings.from_table(config.text)
        river = make_model(config.model, config.text_fields, text)
    except ValueError as exc:
        raise ConfigError(f"{config.source}: [model] name: {exc}") from exc
    settings = dict(config.ensemble)
    if not settings.pop("enabled", True):
        return river
    unknown = set(settings) - _ENSEMBLE_PARAMS
    if unknown:
        raise ConfigError(
            f"{config.source}: unknown [ensemble] key(s) {sorted(unknown)}; "
            f"known: enabled, {', '.join(sorted(_ENSEMBLE_PARAMS))}"
        )
    if run and settings.get("registry_dir"):
        settings["registry_dir"] = str(Path(settings["registry_dir"]) / run)
    if settings.get("background") == "none":
        settings["background"] = None
    try:
        if config.text_fields:  # LightGBM gets the text as hashed term counts (`models.text`)
            settings["lightgbm_view"] = HashedText(config.text_fields, text)
        return Ensemble(river_model=river, **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config.source}: [ensemble]: {exc}") from exc
