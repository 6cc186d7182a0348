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
FIELD_TYPES = {"string", "double", "bigint", "boolean"}


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


_ENV_TOPICS = {
    "EDDY_EVENTS_TOPIC": "events",
    "EDDY_LABELS_TOPIC": "labels",
    "EDDY_PREDICTIONS_TOPIC": "predictions",
    "EDDY_METRICS_TOPIC": "metrics",
    "EDDY_DEAD_LETTERS_TOPIC": "dead_letters",
    "EDDY_ALERTS_TOPIC": "alerts",
}


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
    known = {f.name: f.type for f in fields(FlowSettings)}
    unknown = set(table) - set(known) - {"tail"}
    if unknown:
        raise ConfigError(f"{path}: unknown [flow] key(s) {sorted(unknown)}; known: {sorted(known)} and tail")
    values = {}
    for name, value in table.items():
        if name == "tail":
            continue
        default = getattr(FlowSettings, name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: [flow] {name} must be true or false, got {value!r}")
            values[name] = value
        elif isinstance(default, str):
            values[name] = str(value)
        elif isinstance(default, int) and not isinstance(default, bool):
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{path}: [flow] {name} must be a whole number >= 0, got {value!r}")
            values[name] = value
        else:
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{path}: [flow] {name} must be a number > 0, got {value!r}")
            values[name] = float(value)
    return FlowSettings(**values)


def _alert_settings(table: dict, path: Path) -> AlertSettings:
    from dataflows.watch.alerts import (
        AlertSettings,  # imported here: `dataflows.watch.alerts` raises this module's errors
    )

    return AlertSettings.from_table(table, str(path))


ENSEMBLE_DEFAULTS = {
    "enabled": True,
    "refit_every": 2_500,
    "window": 20_000,
    "lag": 1_000,
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
