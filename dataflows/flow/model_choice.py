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
    unknown = set(settings) - _ENSEMBLE_PARAMS - {"categorical_fields"}
    if unknown:
        raise ConfigError(
            f"{config.source}: unknown [ensemble] key(s) {sorted(unknown)}; "
            f"known: enabled, categorical_fields, {', '.join(sorted(_ENSEMBLE_PARAMS - {'lightgbm_fields'}))}"
        )
    settings["lightgbm_fields"] = _categorical_fields(config, settings.pop("categorical_fields", True))
    if run and settings.get("registry_dir"):
        settings["registry_dir"] = str(Path(settings["registry_dir"]) / run)
    for key in ("background", "drift_detector"):  # TOML has no null
        if settings.get(key) == "none":
            settings[key] = None
    try:
        if config.text_fields:  # LightGBM gets the text as hashed term counts (`models.text`)
            settings["lightgbm_view"] = HashedText(config.text_fields, text)
        return Ensemble(river_model=river, **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config.source}: [ensemble]: {exc}") from exc


def _categorical_fields(config: Config, setting: bool | list) -> list[str]:
    """`[ensemble] categorical_fields`: the `[fields]` of type string that LightGBM learns from as they are
    (River does not: a linear model would one-hot them into a weight per value). `true`: every string field;
    `false`: none; a list: those."""
    strings = [name for name, kind in config.fields.items() if kind == "string"]
    if setting is True:
        return strings
    if setting is False:
        return []
    if not isinstance(setting, list) or not all(isinstance(name, str) for name in setting):
        raise ConfigError(
            f"{config.source}: [ensemble] categorical_fields must be true, false or a list of field names; "
            f"got {setting!r}"
        )
    unknown = [name for name in setting if name not in strings]
    if unknown:
        raise ConfigError(
            f"{config.source}: [ensemble] categorical_fields names {unknown}, which [fields] does not declare as "
            f"strings; string fields: {strings}"
        )
    return list(setting)
