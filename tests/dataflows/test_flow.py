"""The whole flow against the real broker: bad input never stops it and is never lost; labels join later."""

from __future__ import annotations

import time
from dataclasses import replace

import orjson
import pytest

from dataflows.flow.codec import parse_ts
from dataflows.tools import datasets
from tests.flowkit import (
    by_id,
    config_for,
    dead_letter_reasons,
    flow_env,
    flow_that_fails,
    outputs,
    publish,
    run_flow,
)

pytestmark = pytest.mark.kafka

SMALL_ENSEMBLE = {"refit_every": 300, "window": 1000, "lag": 50, "background": "none"}


def test_bad_messages_become_dead_letters_and_the_flow_keeps_going(kafka_bootstrap, make_topics, tmp_path):
    topics = make_topics(partitions=2)
    good = list(datasets.transactions(600, seed=11))
    bad = [
        b"{not json",
        b"[1, 2, 3]",
        orjson.dumps({**good[0], "event_id": "bad-type", "amount": "lots"}),
        orjson.dumps({k: v for k, v in good[1].items() if k != "amount"} | {"event_id": "bad-missing"}),
        b'{"event_id": "bad-nan", "ts": 1767225600000, "amount": NaN}',
        orjson.dumps({**good[2], "event_id": "bad-ts", "ts": 1_767_225_600}),
        orjson.dumps({**good[3], "event_id": "bad-big", "category": "x" * 70_000}),
        orjson.dumps(good[4]),
    ]
    messages = good[:300] + bad + good[300:]
    publish(kafka_bootstrap, topics.events, messages, key=lambda m: None, partition=lambda i, m: i % 2)
    config = config_for(topics, kafka_bootstrap)
    config = replace(config, ensemble={**SMALL_ENSEMBLE, "registry_dir": str(tmp_path / "registry")})

    run_flow(config)

    predictions, metrics, dead = outputs(kafka_bootstrap, topics)
    assert sorted(by_id(predictions)) == sorted(e["event_id"] for e in good)
    reasons = sorted(reason for reason, _ in dead_letter_reasons(dead))
    assert reasons == sorted(
        ["not_json", "not_object", "wrong_type", "missing_field", "not_finite", "absurd_ts", "oversize", "duplicate"]
    )
    assert {r.value for r in dead} == set(bad)
    final = metrics[-1]
    assert final["type"] == "final"
    assert final["dead_letters_total"] == len(bad)
    assert final["dead_letters"]["duplicate"] == 1
    assert final["events"] == len(good)


def test_delayed_labels_are_learned_with_the_features_the_event_was_scored_with(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=1)
    events = list(datasets.transactions(800, seed=3))
    publish(kafka_bootstrap, topics.events, [{k: v for k, v in e.items() if k != "label"} for e in events])
    labels = [{"event_id": e["event_id"], "label": e["label"], "ts": parse_ts(e, "ts") + 30_000} for e in events[:700]]
    publish(kafka_bootstrap, topics.labels, labels)
    config = replace(config_for(topics, kafka_bootstrap), ensemble={"enabled": False})

    run_flow(config)

    predictions, metrics, _ = outputs(kafka_bootstrap, topics)
    assert len(predictions) == len(events)
    assert not any(p["label_inline"] for p in predictions)
    learner = metrics[-1]["learner"]
    assert learner["labels_delayed"] == 700
    assert learner["labels_unmatched"] == 0
    assert learner["pending_events"] == 100
    assert metrics[-1]["quality"]["score"]["labels"] == 700
    early, late = by_id(predictions)[events[0]["event_id"]], by_id(predictions)[events[-1]["event_id"]]
    assert early["score"] == 0.5
    assert late["score"] != 0.5


def test_predictions_carry_the_features_they_were_scored_with(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=1)
    events = [
        {
            "event_id": f"e{i}",
            "ts": 1_767_225_600_000 + i * 60_000,
            "user_id": "u1",
            "merchant_id": "m1",
            "amount": 10.0 * (i + 1),
            "category": "grocery",
            "country": "FR",
            "label": False,
        }
        for i in range(5)
    ]
    publish(kafka_bootstrap, topics.events, events)
    config = replace(config_for(topics, kafka_bootstrap), include_features=True, ensemble={"enabled": False})

    run_flow(config)

    predictions, _, _ = outputs(kafka_bootstrap, topics)
    last = by_id(predictions)["e4"]
    assert last["features"]["user_count_10m"] == 5
    assert last["features"]["user_sum_10m"] == pytest.approx(150.0)
    assert last["features"]["user_seconds_since_previous"] == pytest.approx(60.0)
    assert last["scores"] == {"river": last["score"]}
    assert set(last) >= {"event_id", "ts", "score", "scores", "model", "features_version", "label_inline"}


