"""The run report: chart data from metrics messages, the summary table, the HTML and PNG files, the CLI."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from dataflows.watch.report import chart_data, drift_event, main, read_metrics_file, read_metrics_topic, write_report

START = datetime(2026, 1, 1, tzinfo=UTC)


def message(i: int, total: int = 10, final: bool = False, lightgbm_from: int = 4, **extra) -> dict:
    """A metrics message shaped like the flow's, after 100 * (i + 1) events and labels."""
    events = 100 * (i + 1)
    quality = {"score": _q(0.80 + i / 100, events), "river": _q(0.78 + i / 100, events)}
    if i >= lightgbm_from:
        quality["lightgbm"] = _q(0.70 + i / 50, events - 100 * lightgbm_from)
    return {
        "type": "final" if final else "metrics",
        "at": (START + timedelta(seconds=i)).isoformat(),
        "event_time": (START + timedelta(minutes=10 * i)).isoformat(),
        "events": events,
        "labels_received": 0,
        "dead_letters": {"not_json": i // 3} if i >= 3 else {},
        "dead_letters_total": i // 3 if i >= 3 else 0,
        "events_per_s": None,
        "events_per_s_run": 100.0,
        "latency_ms_p50": 5.0,
        "latency_ms_p99": 9.0,
        "consumer_lag": {"events": 100 * total - events, "labels": 0},
        "features_version": "abc",
        "quality": quality,
        "learner": {"events_scored": events},
        **extra,
    }


def _q(auc: float, labels: int) -> dict:
    return {"roc_auc": auc, "roc_auc_rolling": auc, "log_loss": 1 - auc, "log_loss_rolling": 1 - auc, "labels": labels}


def run(n: int = 10) -> list[dict]:
    return [message(i, n) for i in range(n)] + [message(n - 1, n, final=True)]


def test_series_marks_and_summary():
    data = chart_data(
        run(),
        drift_at="0.5",
        registry=[
            {"version": 1, "accepted": True, "effect_at": 250},
            {"version": 2, "accepted": False, "rejected_by": "gate", "effect_at": 650},
            {"version": 3, "accepted": False, "rejected_by": "champion", "effect_at": 850},
        ],
    )
    assert data["members"] == ["score", "river", "lightgbm"]
    assert len(data["x"]) == 11 and data["x"][1] - data["x"][0] == 600_000
    assert data["quality"]["roc_auc_rolling"]["lightgbm"][:4] == [None] * 4
    assert data["throughput"][1] == 100.0  # 100 events in the 1 s between two messages
    assert data["dead_letters"]["not_json"][-1] == 3
    assert data["lag"]["events"][0] == 900
    drift = next(m for m in data["marks"] if m["kind"] == "drift")
    assert drift["label"] == "drift (event 500)" and drift["x"] == data["x"][4]
    refits = [m for m in data["marks"] if m["kind"].startswith("refit")]
    assert [m["kind"] for m in refits] == ["refit_accepted", "refit_rejected", "refit_rejected"]
    assert [m["label"] for m in refits] == [
        "LightGBM v1 accepted",
        "LightGBM v2 rejected",
        "LightGBM v3 lost to the model in force",
    ]
    assert refits[0]["x"] == data["x"][1] + 300_000  # halfway between 200 and 300 labels
    rows = {r["member"]: r for r in data["summary"]["members"]}
    assert rows["ensemble"]["labels"] == 1_000 and rows["LightGBM"]["labels"] == 600
    assert rows["River"]["roc_auc_rolling_before"] == pytest.approx(sum(0.78 + i / 100 for i in range(4)) / 4)
    assert rows["River"]["roc_auc_rolling_after"] == pytest.approx(
        (sum(0.78 + i / 100 for i in range(4, 10)) + 0.87) / 7
    )
    assert dict(data["summary"]["run"])["dead letters"] == "3 (not_json 3)"


def test_drift_point_options():
    messages = run()
    assert drift_event(messages, "0.5") == 500  # half of what was scored plus what is still on the topic
    assert drift_event(messages[:3], 0.5) == 500
    assert drift_event(messages, "1200") == 1200
    assert drift_event(messages, "none") is None and drift_event(messages, None) is None


def test_model_versions_in_messages_mark_refits():
    messages = [message(i, model={"river": i, "lightgbm": None if i < 3 else 1 + i // 5}) for i in range(10)]
    labels = [m["label"] for m in chart_data(messages)["marks"]]
    assert labels == ["LightGBM v1", "LightGBM v2"]


def test_report_files_are_self_contained(tmp_path):
    paths = write_report(run(), tmp_path, drift_at="0.5", title="my run")
    html = paths["html"].read_text()
    assert "window.EDDY_DATA = {" in html and "<title>my run</title>" in html
    assert not re.search(r"""(src|href)=["']?https?:""", html)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 20_000
    summary = json.loads(paths["summary"].read_text())
    assert [r["member"] for r in summary["members"]] == ["ensemble", "River", "LightGBM"]


def test_cli_from_a_metrics_file(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in run()))
    assert read_metrics_file(metrics) == run()
    assert main(["--metrics-file", str(metrics), "--out", str(tmp_path / "r"), "--registry-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "11 metrics messages" in out and "ensemble" in out and (tmp_path / "r" / "report.png").exists()


def test_cli_errors(tmp_path, capsys):
    assert main(["--metrics-file", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["--metrics-file", str(empty), "--out", str(tmp_path / "r")]) == 1
    assert "no metrics messages" in capsys.readouterr().err
    assert main(["--bootstrap-servers", "127.0.0.1:1", "--topic", "metrics", "--out", str(tmp_path / "r")]) == 1
    assert "127.0.0.1:1" in capsys.readouterr().err


@pytest.mark.kafka
def test_reads_the_metrics_topic(make_topics, kafka_bootstrap):
    from tests.flowkit import publish

    topics = make_topics(partitions=1)
    publish(kafka_bootstrap, topics.metrics, [*run(), b"not json"])
    assert read_metrics_topic(kafka_bootstrap, topics.metrics) == run()
