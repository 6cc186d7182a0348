"""Configuration: file values, environment overrides, and errors a person can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflows.flow.config import ENSEMBLE_DEFAULTS, REPO_ROOT, ConfigError, load_config


def test_the_repository_config_holds_the_contract_defaults():
    config = load_config(env={})
    assert config.bootstrap_servers == "localhost:9092"
    assert config.topics.all() == ["events", "labels", "predictions", "metrics", "dead-letters", "alerts"]
    assert config.tail is True
    assert config.sql_dir.name == "transactions"


def test_environment_overrides_the_file(tmp_path: Path):
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
        "EDDY_EVENTS_TOPIC": "payments",
        "EDDY_DEAD_LETTERS_TOPIC": "dlq",
        "EDDY_SQL_DIR": str(tmp_path),
        "EDDY_MODEL": "adaptive_random_forest",
        "EDDY_INCLUDE_FEATURES": "true",
        "EDDY_TAIL": "false",
    }
    config = load_config(env=env)
    assert config.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert config.topics.events == "payments"
    assert config.topics.dead_letters == "dlq"
    assert config.topics.labels == "labels"
    assert config.sql_dir == tmp_path
    assert config.model == "adaptive_random_forest"
    assert config.include_features is True
    assert config.tail is False


def test_eddy_config_names_another_file(tmp_path: Path):
    path = tmp_path / "other.toml"
    path.write_text('[topics]\nevents = "clicks"\n[fields]\nurl = "string"\n')
    config = load_config(env={"EDDY_CONFIG": str(path)})
    assert config.topics.events == "clicks"
    assert config.fields == {"url": "string"}


def test_a_file_without_ensemble_keys_gets_the_documented_defaults(tmp_path: Path):
    """The README's table, which eddy.toml spells out, not the Ensemble class's small-example defaults."""
    path = tmp_path / "other.toml"
    path.write_text('[ensemble]\nlag = 300\nregistry_dir = "models"\n')
    config = load_config(env={"EDDY_CONFIG": str(path)})
    assert config.ensemble == {**ENSEMBLE_DEFAULTS, "lag": 300, "registry_dir": str((tmp_path / "models").resolve())}
    assert {k: v for k, v in load_config(env={}).ensemble.items() if k in ENSEMBLE_DEFAULTS} == ENSEMBLE_DEFAULTS
    bare = tmp_path / "bare.toml"
    bare.write_text("")
    assert load_config(env={"EDDY_CONFIG": str(bare)}).ensemble["registry_dir"] == str(REPO_ROOT / ".eddy" / "registry")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[fields]\namount = 'float'\n", r"unknown type\(s\) \{'amount': 'float'\}"),
        ("[topics]\nevent = 'x'\n", r"unknown topic key\(s\) \['event'\]"),
        ("[kafka\n", "not valid TOML"),
    ],
)
def test_bad_config_is_named(tmp_path: Path, text: str, message: str):
    path = tmp_path / "eddy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_a_bad_boolean_is_named():
    with pytest.raises(ConfigError, match="EDDY_TAIL='maybe' is not a boolean"):
        load_config(env={"EDDY_TAIL": "maybe"})


def test_the_clock_skew_defaults_to_half_an_hour_and_is_set_by_file_or_environment(tmp_path: Path):
    assert load_config(env={}).flow.max_clock_skew_ms == 1_800_000
    path = tmp_path / "eddy.toml"
    path.write_text("[flow]\nmax_clock_skew_ms = 60000\n")
    assert load_config(path, env={}).flow.max_clock_skew_ms == 60_000
    assert load_config(path, env={"EDDY_MAX_CLOCK_SKEW_MS": "0"}).flow.max_clock_skew_ms == 0
    with pytest.raises(ConfigError, match="EDDY_MAX_CLOCK_SKEW_MS='1h' is not a whole number of milliseconds"):
        load_config(path, env={"EDDY_MAX_CLOCK_SKEW_MS": "1h"})
    path.write_text("[flow]\nmax_clock_skew_ms = -1\n")
    with pytest.raises(ConfigError, match=r"\[flow\] max_clock_skew_ms must be a whole number >= 0"):
        load_config(path, env={})


def test_serve_and_model_settings_come_from_file_or_environment(tmp_path: Path):
    defaults = load_config(env={})
    assert (defaults.serve.port, defaults.serve.timeout_s, defaults.serve.host) == (8080, 2.0, "127.0.0.1")
    assert (defaults.model_settings.checkpoint_every, defaults.model_settings.warm_start) == (10_000, False)
    path = tmp_path / "eddy.toml"
    path.write_text("[model]\nname = 'logistic_regression'\ncheckpoint_every = 500\n[serve]\nport = 9000\n")
    config = load_config(path, env={"EDDY_SERVE_TIMEOUT_S": "0.5", "EDDY_WARM_START": "true"})
    assert (config.serve.port, config.serve.timeout_s) == (9000, 0.5)
    assert (config.model_settings.checkpoint_every, config.model_settings.warm_start) == (500, True)
    with pytest.raises(ConfigError, match="EDDY_SERVE_PORT='eighty' is not a whole number"):
        load_config(path, env={"EDDY_SERVE_PORT": "eighty"})
    path.write_text("[serve]\nprot = 9000\n")
    with pytest.raises(ConfigError, match=r"unknown \[serve\] key\(s\) \['prot'\]"):
        load_config(path, env={})
    path.write_text("[model]\nwarm_start = 'yes'\n")
    with pytest.raises(ConfigError, match=r"\[model\] warm_start must be true or false"):
        load_config(path, env={})