def test_the_flow_refuses_to_start_without_a_broker_within_seconds(tmp_path):
    env = flow_env(make_fake_topics(), "localhost:1")
    start = time.monotonic()
    result = flow_that_fails(env)
    assert result.returncode != 0
    assert "no Kafka broker answers at localhost:1" in result.stderr
    assert time.monotonic() - start < 30


def test_the_flow_refuses_to_start_without_its_topics(kafka_bootstrap):
    env = flow_env(make_fake_topics(), kafka_bootstrap)
    result = flow_that_fails(env)
    assert result.returncode != 0
    assert "do not exist" in result.stderr
    assert "task topics" in result.stderr


def make_fake_topics():
    from dataflows.flow.config import Topics

    return Topics("nope-events", "nope-labels", "nope-predictions", "nope-metrics", "nope-dlq", "nope-alerts")


def test_the_flow_serves_prometheus_metrics(kafka_bootstrap, make_topics, tmp_path):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    topics = make_topics(partitions=1)
    publish(kafka_bootstrap, topics.events, [*datasets.transactions(1500, seed=5), b"{broken"])
    config = config_for(topics, kafka_bootstrap)
    config = replace(
        config,
        flow=replace(config.flow, prometheus_port=port),
        ensemble={**SMALL_ENSEMBLE, "registry_dir": str(tmp_path / "registry")},
    )

    run_flow(config)

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "eddy_events 1500.0" in text
    assert 'eddy_dead_letters{reason="not_json"} 1.0' in text
    assert 'eddy_batch_seconds_count{step="score_and_learn"}' in text
    assert 'eddy_batch_seconds_count{step="compute_features"}' in text
    assert 'eddy_model_version{member="lightgbm"}' in text
    assert 'eddy_roc_auc{member="river"}' in text


def test_arrival_mode_scores_every_event_without_waiting_for_the_watermark(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=2)
    events = list(datasets.transactions(1000, seed=9))
    publish(kafka_bootstrap, topics.events, events, partition=lambda i, m: i % 2)
    config = config_for(topics, kafka_bootstrap, mode="arrival")
    config = replace(config, ensemble={"enabled": False})

    run_flow(config)

    predictions, metrics, dead = outputs(kafka_bootstrap, topics)
    assert dead == []
    assert sorted(by_id(predictions)) == sorted(e["event_id"] for e in events)
    assert metrics[-1]["learner"]["labels_inline"] == 1000


def test_a_tailing_flow_started_before_its_producer_scores_every_event(kafka_bootstrap, make_topics, tmp_path):
    import signal
    import time

    from tests.flowkit import flow_env, start_flow_logged, wait_until_started
    from tests.kafka_io import read_topic

    topics = make_topics(partitions=3)
    log = tmp_path / "flow.log"
    env = flow_env(topics, kafka_bootstrap, EDDY_TAIL="true", EDDY_ENSEMBLE="false")
    flow = start_flow_logged(env, log)
    try:
        wait_until_started(log)
        events = list(datasets.transactions(3000, seed=13))
        # One partition runs ahead in event time; the other two speak up later (within the idle timeout):
        # their events must wait for them, not be refused as late.
        publish(kafka_bootstrap, topics.events, events[0::3], partition=lambda i, e: 0)
        time.sleep(2)
        publish(kafka_bootstrap, topics.events, events[1::3], partition=lambda i, e: 1)
        publish(kafka_bootstrap, topics.events, events[2::3], partition=lambda i, e: 2)
        predictions = read_topic(kafka_bootstrap, topics.predictions, expected=len(events), timeout_s=60)
    finally:
        flow.send_signal(signal.SIGINT)
        flow.wait(timeout=30)
    assert len({orjson.loads(r.value)["event_id"] for r in predictions}) == len(events), log.read_text()[-3000:]
    assert read_topic(kafka_bootstrap, topics.dead_letters, timeout_s=3) == []
