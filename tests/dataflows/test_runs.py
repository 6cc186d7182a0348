"""Runs sharing a model registry: each run's report and dashboard show its own refits, no other run's."""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import replace

import orjson
import pytest

from dataflows.flow.config import load_config
from dataflows.flow.runs import is_run_id, latest_run_dir, new_run_id, runs_of
from dataflows.flow.steps import ScoreAndLearn
from dataflows.tools import datasets
from dataflows.watch.dashboard import make_server
from dataflows.watch.report import main as report_main
from dataflows.watch.report import read_registry
from tests.flowkit import config_for, outputs, publish, run_flow

SMALL_ENSEMBLE = {"refit_every": 300, "window": 1000, "lag": 50, "background": "none"}


class _Feed:
    """What the dashboard's server reads: the metrics messages of one run, as its feed would hold them."""

    def __init__(self, messages: list[dict]):
        self.messages, self.topic, self.bootstrap_servers, self.error = messages, "metrics", "-", None

    def snapshot(self) -> list[dict]:
        return list(self.messages)


def _run(kafka_bootstrap, make_topics, registry, n: int) -> list[dict]:
    topics = make_topics(partitions=1)
    publish(kafka_bootstrap, topics.events, list(datasets.transactions(n, seed=5)))
    config = config_for(topics, kafka_bootstrap, metrics_every_events=200)
    run_flow(replace(config, ensemble={**SMALL_ENSEMBLE, "registry_dir": str(registry)}))
    return outputs(kafka_bootstrap, topics)[1]


@pytest.mark.kafka
def test_a_run_reports_its_own_refits_not_those_another_run_left_in_the_registry(
    kafka_bootstrap, make_topics, tmp_path
):
    registry = tmp_path / "registry"
    first = _run(kafka_bootstrap, make_topics, registry, 2_000)  # refits every 300 labels
    second = _run(kafka_bootstrap, make_topics, registry, 250)  # too few labels for a refit

    (first_run,), (second_run,) = runs_of(first), runs_of(second)
    assert first_run != second_run and all(m["run"] == first_run for m in first)
    assert len(read_registry(registry, [first_run])) >= 3
    assert read_registry(registry, [second_run]) == []

    # The report of the second run: no refits, where the shared directory holds the first run's.
    metrics_file = tmp_path / "second.jsonl"
    metrics_file.write_bytes(b"\n".join(orjson.dumps(m) for m in second))
    out = tmp_path / "report"
    assert report_main(["--metrics-file", str(metrics_file), "--out", str(out), "--registry-dir", str(registry)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert not [row for row in summary["run"] if row[0] == "LightGBM refits"], summary["run"]

    # The dashboard of each run, over the same registry directory.
    kept = read_registry(registry, [first_run])
    accepted = sum(1 for r in kept if r["accepted"])
    first_refits = [f"{len(kept)} kept in the registry: {accepted} accepted, {len(kept) - accepted} rejected"]
    for messages, expected in ((second, []), (first, first_refits)):
        server = make_server(_Feed(messages), "127.0.0.1", 0, "none", str(registry))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/api/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                data = json.loads(response.read())
        finally:
            server.shutdown()
            server.server_close()
        refits = [row[1] for row in data["summary"]["run"] if row[0] == "LightGBM refits"]
        assert refits == expected


def test_a_resumed_learner_keeps_its_run_and_registry_directory(tmp_path):
    config = load_config(env={})
    config = replace(config, ensemble={**SMALL_ENSEMBLE, "registry_dir": str(tmp_path / "registry")})
    (tmp_path / "state").mkdir()
    step = ScoreAndLearn(config, None, None, tmp_path / "state", "eddy")
    run = step.state.reporter.run
    assert is_run_id(run)
    assert step.state.learner.model.registry.directory == tmp_path / "registry" / run
    resumed = ScoreAndLearn(config, None, step.snapshot(), tmp_path / "state", "eddy")
    assert resumed.state.reporter.run == run
    assert resumed.state.learner.model.registry.directory == tmp_path / "registry" / run
    assert resumed.on_notify()[0][0].figures["run"] == run
    assert ScoreAndLearn(config, None, None).state.reporter.run != run


def test_run_ids_sort_by_start_and_the_newest_run_directory_is_found(tmp_path):
    from datetime import UTC, datetime

    older = new_run_id(datetime(2026, 12, 5, 10, 0, tzinfo=UTC))
    newer = new_run_id(datetime(2026, 12, 5, 11, 0, tzinfo=UTC))
    assert older.startswith("20261205T100000Z-") and older < newer
    assert latest_run_dir(tmp_path) is None
    for run in (newer, older, "not-a-run"):
        (tmp_path / run).mkdir()
    assert latest_run_dir(tmp_path) == tmp_path / newer
    assert runs_of([{"run": older}, {"run": None}, {}, {"run": older}, {"run": newer}, "x"]) == [older, newer]
