"""eddy's configuration: `eddy.toml` (or the file named by EDDY_CONFIG), overridden by environment variables.

One precedence order, highest first: environment variable > config file > built-in default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dataflows.watch.alerts import AlertSettings

from dataflows.broker.security import SECRET_ENV, SETTING_ENV, KafkaSecurity, SecurityConfigError, security_from

REPO_ROOT = Path(__file__).resolve().parents[2]
FIELD_TYPES = {"string", "double", "bigint", "boolean", "text"}


KAFKA_KEYS = {"bootstrap_servers", "partitions", *SETTING_ENV}
"""The keys `[kafka]` may hold; any other is a typo that would quietly leave a setting (TLS, say) off."""


class ConfigError(ValueError):
    """A configuration a person must fix; the message says where and what."""


@dataclass(frozen=True)
class Topics:
    events: str = "events"
    labels: str = "labels"
    predictions: str = "predictions"
    metrics: str = "metrics"
    dead_letters: str = "dead-letters"
    alerts: str = "alerts"

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class FlowSettings:
    """How the dataflow orders, joins and reports; `[flow]` in eddy.toml."""

    mode: str = "event_time"
    lateness_ms: int = 5_000
    idle_timeout_s: float = 5.0
    dedupe_horizon_ms: int = 86_400_000
    label_horizon_ms: int = 86_400_000
    metrics_every_events: int = 1_000
    metrics_every_s: float = 10.0
    rolling_window: int = 5_000
    max_message_bytes: int = 65_536
    batch_size: int = 1_000
    prometheus_port: int = 0
    prometheus_host: str = "127.0.0.1"
    feature_shards: int = 0
    broker_wait_s: float = 120.0
    start_over: bool = False
    max_clock_skew_ms: int = 1_800_000


MODES = {"event_time", "arrival"}


@dataclass(frozen=True)
class ModelSettings:
    """Checkpoints of the River model and warm starts from them; `[model]` in eddy.toml besides `name`."""

    checkpoint_every: int = 10_000
    """Labels learned between checkpoints of the River model (0: only at refits)."""
    checkpoint_keep: int = 5
    warm_start: bool = False
    """A run without recovery state starts from the newest checkpoint in the registry (EDDY_WARM_START)."""
    warm_start_any_features: bool = False
    """Warm-start from a checkpoint trained on other SQL definitions (refused unless this is true)."""


@dataclass(frozen=True)
class ServeSettings:
    """The HTTP scoring gateway (`python -m dataflows.serve`); `[serve]` in eddy.toml."""

    host: str = "127.0.0.1"
    port: int = 8080
    timeout_s: float = 2.0
    """How long a request waits for its prediction before it is answered 504."""
    max_body_bytes: int = 1_048_576
    max_events: int = 1_000
    """Events one request may carry."""
    max_waiting: int = 10_000
    """Events waiting for their predictions, over every request; past it a request is answered 503."""
    max_connections: int = 1_000


@dataclass(frozen=True)
class Config:
    bootstrap_servers: str = "localhost:9092"
    partitions: int = 3
    topics: Topics = field(default_factory=Topics)
    sql_dir: Path = REPO_ROOT / "sql" / "transactions"
    include_features: bool = False
    model: str = "logistic_regression"
    tail: bool = True
    fields: dict[str, str] = field(default_factory=dict)
    flow: FlowSettings = field(default_factory=FlowSettings)
    ensemble: dict = field(default_factory=dict)
    source: str = "built-in defaults"
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    alerts: AlertSettings | None = None
    """`[alerts]` (`dataflows.watch.alerts`); None: the built-in rules."""
    model_settings: ModelSettings = field(default_factory=ModelSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    label_default: bool | None = None
    """`[labels] default`: the label an event is learned as when none came within the label horizon
    (implicit negatives); None: such events are dropped and counted as expired."""
    text: dict = field(default_factory=dict)
    """`[text]`: how `text` fields become features (`models.text.TextSettings`), checked when loaded."""

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The `[fields]` declared as free text."""
        return tuple(name for name, kind in self.fields.items() if kind == "text")


