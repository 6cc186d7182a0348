"""Alert rules: each fires once when its figure crosses its threshold and clears once when it comes back;
the Prometheus rules file is valid YAML over metrics the exporter really serves."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from dataflows.flow.config import ConfigError, load_config
from dataflows.watch import prometheus
from dataflows.watch.alerts import RULES, AlertEvaluator, AlertSettings, prometheus_rules, rules_yaml
from tests.flowkit import REPO


def figures(
    events: int = 10_000,
    dead: int = 0,
    auc: float | None = 0.9,
    log_loss: float | None = 0.3,
    labels: int = 5_000,
    lag: dict | None = None,
    last: dict | None = None,
    write_error: str | None = None,
    write_failures: int = 0,
    refits: bool = True,
) -> dict:
    """A metrics message as `dataflows.watch.metrics_reporter.MetricsReporter` builds it (the parts the rules read)."""
    return {
        "type": "metrics",
        "events": events,
        "dead_letters_total": dead,
        "event_time": "2026-01-01T00:00:00.000Z",
        "consumer_lag": {"events": 0, "labels": 0} if lag is None else lag,
        "quality": {"score": {"roc_auc_rolling": auc, "log_loss_rolling": log_loss, "labels": labels}},
        "refits": {
            "accepted": 1,
            "rejected": 0,
            "last": last,
            "fitted_by_flow": {"timeout": 0, "worker_died": 0},
            "registry_write_failures": write_failures,
            "registry_write_error": write_error,
        }
        if refits
        else None,
    }


def transitions(evaluator: AlertEvaluator, reports: list[dict]) -> list[tuple[str, str]]:
    out = []
    for i, report in enumerate(reports):
        out.extend((m["rule"], m["state"]) for m in evaluator.evaluate(report, 1_700_000_000_000 + i))
    return out


CASES = {
    "roc_auc_rolling": [figures(auc=0.9), figures(auc=0.55), figures(auc=0.5), figures(auc=0.7), figures(auc=0.8)],
    "log_loss_rolling": [figures(log_loss=0.3), figures(log_loss=0.8), figures(log_loss=0.9), figures(log_loss=0.4)],
    "dead_letter_rate": [
        figures(events=1_000, dead=0),
        figures(events=1_900, dead=100),  # 100 of 1,000: 10 %
        figures(events=2_900, dead=150),  # 50 of 1,050: 4.8 %
    ],
    "consumer_lag": [
        figures(lag={"events": 10, "labels": 0}),
        figures(lag={"events": 90_000, "labels": 20_000}),
        figures(lag={"events": 5, "labels": 0}),
    ],
    "refit_rejected": [
        figures(last={"version": 1, "accepted": True, "rejected_by": None, "reason": "log_loss 0.3 <= 0.6"}),
        figures(last={"version": 2, "accepted": False, "rejected_by": "champion", "reason": "0.31 > 0.3 of the..."}),
        figures(last={"version": 3, "accepted": False, "rejected_by": "gate", "reason": "log_loss 0.7 > 0.6"}),
        figures(last={"version": 4, "accepted": False, "rejected_by": "fit", "reason": "fit failed: ..."}),
        figures(last={"version": 5, "accepted": True, "rejected_by": None, "reason": "log_loss 0.2 <= 0.6"}),
    ],
    "registry_write_failed": [
        figures(),
        figures(write_error="OSError: [Errno 28] No space left on device", write_failures=1),
        figures(write_error="OSError: [Errno 28] No space left on device", write_failures=2),
        figures(write_error=None, write_failures=2),
    ],
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_fires_once_and_clears_once(rule):
    evaluator = AlertEvaluator()
    assert transitions(evaluator, CASES[rule]) == [(rule, "firing"), (rule, "resolved")]
    assert evaluator.active == {}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_an_alert_message_says_what_fired_with_its_value_and_threshold(rule):
    evaluator = AlertEvaluator()
    messages = [m for i, r in enumerate(CASES[rule]) for m in evaluator.evaluate(r, 1_700_000_000_000 + i)]
    fired, resolved = messages
    assert fired["type"] == "alert" and fired["alert"] == RULES[rule].alert and fired["severity"]
    assert fired["summary"].startswith("FIRING: ") and resolved["summary"].startswith("resolved: ")
    assert resolved["fired_at"] == fired["at"]
    assert fired["value"] is not None and fired["events"] == CASES[rule][1]["events"]


def refit(version: int, rejected_by: str | None) -> dict:
    last = {"version": version, "accepted": rejected_by is None, "rejected_by": rejected_by, "reason": "..."}
    return figures(last=last)


def test_a_refit_that_loses_to_the_champion_is_healthy_and_never_fires_the_refit_alert():
    evaluator = AlertEvaluator()
    lost = [refit(v, "champion") for v in range(1, 6)]
    assert transitions(evaluator, [refit(0, None), *lost]) == []


def test_a_refit_that_passes_the_gate_clears_the_refit_alert_even_when_it_loses_to_the_champion():
    evaluator = AlertEvaluator()
    reports = [refit(1, "gate"), refit(2, "champion"), refit(3, "gate"), refit(4, None)]
    states = transitions(evaluator, reports)
    assert states == [("refit_rejected", s) for s in ("firing", "resolved", "firing", "resolved")]
    fired = evaluator.evaluate(refit(5, "gate"), 1_700_000_000_100)[0]
    assert fired["summary"].startswith("FIRING: refit v5 failed the quality gate")


@given(st.lists(st.sampled_from([None, "champion", "gate", "fit"]), max_size=30))
def test_the_refit_alert_follows_whether_the_latest_refit_failed(verdicts):
    """Whatever the sequence of verdicts, the refit alert is firing exactly when the latest refit failed."""
    evaluator = AlertEvaluator()
    for version, rejected_by in enumerate(verdicts, 1):
        evaluator.evaluate(refit(version, rejected_by), 1_700_000_000_000 + version)
        assert ("refit_rejected" in evaluator.active) == (rejected_by in ("gate", "fit"))


def test_a_rejected_refit_that_does_not_say_why_counts_as_failed():
    evaluator = AlertEvaluator()
    older = figures(last={"version": 1, "accepted": False, "reason": "log_loss 0.7 > 0.6"})
    assert transitions(evaluator, [older]) == [("refit_rejected", "firing")]


def test_quality_rules_wait_for_enough_labels_and_ignore_undefined_figures():
    evaluator = AlertEvaluator(AlertSettings(min_labels=1_000))
    reports = [figures(auc=0.3, labels=999), figures(auc=float("nan")), figures(auc=None), figures(auc=0.3)]
    assert transitions(evaluator, reports) == [("roc_auc_rolling", "firing")]


def test_the_dead_letter_rate_is_judged_over_enough_messages_only():
    """A burst of a few dead letters in a short span (the final report) does not fire it alone."""
    evaluator = AlertEvaluator(AlertSettings(dead_letter_min_messages=100))
    reports = [figures(events=1_000, dead=0), figures(events=1_010, dead=5), figures(events=1_100, dead=5)]
    assert transitions(evaluator, reports) == []
    reports = [figures(events=1_150, dead=60)]  # since 1,000/0: 60 of 210
    assert transitions(evaluator, reports) == [("dead_letter_rate", "firing")]


def test_rules_turned_off_or_alerts_disabled_never_fire():
    off = AlertSettings.from_table(
        {
            "roc_auc_rolling_below": False,
            "log_loss_rolling_above": False,
            "dead_letter_rate_above": False,
            "consumer_lag_above": False,
            "refit_rejected": False,
            "registry_write_failed": False,
        }
    )
    disabled = AlertSettings.from_table({"enabled": False})
    for settings in (off, disabled):
        evaluator = AlertEvaluator(settings)
        for rule in RULES:
            assert transitions(evaluator, CASES[rule]) == []
    assert prometheus_rules(disabled) == [] and prometheus_rules(off) == []


def test_firing_alerts_survive_the_snapshot_so_a_resumed_flow_publishes_the_clear():
    evaluator = AlertEvaluator()
    assert transitions(evaluator, CASES["consumer_lag"][:2]) == [("consumer_lag", "firing")]
    resumed = pickle.loads(pickle.dumps(evaluator))
    assert transitions(resumed, CASES["consumer_lag"][2:]) == [("consumer_lag", "resolved")]


@given(st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=1, max_size=60))
def test_fires_and_clears_alternate_and_the_active_set_follows_the_last_verdict(aucs):
    evaluator = AlertEvaluator()
    states = [s for rule, s in transitions(evaluator, [figures(auc=a) for a in aucs]) if rule == "roc_auc_rolling"]
    assert states == ["firing", "resolved"] * (len(states) // 2) + ["firing"] * (len(states) % 2)
    assert ("roc_auc_rolling" in evaluator.active) == (aucs[-1] < 0.6)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"roc_auc_below": 0.6}, "unknown [alerts] key"),
        ({"consumer_lag_above": "lots"}, "consumer_lag_above must be a number"),
        ({"consumer_lag_above": -1}, "consumer_lag_above must be a number >= 0"),
        ({"refit_rejected": "yes"}, "refit_rejected must be true or false"),
        ({"min_labels": 0}, "min_labels must be a whole number >= 1"),
    ],
)
def test_a_wrong_alerts_table_fails_with_the_key_and_the_fix(tmp_path, table, words):
    path = tmp_path / "eddy.toml"
    key, value = next(iter(table.items()))
    path.write_text(f"[alerts]\n{key} = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(path, env={})


def test_the_repository_config_holds_the_default_rules_and_the_alerts_topic():
    config = load_config(env={})
    assert config.alerts == AlertSettings()
    assert config.topics.alerts == "alerts"
    assert load_config(env={"EDDY_ALERTS_TOPIC": "my-alerts"}).topics.alerts == "my-alerts"


def exported_metric_names() -> set[str]:
    registry = CollectorRegistry()
    prometheus._define(registry)
    return {metric.name for metric in registry.collect()}


def test_the_prometheus_rules_file_is_valid_yaml_over_metrics_the_exporter_serves():
    out = subprocess.run(
        [sys.executable, "-m", "dataflows.watch.alerts", "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "EDDY_CONFIG": str(REPO / "eddy.toml")},
    ).stdout
    document = yaml.safe_load(out)
    (group,) = document["groups"]
    rules = group["rules"]
    assert {rule["alert"] for rule in rules} == {rule.alert for rule in RULES.values()}
    exported = exported_metric_names()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        names = set(re.findall(r"\beddy_[a-z_]+\b", rule["expr"]))
        assert names, rule
        assert names <= exported, f"{rule['alert']} uses metrics the exporter does not serve: {names - exported}"
        assert rule["expr"].count("(") == rule["expr"].count(")")
    assert yaml.safe_load(rules_yaml(AlertSettings(enabled=False))) == {"groups": [{"name": "eddy", "rules": []}]}


def test_the_exporter_serves_the_alert_and_refit_health_gauges():
    registry = CollectorRegistry()
    exporter = prometheus.PrometheusExporter.__new__(prometheus.PrometheusExporter)
    exporter.enabled, exporter._metrics = True, prometheus._define(registry)
    last = {"version": 2, "accepted": False, "rejected_by": "gate", "reason": "x"}
    report = figures(last=last, write_error="OSError: full", write_failures=3)
    exporter.observe_metrics({**report, "alerts_firing": ["registry_write_failed"]})
    value = registry.get_sample_value
    assert value("eddy_refit_last_accepted") == 0 and value("eddy_refit_last_failed") == 1
    assert value("eddy_registry_write_failing") == 1 and value("eddy_registry_write_failures") == 3
    assert value("eddy_alert_firing", {"rule": "registry_write_failed"}) == 1
    assert value("eddy_alert_firing", {"rule": "consumer_lag"}) == 0
    assert value("eddy_refits_fitted_by_flow", {"reason": "worker_died"}) == 0
    exporter.observe_metrics(figures(last={**last, "version": 3, "rejected_by": "champion"}))
    assert value("eddy_refit_last_accepted") == 0 and value("eddy_refit_last_failed") == 0
    exporter.observe_metrics(figures(last={**last, "version": 4, "accepted": True, "rejected_by": None}))
    assert value("eddy_refit_last_accepted") == 1 and value("eddy_refit_last_failed") == 0
    (rule,) = [r for r in prometheus_rules() if r["alert"] == RULES["refit_rejected"].alert]
    assert rule["expr"] == "eddy_refit_last_failed == 1"


def test_the_command_has_help_and_lists_the_rules():
    help_text = subprocess.run(
        [sys.executable, "-m", "dataflows.watch.alerts", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "rules" in help_text and "list" in help_text
    listed = subprocess.run(
        [sys.executable, "-m", "dataflows.watch.alerts", "list"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for rule in RULES:
        assert rule in listed


@pytest.mark.kafka
def test_the_flow_publishes_alerts_that_fire_and_clear_and_keeps_scoring(kafka_bootstrap, make_topics, tmp_path):
    """A burst of broken messages fires the dead-letter rate, which clears once good events follow; a registry
    that cannot be written (its parent is a regular file) fires its alert, which stays: nothing is written."""
    from dataclasses import replace

    import orjson

    from dataflows.tools import datasets
    from tests.flowkit import config_for, outputs, publish, run_flow
    from tests.kafka_io import read_topic

    topics = make_topics(partitions=1)
    events = list(datasets.transactions(3_000, seed=5))
    broken = [b"not json %d" % i for i in range(300)]
    publish(kafka_bootstrap, topics.events, [*events[:1_000], *broken, *events[1_000:]])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    config = config_for(topics, kafka_bootstrap, metrics_every_events=100)
    ensemble = {"refit_every": 500, "window": 2_000, "lag": 100, "background": "none"}
    config = replace(config, ensemble={**ensemble, "registry_dir": str(blocker / "registry")})

    run_flow(config)

    predictions, metrics, dead = outputs(kafka_bootstrap, topics)
    assert len({p["event_id"] for p in predictions}) == len(events)
    assert len(dead) == len(broken)
    alerts = [orjson.loads(r.value) for r in read_topic(kafka_bootstrap, topics.alerts, timeout_s=10)]
    states = {rule: [a["state"] for a in alerts if a["rule"] == rule] for rule in RULES}
    assert states["dead_letter_rate"] == ["firing", "resolved"]
    assert states["registry_write_failed"] == ["firing"]
    fired = next(a for a in alerts if a["rule"] == "dead_letter_rate")
    assert fired["value"] > 0.05 and fired["threshold"] == 0.05 and "dead-letter rate" in fired["summary"]
    final = metrics[-1]
    assert final["type"] == "final"
    assert final["refits"]["registry_write_failures"] == final["refits"]["accepted"] + final["refits"]["rejected"] > 0
    assert "registry_write_failed" in final["alerts_firing"]
    assert "dead_letter_rate" not in final["alerts_firing"]
    # The refit alert follows the latest refit's failure, never its loss to the model in force.
    reports = [m for m in metrics if (m.get("refits") or {}).get("last")]
    seen = {r["refits"]["last"]["rejected_by"] for r in reports}
    assert {"gate", "champion"} <= seen, f"this seeded stream holds both a failed refit and a lost one: {seen}"
    for report in reports:
        last = report["refits"]["last"]
        assert last["rejected_by"] in {None, "champion", "gate", "fit"} and last["accepted"] == (
            not last["rejected_by"]
        )
        assert ("refit_rejected" in report["alerts_firing"]) == (last["rejected_by"] in {"gate", "fit"}), last
    for alert in (a for a in alerts if a["rule"] == "refit_rejected"):
        verdict = next(r["refits"]["last"] for r in reports if r["refits"]["last"]["version"] == alert["value"])
        assert (alert["state"] == "firing") == (verdict["rejected_by"] in {"gate", "fit"})
