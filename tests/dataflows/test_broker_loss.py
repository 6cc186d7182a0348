"""The broker going away mid-run, on a broker of this module's own (never the shared one the other tests use).

The module starts a second local broker with `scripts/kafka.sh` on free ports and its own home, stops and
restarts it under a running flow, and stops it at the end. Against an uninterrupted run of the same input:
- the broker back within `[flow] broker_wait_s`: the flow carries on by itself, and its predictions equal
  the uninterrupted run's;
- away past the bound: the flow exits non-zero saying how to resume, and a resume from its recovery
  directory gives every event exactly its prediction;
- a second run without a recovery directory over outputs that hold predictions refuses to publish them again.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dataflows.broker.admin import ensure_topics
from dataflows.broker.sink import EXIT_BROKER_UNREACHABLE
from dataflows.flow.config import Topics
from tests.flowkit import (
    REPO,
    TopicTail,
    by_id,
    committed_epoch,
    flow_env,
    isolated_config,
    outputs,
    publish_input,
    start_flow_logged,
    transactions_input,
)
from tests.own_broker import OwnBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS = 30_000  # enough that the flow is still running when the broker goes, on a fast machine too
PARTITIONS = 3
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    own = OwnBroker(tmp_path_factory.mktemp("own-kafka"))
    own.up()
    try:
        yield own
    finally:
        own.down()


def _topics(broker: OwnBroker) -> Topics:
    suffix = uuid.uuid4().hex[:10]
    topics = Topics(
        *(f"loss-{name}-{suffix}" for name in ("events", "labels", "predictions", "metrics", "dlq", "alerts"))
    )
    ensure_topics(broker.bootstrap, topics.all(), PARTITIONS)
    return topics


@pytest.fixture(scope="module")
def scenario(broker, tmp_path_factory):
    """The input (20 % of the labels delayed on the labels topic), and the predictions of an uninterrupted run
    of it, whose topics stay behind for the start-over test."""
    events, labels = transactions_input(N_EVENTS, seed=5, label_delay_s=(1.0, 900.0), delayed_share=0.2)
    topics = _topics(broker)
    publish_input(broker.bootstrap, topics, events, labels, PARTITIONS)
    directory = tmp_path_factory.mktemp("reference")
    env = flow_env(topics, broker.bootstrap, isolated_config(directory))
    proc = start_flow_logged(env, directory / "flow.log", "-s", "1")
    assert proc.wait(timeout=RUN_TIMEOUT_S) == 0, (directory / "flow.log").read_text()[-4000:]
    predictions, _, dead = outputs(broker.bootstrap, topics)
    assert not dead, f"the reference run dead-lettered {len(dead)} messages"
    ids = [p["event_id"] for p in predictions]
    assert len(ids) == len(set(ids)) == N_EVENTS
    return events, labels, topics, env, by_id(predictions)


def _fresh_run_env(broker: OwnBroker, scenario, directory: Path, **extra: str) -> tuple[Topics, dict[str, str]]:
    events, labels, *_ = scenario
    topics = _topics(broker)
    publish_input(broker.bootstrap, topics, events, labels, PARTITIONS)
    return topics, flow_env(topics, broker.bootstrap, isolated_config(directory), **extra)


def _wait_for_predictions(broker: OwnBroker, topics: Topics, proc: subprocess.Popen, share: float, log: Path) -> None:
    """Until `share` of the events have predictions (the flow is mid-run), then return."""
    tail = TopicTail(broker.bootstrap, topics.predictions)
    seen = 0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while seen < share * N_EVENTS:
            assert proc.poll() is None, f"the flow ended before the broker went away:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no {share:.0%} of the predictions:\n{log.read_text()[-4000:]}"
            seen += len(tail.poll())
    finally:
        tail.close()


def _check_against(reference: dict[str, dict], predictions: list[dict]) -> None:
    """Every event has a prediction, a repeated one (a replayed epoch) equals the first, scores equal."""
    first: dict[str, dict] = {}
    for prediction in predictions:
        earlier = first.setdefault(prediction["event_id"], prediction)
        assert prediction == earlier, f"a repeated prediction differs: {earlier} then {prediction}"
    missing = set(reference) - set(first)
    assert not missing, f"{len(missing)} events never got a prediction, e.g. {sorted(missing)[:5]}"
    assert set(first) == set(reference)
    # `!=` on floats, not a tolerance: a run held up by the broker scores exactly as an uninterrupted one.
    wrong = [
        e
        for e in reference
        if (first[e]["score"], first[e]["scores"]) != (reference[e]["score"], reference[e]["scores"])
    ]
    assert not wrong, f"{len(wrong)} scores differ from the uninterrupted run, e.g. {wrong[:5]}"
    assert all(first[e]["model"] == reference[e]["model"] for e in reference)


def _rdkafka_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if "rdkafka#" in line)


def test_broker_back_within_the_bound_the_flow_carries_on_and_gives_the_uninterrupted_predictions(
    broker, scenario, tmp_path
):
    reference = scenario[4]
    topics, env = _fresh_run_env(broker, scenario, tmp_path / "run", EDDY_BROKER_WAIT_S="150")
    log = tmp_path / "flow.log"
    proc = start_flow_logged(env, log, "-s", "1")
    try:
        _wait_for_predictions(broker, topics, proc, 0.1, log)
        broker.down()
        time.sleep(2)  # away for a while (decides nothing: any absence within the bound must be survived)
        broker.up()
        returncode = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert returncode == 0, f"the flow did not survive the broker's absence:\n{text[-4000:]}"
    assert re.search(r"Kafka broker at \S+ unreachable: \d+ message\(s\)", text), (
        f"the flow never said that the broker was unreachable:\n{text[-4000:]}"
    )
    assert "reachable again" in text, text[-4000:]
    # librdkafka's connection failures, a hundred lines a second from the flow's dozen clients, come through
    # at most once per kind every 30 s.
    assert _rdkafka_lines(text) < 60, f"{_rdkafka_lines(text)} librdkafka lines:\n{text[-4000:]}"
    predictions, _, dead = outputs(broker.bootstrap, topics)
    assert not dead, f"{len(dead)} dead letters"
    _check_against(reference, predictions)


def test_broker_away_past_the_bound_stops_the_flow_with_advice_and_a_resume_loses_nothing(broker, scenario, tmp_path):
    reference = scenario[4]
    topics, env = _fresh_run_env(broker, scenario, tmp_path / "run", EDDY_BROKER_WAIT_S="3")
    recovery_dir = tmp_path / "recovery"
    init = [sys.executable, "-m", "dataflows.flow.recovery", "init", str(recovery_dir)]
    subprocess.run(init, cwd=REPO, check=True, capture_output=True)
    log = tmp_path / "flow.log"
    recovery_args = ("-r", str(recovery_dir), "-s", "1", "-b", "0")
    proc = start_flow_logged(env, log, *recovery_args)
    try:
        _wait_for_predictions(broker, topics, proc, 0.1, log)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while committed_epoch(recovery_dir) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert committed_epoch(recovery_dir) > 0, "the run committed no snapshot"
        broker.down()
        returncode = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.up()
    text = log.read_text()
    assert returncode == EXIT_BROKER_UNREACHABLE, f"the flow exited with {returncode}:\n{text[-4000:]}"
    assert "panicked" not in text, f"a clear message, not a panic:\n{text[-4000:]}"
    assert "within 3 s ([flow] broker_wait_s, EDDY_BROKER_WAIT_S)" in text, text[-4000:]
    assert "start the flow again with the same recovery directory" in text, text[-4000:]

    proc = start_flow_logged(env, log, *recovery_args)
    returncode = proc.wait(timeout=RUN_TIMEOUT_S)
    assert returncode == 0, f"the resume failed:\n{log.read_text()[-4000:]}"
    predictions, _, dead = outputs(broker.bootstrap, topics)
    assert not dead, f"{len(dead)} dead letters"
    _check_against(reference, predictions)


def test_a_second_run_without_a_recovery_directory_does_not_publish_the_predictions_again(broker, scenario, tmp_path):
    _, _, topics, env, reference = scenario
    log = tmp_path / "flow.log"
    proc = start_flow_logged(env, log, "-s", "1")
    returncode = proc.wait(timeout=RUN_TIMEOUT_S)
    text = log.read_text()
    assert returncode != 0, f"a run without state over scored input ran:\n{text[-4000:]}"
    assert f"topic '{topics.predictions}' already holds {N_EVENTS:,} predictions" in text, text[-4000:]
    assert "EDDY_START_OVER=true" in text and "recovery directory" in text, text[-4000:]
    assert "Traceback" not in text, f"a clear message, not a traceback:\n{text[-4000:]}"
    predictions, _, _ = outputs(broker.bootstrap, topics)
    assert len(predictions) == len(reference), "predictions were published again"