_ENV_MODEL_FLAGS = {
    "EDDY_WARM_START": "warm_start",
    "EDDY_WARM_START_ANY_FEATURES": "warm_start_any_features",
}

_ENV_SERVE = {
    "EDDY_SERVE_HOST": ("host", str),
    "EDDY_SERVE_PORT": ("port", int),
    "EDDY_SERVE_TIMEOUT_S": ("timeout_s", float),
}

_ENV_TOPICS = {
    "EDDY_EVENTS_TOPIC": "events",
    "EDDY_LABELS_TOPIC": "labels",
    "EDDY_PREDICTIONS_TOPIC": "predictions",
    "EDDY_METRICS_TOPIC": "metrics",
    "EDDY_DEAD_LETTERS_TOPIC": "dead_letters",
    "EDDY_ALERTS_TOPIC": "alerts",
}


def topics_env(topics: Topics, bootstrap: str) -> dict[str, str]:
    """The environment variables that point a flow started as a subprocess at `bootstrap` and `topics`."""
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap} | {name: getattr(topics, attr) for name, attr in _ENV_TOPICS.items()}


def parse_bool(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={text!r} is not a boolean; use true or false")


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the config file and apply environment overrides."""
    env = dict(os.environ) if env is None else env
    if path is None:
        path = env.get("EDDY_CONFIG") or REPO_ROOT / "eddy.toml"
    path = Path(path)
    raw: dict = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    elif "EDDY_CONFIG" in env:
        raise ConfigError(f"EDDY_CONFIG names {path}, which does not exist")

    base = path.parent if path.exists() else REPO_ROOT
    kafka = raw.get("kafka", {})
    feats = raw.get("features", {})
    config = Config(
        bootstrap_servers=str(kafka.get("bootstrap_servers", Config.bootstrap_servers)),
        partitions=int(kafka.get("partitions", Config.partitions)),
        topics=Topics(**{k: str(v) for k, v in raw.get("topics", {}).items() if k in Topics.__annotations__}),
        sql_dir=(base / feats["sql_dir"]).resolve() if "sql_dir" in feats else Config().sql_dir,
        include_features=bool(feats.get("include_features", False)),
        model=str(raw.get("model", {}).get("name", Config.model)),
        tail=bool(raw.get("flow", {}).get("tail", True)),
        fields=dict(raw.get("fields", {})),
        flow=_flow_settings(raw.get("flow", {}), path),
        ensemble=_ensemble_settings(raw.get("ensemble", {}), base),
        source=str(path) if path.exists() else "built-in defaults",
        alerts=_alert_settings(raw.get("alerts", {}), path),
        model_settings=_table_settings(ModelSettings, "model", raw.get("model", {}), path, extra={"name"}),
        serve=_table_settings(ServeSettings, "serve", raw.get("serve", {}), path),
        label_default=_label_default(raw.get("labels", {}), path),
        text=_text_settings(raw.get("text", {}), path),
    )
    unknown_kafka = set(kafka) - KAFKA_KEYS - set(SECRET_ENV)  # secrets get their own message below
    if unknown_kafka:
        raise ConfigError(f"{path}: unknown [kafka] key(s) {sorted(unknown_kafka)}; known: {sorted(KAFKA_KEYS)}")
    try:
        config = replace(config, kafka_security=security_from(kafka, env, config.source, base))
    except SecurityConfigError as exc:
        raise ConfigError(str(exc)) from None
    unknown_topics = set(raw.get("topics", {})) - set(Topics.__annotations__)
    if unknown_topics:
        raise ConfigError(
            f"{path}: unknown topic key(s) {sorted(unknown_topics)}; known: {sorted(Topics.__annotations__)}"
        )

    overrides: dict = {}
    if "KAFKA_BOOTSTRAP_SERVERS" in env:
        overrides["bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
    if "EDDY_PARTITIONS" in env:
        overrides["partitions"] = int(env["EDDY_PARTITIONS"])
    if "EDDY_SQL_DIR" in env:
        overrides["sql_dir"] = Path(env["EDDY_SQL_DIR"])
    if "EDDY_MODEL" in env:
        overrides["model"] = env["EDDY_MODEL"]
    if "EDDY_INCLUDE_FEATURES" in env:
        overrides["include_features"] = parse_bool(env["EDDY_INCLUDE_FEATURES"], "EDDY_INCLUDE_FEATURES")
    if "EDDY_TAIL" in env:
        overrides["tail"] = parse_bool(env["EDDY_TAIL"], "EDDY_TAIL")
    if "EDDY_ENSEMBLE" in env:
        overrides["ensemble"] = {**config.ensemble, "enabled": parse_bool(env["EDDY_ENSEMBLE"], "EDDY_ENSEMBLE")}
    if "EDDY_PROMETHEUS_PORT" in env:
        overrides["flow"] = replace(
            overrides.get("flow", config.flow), prometheus_port=int(env["EDDY_PROMETHEUS_PORT"])
        )
    if "EDDY_PROMETHEUS_HOST" in env:
        overrides["flow"] = replace(overrides.get("flow", config.flow), prometheus_host=env["EDDY_PROMETHEUS_HOST"])
    if "EDDY_MODE" in env:
        overrides["flow"] = replace(overrides.get("flow", config.flow), mode=env["EDDY_MODE"])
    if "EDDY_FEATURE_SHARDS" in env:
        text = env["EDDY_FEATURE_SHARDS"]
        if not text.strip().isdigit():
            raise ConfigError(f"EDDY_FEATURE_SHARDS={text!r} is not a whole number >= 0 (0: the worker count)")
        overrides["flow"] = replace(overrides.get("flow", config.flow), feature_shards=int(text))
    if "EDDY_BROKER_WAIT_S" in env:
        text = env["EDDY_BROKER_WAIT_S"]
        try:
            wait_s = float(text)
        except ValueError:
            wait_s = -1.0
        if not wait_s > 0:
            raise ConfigError(f"EDDY_BROKER_WAIT_S={text!r} is not a number of seconds > 0")
        overrides["flow"] = replace(overrides.get("flow", config.flow), broker_wait_s=wait_s)
    if "EDDY_START_OVER" in env:
        start_over = parse_bool(env["EDDY_START_OVER"], "EDDY_START_OVER")
        overrides["flow"] = replace(overrides.get("flow", config.flow), start_over=start_over)
    if "EDDY_MAX_CLOCK_SKEW_MS" in env:
        text = env["EDDY_MAX_CLOCK_SKEW_MS"]
        if not text.strip().isdigit():
            raise ConfigError(f"EDDY_MAX_CLOCK_SKEW_MS={text!r} is not a whole number of milliseconds >= 0 (0: off)")
        overrides["flow"] = replace(overrides.get("flow", config.flow), max_clock_skew_ms=int(text))
    for name, attr in _ENV_MODEL_FLAGS.items():
        if name in env:
            value = parse_bool(env[name], name)
            overrides["model_settings"] = replace(
                overrides.get("model_settings", config.model_settings), **{attr: value}
            )
    serve = {}
    for name, (attr, kind) in _ENV_SERVE.items():
        if name in env:
            try:
                serve[attr] = kind(env[name])
            except ValueError:
                what = "number" if kind is float else "whole number"
                raise ConfigError(f"{name}={env[name]!r} is not a {what}") from None
    if serve:
        overrides["serve"] = replace(config.serve, **serve)
    if "EDDY_LABEL_DEFAULT" in env:
        overrides["label_default"] = _label_default_env(env["EDDY_LABEL_DEFAULT"])
    topic_overrides = {attr: env[name] for name, attr in _ENV_TOPICS.items() if name in env}
    if topic_overrides:
        overrides["topics"] = replace(config.topics, **topic_overrides)
    config = replace(config, **overrides)

    bad = {name: kind for name, kind in config.fields.items() if kind not in FIELD_TYPES}
    if bad:
        raise ConfigError(f"{config.source}: [fields] has unknown type(s) {bad}; use one of {sorted(FIELD_TYPES)}")
    if config.flow.mode not in MODES:
        raise ConfigError(f"{config.source}: [flow] mode = {config.flow.mode!r}; use one of {sorted(MODES)}")
    if config.partitions < 1:
        raise ConfigError(f"partitions must be at least 1, got {config.partitions}")
    return config


def _flow_settings(table: dict, path: Path) -> FlowSettings:
    return _table_settings(FlowSettings, "flow", table, path, extra={"tail"})


def _table_settings(cls, section: str, table: dict, path: Path, extra: set[str] = frozenset()):
    """`cls` (a dataclass of settings with scalar defaults) from the `[section]` table, each value checked
    against its default's type; `extra` names keys read elsewhere."""
    known = {f.name: f.type for f in fields(cls)}
    unknown = set(table) - set(known) - set(extra)
    if unknown:
        also = f" and {', '.join(sorted(extra))}" if extra else ""
        raise ConfigError(f"{path}: unknown [{section}] key(s) {sorted(unknown)}; known: {sorted(known)}{also}")
    values = {}
    for name, value in table.items():
        if name in extra:
            continue
        default = getattr(cls, name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: [{section}] {name} must be true or false, got {value!r}")
            values[name] = value
        elif isinstance(default, str):
            values[name] = str(value)
        elif isinstance(default, int) and not isinstance(default, bool):
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{path}: [{section}] {name} must be a whole number >= 0, got {value!r}")
            values[name] = value
        else:
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{path}: [{section}] {name} must be a number > 0, got {value!r}")
            values[name] = float(value)
    return cls(**values)


def _label_default(table: dict, path: Path) -> bool | None:
    unknown = set(table) - {"default"}
    if unknown:
        raise ConfigError(f"{path}: unknown [labels] key(s) {sorted(unknown)}; known: ['default']")
    value = table.get("default")
    if value is not None and not isinstance(value, bool):
        raise ConfigError(
            f"{path}: [labels] default must be true or false (the label an unlabelled event is learned as "
            f"at its horizon), got {value!r}; leave it out to drop such events"
        )
    return value


def _label_default_env(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in {"", "none"}:
        return None
    if lowered in {"true", "false"}:
        return lowered == "true"
    raise ConfigError(
        f"EDDY_LABEL_DEFAULT={text!r}: use true or false (the label an unlabelled event is learned as at its "
        "horizon) or none (drop such events)"
    )


def _text_settings(table: dict, path: Path) -> dict:
    from models.text import TextSettings  # imported here: River's extractors load with it

    try:
        TextSettings.from_table(table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: [text] {exc}") from None
    return dict(table)


def _alert_settings(table: dict, path: Path) -> AlertSettings:
    from dataflows.watch.alerts import (
        AlertSettings,  # imported here: `dataflows.watch.alerts` raises this module's errors
    )

    return AlertSettings.from_table(table, str(path))


ENSEMBLE_DEFAULTS = {
    "enabled": True,
    "refit_every": 2_500,
    "window": 20_000,
    "lag": 2_500,
    "num_boost_round": 100,
    "gate_metric": "log_loss",
    "keep": 5,
    "background": "process",
    "refit_whole": False,
    "drift_detector": "adwin",
    "drift_min_rows": 2_000,
    "search_trials": 0,
    "categorical_fields": True,
}
"""What a config file without these `[ensemble]` keys gets (the README's table), not the `Ensemble` class's
own defaults, which suit small examples. The registry defaults to `.eddy/registry` in the repository."""


def _ensemble_settings(table: dict, base: Path) -> dict:
    settings = {**ENSEMBLE_DEFAULTS, **table}
    registry = settings.get("registry_dir")
    settings["registry_dir"] = str((base / registry).resolve()) if registry else str(REPO_ROOT / ".eddy" / "registry")
    return settings
