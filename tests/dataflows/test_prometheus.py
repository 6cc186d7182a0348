"""The Prometheus exporter, scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dataflows.watch.prometheus import PrometheusExporter, follow, main

FIGURES = {
    "type": "metrics",
    "event_time": "2026-01-01T00:16:53.535+00:00",
    "events": 1000,
    "labels_received": 40,
    "dead_letters": {"not_json": 2, "late": 1},
    "dead_letters_total": 3,
    "events_per_s": 9055.2,
    "events_per_s_run": 7131.6,
    "latency_ms_p50": 5401.7,
    "latency_ms_p99": 5514.9,
    "consumer_lag": {"events": 19000, "labels": 7},
    "features_version": "9a6204a7167b",
    "quality": {
        "score": {"roc_auc": 0.9, "roc_auc_rolling": 0.95, "log_loss": 0.07, "log_loss_rolling": 0.05, "labels": 1000},
        "river": {"roc_auc": 0.89, "roc_auc_rolling": 0.9, "log_loss": 0.08, "log_loss_rolling": 0.06, "labels": 1000},
        "lightgbm": {
            "roc_auc": None,
            "roc_auc_rolling": 0.97,
            "log_loss": 0.1,
            "log_loss_rolling": 0.04,
            "labels": 300,
        },
    },
    "learner": {"events_scored": 1000},
    "model": {"river": 1000, "lightgbm": 2},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(exporter: PrometheusExporter) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(exporter.url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def exporter() -> PrometheusExporter:
    return PrometheusExporter(free_port(), addr="127.0.0.1")


def test_metrics_message_becomes_gauges(exporter):
    exporter.observe_metrics(FIGURES)
    got = scrape(exporter)
    assert got[("eddy_events", ())] == 1000
    assert got[("eddy_labels_received", ())] == 40
    assert got[("eddy_dead_letters", (("reason", "not_json"),))] == 2
    assert got[("eddy_dead_letters", (("reason", "late"),))] == 1
    assert got[("eddy_consumer_lag", (("topic", "events"),))] == 19000
    assert got[("eddy_events_per_second", ())] == 9055.2
    assert got[("eddy_latency_seconds", (("quantile", "0.99"),))] == pytest.approx(5.5149)
    assert got[("eddy_roc_auc_rolling", (("member", "ensemble"),))] == 0.95
    assert got[("eddy_roc_auc_rolling", (("member", "lightgbm"),))] == 0.97
    assert got[("eddy_log_loss_rolling", (("member", "river"),))] == 0.06
    assert ("eddy_roc_auc", (("member", "lightgbm"),)) not in got  # None: not set, not zero
    assert got[("eddy_model_version", (("member", "lightgbm"),))] == 2
    assert got[("eddy_features_version", (("version", "9a6204a7167b"),))] == 1
    assert got[("eddy_event_time_seconds", ())] == pytest.approx(1767226613.535)


def test_batch_histograms_and_refits(exporter, tmp_path):
    for seconds, size in [(0.002, 1000), (0.02, 1000), (0.3, 10)]:
        exporter.observe_batch("score_and_learn", seconds, size)
    exporter.observe_refit({"version": 1, "accepted": True, "metrics": {"auc": 0.99, "log_loss": 0.02}}, 0.8)
    exporter.observe_refit({"version": 1, "accepted": True}, 0.8)  # the same refit again: counted once
    (tmp_path / "v000002.json").write_text(json.dumps({"version": 2, "accepted": False, "metrics": {"auc": 0.5}}))
    (tmp_path / "v000002.txt").write_text("model text")
    assert exporter.scan_registry(tmp_path) == 1 and exporter.scan_registry(tmp_path) == 0
    got = scrape(exporter)
    step = (("step", "score_and_learn"),)
    assert got[("eddy_batch_seconds_count", step)] == 3
    assert got[("eddy_batch_seconds_bucket", (("le", "0.025"), *step))] == 2
    assert got[("eddy_batch_size_sum", step)] == 2010
    assert got[("eddy_refits_total", (("decision", "accepted"),))] == 1
    assert got[("eddy_refits_total", (("decision", "rejected"),))] == 1
    assert got[("eddy_refit_seconds_count", ())] == 1
    assert got[("eddy_refit_holdout", (("metric", "auc"),))] == 0.5
    assert got[("eddy_model_version", (("member", "lightgbm"),))] == 1
    assert got[("eddy_refit_version", (("decision", "rejected"),))] == 2


def test_one_server_per_port_and_off_by_default(exporter):
    again = PrometheusExporter(exporter.port, addr="127.0.0.1")
    again.observe_metrics({"events": 7})
    assert scrape(exporter)[("eddy_events", ())] == 7
    for off in (PrometheusExporter(0), PrometheusExporter(None)):
        assert not off.enabled and off.url is None
        off.observe_metrics(FIGURES)
        off.observe_batch("x", 1.0, 1)
        off.observe_refit({"version": 1, "accepted": True})


@pytest.mark.kafka
def test_follows_the_metrics_topic(exporter, make_topics, kafka_bootstrap):
    from tests.flowkit import publish

    topics = make_topics(partitions=1)
    publish(kafka_bootstrap, topics.metrics, [{**FIGURES, "events": 10}, {**FIGURES, "events": 20}])
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(exporter, kafka_bootstrap, topics.metrics, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while scrape(exporter).get(("eddy_events", ())) != 20:
            assert time.monotonic() < deadline, "the exporter never showed the latest metrics message"
            time.sleep(0.2)
        publish(kafka_bootstrap, topics.metrics, [{**FIGURES, "events": 30}])
        while scrape(exporter).get(("eddy_events", ())) != 30:
            assert time.monotonic() < deadline, "the exporter did not follow a new metrics message"
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=5)


def test_cli(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--port" in capsys.readouterr().out
    assert main(["--bootstrap-servers", "127.0.0.1:1", "--port", str(free_port())]) == 1
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_the_exporter_follows_the_newest_runs_refits(exporter, tmp_path):
    import time

    from dataflows.flow.runs import new_run_id

    def refit(run: str, version: int, accepted: bool) -> None:
        (tmp_path / run).mkdir(exist_ok=True)
        (tmp_path / run / f"v{version:06d}.json").write_text(json.dumps({"version": version, "accepted": accepted}))

    old, new = sorted(new_run_id() for _ in range(2))
    refit(old, 1, False)
    refit(old, 2, False)
    refit(new, 1, True)
    exporter.watch_registry(tmp_path, interval_s=0.05, follow_runs=True)
    deadline = time.monotonic() + 30
    while scrape(exporter).get(("eddy_refits_total", (("decision", "accepted"),))) != 1:
        assert time.monotonic() < deadline, "the newest run's refit was not reported"
        time.sleep(0.05)
    # The older run's refits are not the newest run's: never reported.
    assert ("eddy_refits_total", (("decision", "rejected"),)) not in scrape(exporter)
