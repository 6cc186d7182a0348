"""Text through Kafka and the whole flow: River's own numbers, hostile text, and a resume that keeps the
vocabulary."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from dataflows.tools.datasets import messages
from tests.flowkit import (
    REPO,
    by_id,
    committed_epoch,
    config_for,
    dead_letter_reasons,
    flow_env,
    isolated_config,
    outputs,
    publish,
    publish_input,
    run_flow,
    run_flow_process,
)
from tests.models.test_text import plain_river

pytestmark = pytest.mark.kafka

MESSAGES_CONFIG = REPO / "configs" / "messages.toml"


def pass_through_config(directory: Path) -> Path:
    """The text and the channel, unchanged, as the only features; River alone."""
    (directory / "sql").mkdir(parents=True)
    (directory / "sql" / "pass.sql").write_text(
        "-- group: pass\n-- entity: none\n-- horizon: 0s\nSELECT event_id, body, channel FROM events\n"
    )
    path = directory / "eddy.toml"
    path.write_text(
        '[kafka]\npartitions = 1\n[features]\nsql_dir = "sql"\n[ensemble]\nenabled = false\n[flow]\nlateness_ms = 0\n'
        '[text]\nmethod = "tfidf"\nbuckets = 4096\nngram_max = 2\n[fields]\nbody = "text"\nchannel = "string"\n'
    )
    return path


def test_scores_through_kafka_equal_a_plain_river_loop_on_the_same_text(kafka_bootstrap, make_topics, tmp_path):
    topics = make_topics(partitions=1)
    events = list(messages(2_000, seed=3))
    publish(kafka_bootstrap, topics.events, events)

    run_flow(config_for(topics, kafka_bootstrap, pass_through_config(tmp_path)))

    predictions, reports, dead = outputs(kafka_bootstrap, topics)
    assert dead == []
    ours = by_id(predictions)
    model, expected = plain_river("tfidf", 4096, 2), []
    for event in events:
        x = {"body": event["body"], "channel": event["channel"]}
        expected.append(model.predict_proba_one(x)[True])
        model.learn_one(x, event["label"])
    got = [ours[event["event_id"]]["score"] for event in events]
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-9
    assert reports[-1]["quality"]["score"]["roc_auc"] > 0.75  # 2,000 messages: still warming up (0.92 at 20,000)


HOSTILE_TEXTS = {
    "huge_token": "a" * 60_000,
    "control": "".join(chr(c) for c in range(1, 32)) + "\x7f end",
    "nul": "before\x00after \x00\x00",
    "planes": " ".join(chr(plane * 0x10000 + 0x100) + "x" for plane in range(17)),
    "rtl": "\u202eevil\u202c \u200fمرحبا بالعالم\u200f \u05e2\u05d1\u05e8\u05d9\u05ea \u200e",
    "combining": "e" + "\u0301" * 2_000,
    "invisible": "\ufeff\u200b\u200d\u2060 word",
    "one_char": "!",
    "accents": "Ça coûte très cher, ÉTÉ, naïve façade",
}


def test_hostile_text_never_takes_the_flow_down(kafka_bootstrap, make_topics, tmp_path):
    topics = make_topics(partitions=1)
    good = list(messages(600, seed=5))
    hostile = [
        {**good[300 + i], "event_id": f"hostile-{name}", "body": text}  # in event-time order: none is late
        for i, (name, text) in enumerate(HOSTILE_TEXTS.items())
    ]
    base = {k: v for k, v in good[0].items() if k != "body"}
    invalid = {
        "empty": ({**base, "event_id": "bad-empty", "body": ""}, "empty_text"),
        "blank": ({**base, "event_id": "bad-blank", "body": " \u3000\n"}, "empty_text"),
        "null": ({**base, "event_id": "bad-null", "body": None}, "empty_text"),
        "number": ({**base, "event_id": "bad-number", "body": 7}, "wrong_type"),
        "oversize": ({**base, "event_id": "bad-oversize", "body": "b" * 70_000}, "oversize"),
    }
    raw = {
        b'{"event_id": "bad-surrogate", "ts": "2026-01-01T00:00:00Z", "body": "\\ud800 x"}': "not_json",
        b'{"event_id": "bad-bytes", "body": "\xff\xfe"}': "not_json",
    }
    stream = good[:300] + hostile + [m for m, _ in invalid.values()] + list(raw) + good[300:]
    publish(kafka_bootstrap, topics.events, stream)
    config = config_for(topics, kafka_bootstrap, MESSAGES_CONFIG)
    # LightGBM refits on windows that hold the hostile text too, in this process.
    ensemble = {**config.ensemble, "refit_every": 200, "window": 200, "lag": 0, "background": "thread"}
    config = replace(config, ensemble={**ensemble, "registry_dir": str(tmp_path / "registry")})

    run_flow(config)

    predictions, reports, dead = outputs(kafka_bootstrap, topics)
    ours = by_id(predictions)
    assert set(ours) == {e["event_id"] for e in good + hostile}
    assert all(0.0 <= p["score"] <= 1.0 and math.isfinite(p["score"]) for p in predictions)
    reasons = sorted(reason for reason, _ in dead_letter_reasons(dead))
    assert reasons == sorted([reason for _, reason in invalid.values()] + list(raw.values()))
    final = reports[-1]
    assert final["dead_letters"]["empty_text"] == 3 and final["dead_letters"]["wrong_type"] == 1
    assert final["refits"]["last"] is not None, "LightGBM must have refitted on windows holding the hostile text"


def test_a_resumed_flow_scores_with_the_vocabulary_it_learned_before(kafka_bootstrap, make_topics, tmp_path):
    events = [orjson.loads(orjson.dumps(e)) for e in messages(3_000, seed=11)]
    half = len(events) // 2

    reference_topics = make_topics(partitions=3)
    publish_input(kafka_bootstrap, reference_topics, events, [], 3)
    reference_config = config_for(reference_topics, kafka_bootstrap, MESSAGES_CONFIG)
    run_flow(replace(reference_config, ensemble={**reference_config.ensemble, "enabled": False}))
    reference = by_id(outputs(kafka_bootstrap, reference_topics)[0])
    assert len(reference) == len(events)

    topics = make_topics(partitions=3)
    recovery_dir = tmp_path / "recovery"
    init = [sys.executable, "-m", "dataflows.flow.recovery", "init", str(recovery_dir)]
    subprocess.run(init, cwd=REPO, check=True, capture_output=True)
    config = isolated_config(tmp_path / "config", MESSAGES_CONFIG)
    env = flow_env(topics, kafka_bootstrap, config, EDDY_ENSEMBLE="false")
    recovery = ("-r", str(recovery_dir), "-s", "1", "-b", "0")

    publish_input(kafka_bootstrap, topics, events[:half], [], 3)
    run_flow_process(env, *recovery)
    assert committed_epoch(recovery_dir) > 0
    first = outputs(kafka_bootstrap, topics)[0]
    assert {p["event_id"] for p in first} == {e["event_id"] for e in events[:half]}

    publish_input(kafka_bootstrap, topics, events[half:], [], 3)
    run_flow_process(env, *recovery)
    both = outputs(kafka_bootstrap, topics)[0]
    counts = Counter(p["event_id"] for p in both)
    again = [e["event_id"] for e in events[:half] if counts[e["event_id"]] > 1]
    assert len(again) < half // 2, "the second run must resume, not start over"
    ours = by_id(both)
    later = [e["event_id"] for e in events[half:]]
    assert all(counts[i] == 1 for i in later)
    # The River model's TF-IDF document frequencies came back with the snapshot: the same scores.
    assert [ours[i]["score"] for i in later] == [reference[i]["score"] for i in later]
