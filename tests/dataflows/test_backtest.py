"""The backtest: a file through the same dataflow gives what the Kafka run gives, and writes its report."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataflows.flow.codec import parse_ts
from dataflows.flow.config import load_config
from dataflows.tools import datasets
from dataflows.tools.backtest import BacktestError, main, read_lines, run_backtest, source_messages
from tests.flowkit import by_id, config_for, outputs, publish, run_flow

ENSEMBLE = {"enabled": True, "refit_every": 500, "window": 2000, "lag": 100, "background": "none", "keep": 3}


def write_jsonl(path: Path, events: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(datasets.transactions(2_500, seed=7))


@pytest.mark.kafka
def test_backtest_gives_the_kafka_runs_predictions(events, make_topics, kafka_bootstrap, tmp_path):
    topics = make_topics(partitions=1)
    publish(kafka_bootstrap, topics.events, events)
    kafka_config = config_for(topics, kafka_bootstrap)
    kafka_config = replace(kafka_config, ensemble={**ENSEMBLE, "registry_dir": str(tmp_path / "kafka-registry")})
    run_flow(kafka_config)
    live, _metrics, _dead = outputs(kafka_bootstrap, topics)

    file_config = replace(kafka_config, ensemble={**ENSEMBLE, "registry_dir": str(tmp_path / "unused")})
    result = run_backtest(write_jsonl(tmp_path / "events.jsonl", events), file_config, tmp_path / "bt", report=False)
    backtest = [orjson.loads(line) for line in (tmp_path / "bt" / "predictions.jsonl").read_bytes().splitlines()]

    assert result.predictions == len(events) == len(live)
    live_scores = {k: p["score"] for k, p in by_id(live).items()}
    backtest_scores = {k: p["score"] for k, p in by_id(backtest).items()}
    assert backtest_scores == live_scores
    assert {k: p["scores"] for k, p in by_id(backtest).items()} == {k: p["scores"] for k, p in by_id(live).items()}
    assert any(p["scores"].get("lightgbm") is not None for p in backtest), "LightGBM should take part"


def test_backtest_writes_outputs_and_report(events, tmp_path):
    config = replace(load_config(env={}), ensemble=ENSEMBLE)
    path = write_jsonl(tmp_path / "events.jsonl", [*events[:1_500], {"event_id": "broken"}])
    result = run_backtest(path, config, tmp_path / "out")

    assert (result.events, result.labels, result.predictions, result.dead_letters) == (1_501, 0, 1_500, 1)
    for name in ("predictions.jsonl", "metrics.jsonl", "dead_letters.jsonl", "report.html", "report.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    dead = orjson.loads((tmp_path / "out" / "dead_letters.jsonl").read_bytes())
    assert dead["value"] == '{"event_id":"broken"}' and dead["headers"]["stage"] == "decode"
    assert sorted(p.name for p in (tmp_path / "out" / "registry").glob("*/v*.json")), "refits go to out/registry/<run>"
    final = orjson.loads((tmp_path / "out" / "metrics.jsonl").read_bytes().splitlines()[-1])
    assert final["type"] == "final" and final["events"] == 1_500 and final["consumer_lag"] is None


def test_label_delay_moves_labels_to_the_labels_topic(events, tmp_path):
    config = replace(load_config(env={}), ensemble={"enabled": False})
    lines = [orjson.dumps(e) for e in events[:300]]
    messages = list(source_messages(config, iter(lines), label_delay_s=60))
    on_events = [orjson.loads(m.value) for m in messages if m.topic == config.topics.events]
    labels = [orjson.loads(m.value) for m in messages if m.topic == config.topics.labels]
    assert len(on_events) == len(labels) == 300 and not any("label" in e for e in on_events)
    assert [m.offset for m in messages if m.topic == config.topics.labels] == list(range(300))
    first = labels[0]
    assert first["ts"] == datasets_ts(events[0]) + 60_000 and first["label"] == events[0]["label"]
    # each label comes after every event up to its own time, so both partitions advance in event time
    position = {orjson.loads(m.value)["event_id"]: i for i, m in enumerate(messages) if m.topic == config.topics.events}
    label_at = {orjson.loads(m.value)["event_id"]: i for i, m in enumerate(messages) if m.topic == config.topics.labels}
    assert all(label_at[k] > position[k] for k in label_at)

    result = run_backtest(write_jsonl(tmp_path / "e.jsonl", events[:300]), config, tmp_path / "o", 60, report=False)
    final = orjson.loads((tmp_path / "o" / "metrics.jsonl").read_bytes().splitlines()[-1])
    assert result.labels == 300 and final["labels_received"] == 300
    assert final["learner"]["labels_delayed"] == 300 and final["learner"]["labels_inline"] == 0


def datasets_ts(event: dict) -> int:
    from dataflows.flow.codec import parse_ts

    return parse_ts(event, "ts")


def test_parquet_rows_read_as_jsonl_lines_do(events, tmp_path):
    table = pa.Table.from_pylist(events[:50])
    pq.write_table(table, tmp_path / "e.parquet")
    assert [orjson.loads(line) for line in read_lines(tmp_path / "e.parquet")] == events[:50]


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(BacktestError, match=re.escape("no such file")):
        list(read_lines(tmp_path / "missing.jsonl"))
    (tmp_path / "e.csv").write_text("a,b\n")
    with pytest.raises(BacktestError, match=re.escape("unknown file type '.csv'; use .jsonl or .parquet")):
        list(read_lines(tmp_path / "e.csv"))
    assert main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--label-delay" in capsys.readouterr().out


def test_one_event_hours_ahead_of_a_files_history_neither_stops_the_backtest_nor_is_lost(events, tmp_path):
    # Historical data: every `ts` is in the past, so no clock can tell the event that is 3 hours ahead of its
    # neighbours; the ordering step does, because the event after it does not follow it.
    config = replace(load_config(env={}), ensemble={"enabled": False})
    ahead = {**events[500], "event_id": "ahead", "ts": parse_ts(events[500], "ts") + 3 * 3_600_000}
    path = write_jsonl(tmp_path / "events.jsonl", [*events[:501], ahead, *events[501:1_500]])

    result = run_backtest(path, config, tmp_path / "out", report=False)

    predictions = [orjson.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_bytes().splitlines()]
    assert sorted(p["event_id"] for p in predictions) == sorted(e["event_id"] for e in events[:1_500])
    dead = [orjson.loads(line) for line in (tmp_path / "out" / "dead_letters.jsonl").read_bytes().splitlines()]
    assert [(d["headers"]["reason"], orjson.loads(d["value"])["event_id"]) for d in dead] == [("future_ts", "ahead")]
    assert result.dead_letters == 1


def test_a_second_backtest_into_the_same_directory_keeps_only_its_own_refits(events, tmp_path):
    config = replace(load_config(env={}), ensemble=ENSEMBLE)
    path = write_jsonl(tmp_path / "events.jsonl", events[:1_200])
    run_backtest(path, config, tmp_path / "out", report=False)
    run_backtest(path, config, tmp_path / "out", report=False)
    assert len([p for p in (tmp_path / "out" / "registry").iterdir() if p.is_dir()]) == 1
