"""A flow warm-started from the registry (`EDDY_WARM_START=true`, `task run:warm`), run as `python -m bytewax.run`
on the real broker.

The exporting flow learns River's Phishing data set (1,250 labelled events; River and LightGBM, refits every
200 labels), then scores a probe event with no label: its model is then the one checkpointed at the last
label. A new flow on new topics, warm-started, gets only the probe: its features are the same (the phishing
SQL passes the fields through), and so must be its score, member by member.
A checkpoint trained on other SQL is refused by name at start unless `warm_start_any_features` allows it;
with no checkpoint a warm start is refused too.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from dataflows.broker.admin import delete_topics, ensure_topics
from dataflows.flow.config import Topics
from dataflows.tools.datasets import phishing
from tests.flowkit import (
    PHISHING_CONFIG,
    REPO,
    by_id,
    flow_env,
    isolated_config,
    outputs,
    publish,
    run_flow_process,
    start_flow_process,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_LABELLED = 1_250  # River's Phishing data set, whole


def _config(directory: Path) -> Path:
    """configs/phishing.toml (pass-through features) with the ensemble on, refits every 200 labels and a
    checkpoint every 1,250, its registry in `directory`."""
    path = isolated_config(directory, PHISHING_CONFIG)
    text = path.read_text().replace(
        "[ensemble]\nenabled = false",
        "[ensemble]\nenabled = true\nrefit_every = 200\nwindow = 400\nlag = 30\nnum_boost_round = 20\n"
        f'background = "thread"\nregistry_dir = "{directory / "registry"}"',
    )
    text = text.replace('name = "logistic_regression"', 'name = "logistic_regression"\ncheckpoint_every = 1250')
    assert "checkpoint_every" in text and "refit_every" in text
    path.write_text(text)
    return path


def _probe(after: dict) -> dict:
    return {**after, "event_id": "probe", "ts": "2026-03-01T00:00:00+00:00", "label": None}


@pytest.fixture(scope="module")
def exported(kafka_bootstrap, tmp_path_factory):
    directory = tmp_path_factory.mktemp("exporting")
    config = _config(directory)
    events = list(phishing())
    probe = _probe(events[-1])
    suffix = uuid.uuid4().hex[:10]
    names = ("events", "labels", "predictions", "metrics", "dlq", "alerts")
    topics = Topics(*(f"warm-{name}-{suffix}" for name in names))
    ensure_topics(kafka_bootstrap, topics.all(), 1)
    try:
        publish(kafka_bootstrap, topics.events, [*events, probe])
        run_flow_process(flow_env(topics, kafka_bootstrap, config, EDDY_INCLUDE_FEATURES="true"))
        predictions, _, dead = outputs(kafka_bootstrap, topics)
    finally:
        delete_topics(kafka_bootstrap, topics.all())
    assert dead == []
    return {"config": config, "directory": directory, "probe": probe, "scored": by_id(predictions)["probe"]}


def test_a_warm_started_flow_scores_its_first_event_as_the_exporting_flow(exported, kafka_bootstrap, make_topics):
    scored = exported["scored"]
    assert scored["model"]["lightgbm"] is not None, "the exporting flow had no LightGBM model in force"
    checkpoints = sorted((exported["directory"] / "registry").glob("*/checkpoints/c*.json"))
    assert checkpoints[-1].name == f"c{N_LABELLED:012d}.json"

    topics: Topics = make_topics(1)
    publish(kafka_bootstrap, topics.events, [exported["probe"]])
    env = flow_env(topics, kafka_bootstrap, exported["config"], EDDY_INCLUDE_FEATURES="true", EDDY_WARM_START="true")
    log = run_flow_process(env)
    assert "warm start from" in log
    (warm,), _, _ = outputs(kafka_bootstrap, topics)
    assert warm["features"] == scored["features"]
    assert (warm["score"], warm["scores"], warm["model"]["lightgbm"]) == (
        scored["score"],
        scored["scores"],
        scored["model"]["lightgbm"],
    )


def test_a_checkpoint_of_other_sql_is_refused_unless_allowed(exported, kafka_bootstrap, make_topics, tmp_path):
    sql = tmp_path / "sql"
    shutil.copytree(REPO / "sql" / "phishing", sql)
    edited = sql / "phishing.sql"
    edited.write_text(edited.read_text() + "\n-- edited: another features_version\n")
    topics = make_topics(1)
    publish(kafka_bootstrap, topics.events, [exported["probe"]])
    env = flow_env(topics, kafka_bootstrap, exported["config"], EDDY_WARM_START="true", EDDY_SQL_DIR=str(sql))
    proc = start_flow_process(env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "was trained on features_version" in out and "warm_start_any_features" in out

    run_flow_process({**env, "EDDY_WARM_START_ANY_FEATURES": "true"})
    (warm,), _, _ = outputs(kafka_bootstrap, topics)
    assert warm["event_id"] == "probe"


def test_a_warm_start_without_a_checkpoint_is_refused(kafka_bootstrap, make_topics, tmp_path):
    topics = make_topics(1)
    env = flow_env(topics, kafka_bootstrap, _config(tmp_path), EDDY_WARM_START="true")
    proc = start_flow_process(env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "no River checkpoint in the model registry" in out


def test_a_checkpoint_of_another_model_is_refused(exported, kafka_bootstrap, make_topics):
    topics = make_topics(1)
    env = flow_env(
        topics, kafka_bootstrap, exported["config"], EDDY_WARM_START="true", EDDY_MODEL="hoeffding_adaptive_tree"
    )
    proc = start_flow_process(env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "holds a ScaleAndEncode | LogisticRegression model; [model] name (hoeffding_adaptive_tree)" in out
