"""The replay tool against the real broker: every event intact, labels after their delay, clear errors."""

from __future__ import annotations

import orjson
import pytest

from dataflows.flow.codec import parse_ts
from dataflows.tools import datasets
from dataflows.tools.replay import main, make_producer, replay
from tests.kafka_io import read_topic

pytestmark = pytest.mark.kafka


def test_transactions_round_trip_through_the_broker(kafka_bootstrap, make_topics):
    topics = make_topics(partitions=3)
    expected = list(datasets.transactions(3000, seed=7))

    result = replay(iter(expected), make_producer(kafka_bootstrap), topics.events)

    records = read_topic(kafka_bootstrap, topics.events, expected=len(expected))
    received = {r.key.decode(): orjson.loads(r.value) for r in records}
    assert result.events == len(expected) == len(records)
    assert received == {e["event_id"]: e for e in expected}
    assert {r.partition for r in records} == {0, 1, 2}


def test_labels_arrive_on_their_topic_after_the_delay(kafka_bootstrap, make_topics):
    topics = make_topics()
    events = list(datasets.phishing(limit=40))

    result = replay(iter(events), make_producer(kafka_bootstrap), topics.events, topics.labels, label_delay_s=1.5)

    sent = {orjson.loads(r.value)["event_id"]: r for r in read_topic(kafka_bootstrap, topics.events, 40)}
    labels = read_topic(kafka_bootstrap, topics.labels, 40)
    assert result.labels == len(labels) == 40
    assert all("label" not in orjson.loads(r.value) for r in sent.values())
    for record in labels:
        label = orjson.loads(record.value)
        event = next(e for e in events if e["event_id"] == label["event_id"])
        assert label["label"] == event["label"]
        assert label["ts"] == parse_ts(event, "ts") + 1500
        assert record.timestamp - sent[label["event_id"]].timestamp >= 1400


def test_replay_command_publishes_a_csv_file(kafka_bootstrap, make_topics, tmp_path, capsys):
    topics = make_topics()
    path = tmp_path / "events.csv"
    path.write_text("event_id,ts,amount,label\ne1,2026-01-01T00:00:00Z,1.5,true\ne2,1767225600000,2,false\n")

    code = main([str(path), "--events-topic", topics.events, "--bootstrap-servers", kafka_bootstrap, "--quiet"])

    assert code == 0
    assert "published 2 events" in capsys.readouterr().out
    values = sorted(
        (orjson.loads(r.value) for r in read_topic(kafka_bootstrap, topics.events, 2)), key=lambda e: e["event_id"]
    )
    assert values == [
        {"event_id": "e1", "ts": "2026-01-01T00:00:00Z", "amount": 1.5, "label": True},
        {"event_id": "e2", "ts": 1767225600000, "amount": 2, "label": False},
    ]


def test_malformed_file_fails_before_anything_is_sent(kafka_bootstrap, make_topics, tmp_path, capsys):
    topics = make_topics()
    path = tmp_path / "broken.jsonl"
    path.write_text('{"event_id": "a", "ts": 1}\n{"event_id": "b", "ts": 2}\n{"event_id": "c", ts: 3}\n')

    code = main([str(path), "--events-topic", topics.events, "--bootstrap-servers", kafka_bootstrap, "--quiet"])

    assert code == 1
    assert "broken.jsonl:3: not valid JSON" in capsys.readouterr().err
    assert read_topic(kafka_bootstrap, topics.events, timeout_s=3) == []


def test_unknown_topic_fails_with_the_command_that_creates_it(kafka_bootstrap, capsys):
    code = main(
        [
            "phishing",
            "--limit",
            "1",
            "--events-topic",
            "no-such-topic-xyz",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--quiet",
        ]
    )

    assert code == 1
    assert "no-such-topic-xyz do not exist" in capsys.readouterr().err
