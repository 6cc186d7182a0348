"""Alert rules over the figures the flow already computes, published when they fire and when they clear.

The rules (`[alerts]` in eddy.toml; a threshold set to `false` turns its rule off):

- `roc_auc_rolling_below`: the published score's rolling ROC AUC is below this (once `min_labels` are in);
- `log_loss_rolling_above`: its rolling log loss is above this (once `min_labels` are in);
- `dead_letter_rate_above`: the share of messages dead-lettered, over at least `dead_letter_min_messages`
  messages since the rule last judged, is above this;
- `consumer_lag_above`: the messages behind the end of the input topics, summed, are more than this;
- `refit_rejected`: the latest LightGBM refit failed: its fit failed or it did not pass the quality bar
  (threshold or base rate) on its holdout. A refit that passed the bar and lost to the model in force is
  healthy and does not fire it; the next refit that passes the bar clears it, accepted or not;
- `registry_write_failed`: the latest write to the model registry failed (clears at a successful one).

The learner step judges every rule at every metrics report (`AlertEvaluator`, part of its recoverable
state) and publishes an alert message on the alerts topic when a rule fires and when it clears. The same
rules, as Prometheus alerting rules over the metrics `dataflows.watch.prometheus` exports, for Alertmanager:

    python -m dataflows.watch.alerts rules > eddy-alerts.yml
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, fields
from typing import Any

from dataflows.flow.config import ConfigError
from features.timestamps import iso

THRESHOLDS = {
    "roc_auc_rolling_below": float,
    "log_loss_rolling_above": float,
    "dead_letter_rate_above": float,
    "consumer_lag_above": int,
}
SWITCHES = ("enabled", "refit_rejected", "registry_write_failed")
COUNTS = ("min_labels", "dead_letter_min_messages")


@dataclass(frozen=True)
class AlertSettings:
    """`[alerts]` in eddy.toml. The quality defaults flag a model no better than a coin (log loss of a constant
    0.5 is ln 2 = 0.693) or close to it; the lag default is a few minutes of a busy stream."""

    enabled: bool = True
    roc_auc_rolling_below: float | None = 0.6
    log_loss_rolling_above: float | None = 0.69
    min_labels: int = 1_000
    dead_letter_rate_above: float | None = 0.05
    dead_letter_min_messages: int = 100
    consumer_lag_above: int | None = 100_000
    refit_rejected: bool = True
    registry_write_failed: bool = True

    @classmethod
    def from_table(cls, table: dict, source: str = "eddy.toml") -> AlertSettings:
        """The settings of an `[alerts]` table, or a `ConfigError` that says which key is wrong and why."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown [alerts] key(s) {unknown}; known: {known}")
        values: dict[str, Any] = {}
        for name, value in table.items():
            if name in SWITCHES:
                if not isinstance(value, bool):
                    raise ConfigError(f"{source}: [alerts] {name} must be true or false, got {value!r}")
            elif name in COUNTS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"{source}: [alerts] {name} must be a whole number >= 1, got {value!r}")
            elif value is False:
                value = None  # a threshold set to false turns its rule off
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(
                    f"{source}: [alerts] {name} must be a number >= 0 (or false to turn the rule off), got {value!r}"
                )
            else:
                value = THRESHOLDS[name](value)
            values[name] = value
        return cls(**values)


@dataclass(frozen=True)
class Rule:
    name: str
    alert: str
    """Its name in Prometheus (CamelCase, as Alertmanager users expect)."""
    severity: str
    description: str


RULES = {
    rule.name: rule
    for rule in (
        Rule("roc_auc_rolling", "EddyRocAucRollingLow", "warning", "the score's rolling ROC AUC is low"),
        Rule("log_loss_rolling", "EddyLogLossRollingHigh", "warning", "the score's rolling log loss is high"),
        Rule("dead_letter_rate", "EddyDeadLetterRateHigh", "warning", "many input messages are dead-lettered"),
        Rule("consumer_lag", "EddyConsumerLagHigh", "warning", "the flow is far behind its input topics"),
        Rule("refit_rejected", "EddyRefitRejected", "info", "the latest LightGBM refit failed the quality gate"),
        Rule("registry_write_failed", "EddyRegistryWriteFailed", "critical", "the model registry cannot be written"),
    )
}


@dataclass(frozen=True)
class Reading:
    """One rule's verdict on one metrics report: `breached` None means no verdict (too little data yet)."""

    breached: bool | None
    value: float | int | None = None
    threshold: float | int | None = None
    detail: str = ""


class AlertEvaluator:
    """Which rules are firing, judged at every metrics report; plain data, so it lives in the recoverable state
    (a resumed flow still knows what fired, and publishes the clear)."""

    def __init__(self, settings: AlertSettings | None = None):
        self.settings = settings or AlertSettings()
        self.active: dict[str, dict[str, Any]] = {}
        self._since: tuple[int, int] | None = None
        """(events, dead letters) where the dead-letter rate's current span starts."""

    def state(self) -> dict[str, Any]:
        """What fired and where the dead-letter rate's span starts; the rules are configuration, not state."""
        return {"active": self.active, "since": self._since}

    @classmethod
    def from_state(cls, state: dict[str, Any], settings: AlertSettings | None = None) -> AlertEvaluator:
        """The evaluator `state` (from `state()`) describes, judging by `settings` (the configuration's now)."""
        evaluator = cls(settings)
        evaluator.active = dict(state["active"])
        evaluator._since = state["since"]
        return evaluator

    def evaluate(self, figures: dict[str, Any], now_ms: int) -> list[dict[str, Any]]:
        """The alert messages this metrics report gives rise to: a `firing` one for each rule that starts
        breaching, a `resolved` one for each firing rule that stops."""
        if not self.settings.enabled:
            return []
        out = []
        for name, reading in self.readings(figures).items():
            if reading.breached is None:
                continue
            if reading.breached and name not in self.active:
                message = self._message(name, "firing", reading, figures, now_ms)
                self.active[name] = message
                out.append(message)
            elif not reading.breached and name in self.active:
                fired = self.active.pop(name)
                out.append({**self._message(name, "resolved", reading, figures, now_ms), "fired_at": fired["at"]})
        return out

    def readings(self, figures: dict[str, Any]) -> dict[str, Reading]:
        """Each enabled rule's verdict on `figures` (a metrics message)."""
        s = self.settings
        score = (figures.get("quality") or {}).get("score") or {}
        labels = score.get("labels") or 0
        refits = figures.get("refits")
        out: dict[str, Reading] = {}
        if s.roc_auc_rolling_below is not None:
            out["roc_auc_rolling"] = _quality(
                score.get("roc_auc_rolling"), labels, s.min_labels, s.roc_auc_rolling_below, below=True
            )
        if s.log_loss_rolling_above is not None:
            out["log_loss_rolling"] = _quality(
                score.get("log_loss_rolling"), labels, s.min_labels, s.log_loss_rolling_above, below=False
            )
        if s.dead_letter_rate_above is not None:
            out["dead_letter_rate"] = self._dead_letter_rate(figures)
        if s.consumer_lag_above is not None:
            lag = figures.get("consumer_lag")
            if isinstance(lag, dict) and lag:
                total = sum(v for v in lag.values() if isinstance(v, int | float))
                detail = ", ".join(f"{topic} {behind}" for topic, behind in sorted(lag.items()))
                out["consumer_lag"] = Reading(total > s.consumer_lag_above, total, s.consumer_lag_above, detail)
            else:
                out["consumer_lag"] = Reading(None)
        if s.refit_rejected:
            last = (refits or {}).get("last")
            if last:
                out["refit_rejected"] = Reading(refit_failed(last), last["version"], None, str(last["reason"]))
            else:
                out["refit_rejected"] = Reading(None)
        if s.registry_write_failed:
            if refits is None:
                out["registry_write_failed"] = Reading(None)
            else:
                error = refits.get("registry_write_error")
                failures = refits.get("registry_write_failures", 0)
                out["registry_write_failed"] = Reading(error is not None, failures, 0, error or "")
        return out

    def _dead_letter_rate(self, figures: dict[str, Any]) -> Reading:
        """Judged over spans of at least `dead_letter_min_messages` messages, so that the few messages between
        two reports close together (the final one) cannot fire it alone."""
        s = self.settings
        events, dead = figures.get("events") or 0, figures.get("dead_letters_total") or 0
        if self._since is None or events < self._since[0] or dead < self._since[1]:
            self._since = (0, 0)
        new_events, new_dead = events - self._since[0], dead - self._since[1]
        seen = new_events + new_dead
        if seen < s.dead_letter_min_messages:
            return Reading(None)
        self._since = (events, dead)
        rate = new_dead / seen
        detail = f"{new_dead} of the last {seen} messages"
        return Reading(rate > s.dead_letter_rate_above, round(rate, 6), s.dead_letter_rate_above, detail)

    def _message(self, name: str, state: str, reading: Reading, figures: dict[str, Any], now_ms: int) -> dict[str, Any]:
        rule = RULES[name]
        return {
            "type": "alert",
            "rule": name,
            "alert": rule.alert,
            "state": state,
            "severity": rule.severity,
            "summary": _summary(name, state, reading),
            "value": reading.value,
            "threshold": reading.threshold,
            "at": iso(now_ms),
            "event_time": figures.get("event_time"),
            "events": figures.get("events"),
        }


def refit_failed(record: dict[str, Any]) -> bool:
    """Whether a refit (a registry record) failed rather than merely lost to the model in force: a record
    without `rejected_by` that was rejected counts as failed, so that nothing unknown passes silently."""
    return not record.get("accepted") and record.get("rejected_by") != "champion"


def _quality(value: Any, labels: int, min_labels: int, threshold: float, below: bool) -> Reading:
    if not isinstance(value, int | float) or math.isnan(value) or labels < min_labels:
        return Reading(None)
    return Reading(value < threshold if below else value > threshold, round(value, 6), threshold, f"{labels} labels")


def _summary(name: str, state: str, r: Reading) -> str:
    if name == "roc_auc_rolling":
        text = f"rolling ROC AUC {r.value:.4f} (alert below {r.threshold}; {r.detail})"
    elif name == "log_loss_rolling":
        text = f"rolling log loss {r.value:.4f} (alert above {r.threshold}; {r.detail})"
    elif name == "dead_letter_rate":
        text = f"dead-letter rate {r.value:.2%}: {r.detail} (alert above {r.threshold:.2%})"
    elif name == "consumer_lag":
        text = f"{r.value} messages behind the input topics ({r.detail}; alert above {r.threshold})"
    elif name == "refit_rejected":
        text = f"refit v{r.value} {'failed' if r.breached else 'passed'} the quality gate: {r.detail}"
    else:
        text = (
            f"model registry write failed ({r.value} failed so far): {r.detail}"
            if r.breached
            else f"model registry written again ({r.value} writes failed before)"
        )
    return f"{'FIRING' if state == 'firing' else 'resolved'}: {text}"


def alert_view(messages: list[dict[str, Any]], recent: int = 20) -> dict[str, list[dict[str, Any]]]:
    """What the alerts topic says now: the alerts firing (each rule's latest message, if it is a firing one),
    and the `recent` latest messages, newest first."""
    latest: dict[str, dict[str, Any]] = {}
    alerts = [m for m in messages if m.get("type") == "alert" and isinstance(m.get("rule"), str)]
    for message in alerts:
        latest[message["rule"]] = message
    active = [m for m in latest.values() if m.get("state") == "firing"]
    return {"active": sorted(active, key=lambda m: str(m.get("at"))), "recent": alerts[-recent:][::-1]}


# --- the same rules for Prometheus and Alertmanager ---

PROMETHEUS_FOR = {"roc_auc_rolling": "5m", "log_loss_rolling": "5m", "dead_letter_rate": "2m", "consumer_lag": "5m"}
"""How long a rule must hold in Prometheus before it fires: the flow judges reports, Prometheus scrapes."""


def prometheus_rules(settings: AlertSettings | None = None) -> list[dict[str, Any]]:
    """The enabled rules as Prometheus alerting rules over the metrics `dataflows.watch.prometheus` exports."""
    s = settings or AlertSettings()
    if not s.enabled:
        return []
    enough = f'on() eddy_member_labels{{member="ensemble"}} >= {s.min_labels}'
    exprs: dict[str, str] = {}
    if s.roc_auc_rolling_below is not None:
        exprs["roc_auc_rolling"] = f'eddy_roc_auc_rolling{{member="ensemble"}} < {s.roc_auc_rolling_below} and {enough}'
    if s.log_loss_rolling_above is not None:
        exprs["log_loss_rolling"] = (
            f'eddy_log_loss_rolling{{member="ensemble"}} > {s.log_loss_rolling_above} and {enough}'
        )
    if s.dead_letter_rate_above is not None:
        exprs["dead_letter_rate"] = (
            "delta(eddy_dead_letters_all[5m]) / clamp_min(delta(eddy_dead_letters_all[5m]) + delta(eddy_events[5m]), "
            f"{s.dead_letter_min_messages}) > {s.dead_letter_rate_above}"
        )
    if s.consumer_lag_above is not None:
        exprs["consumer_lag"] = f"sum(eddy_consumer_lag) > {s.consumer_lag_above}"
    if s.refit_rejected:
        exprs["refit_rejected"] = "eddy_refit_last_failed == 1"
    if s.registry_write_failed:
        exprs["registry_write_failed"] = "eddy_registry_write_failing == 1"
    rules = []
    for name, expr in exprs.items():
        rule = RULES[name]
        entry: dict[str, Any] = {"alert": rule.alert, "expr": expr}
        if name in PROMETHEUS_FOR:
            entry["for"] = PROMETHEUS_FOR[name]
        entry["labels"] = {"severity": rule.severity, "rule": name}
        entry["annotations"] = {"summary": f"eddy: {rule.description}"}
        rules.append(entry)
    return rules


def rules_yaml(settings: AlertSettings | None = None, source: str = "eddy.toml") -> str:
    """A Prometheus rule file (`rule_files:` in prometheus.yml). Every string is written double-quoted, as JSON
    writes it, which YAML reads as the same string."""
    rules = prometheus_rules(settings)
    lines = [
        f"# eddy's alert rules, from {source} [alerts] (python -m dataflows.watch.alerts rules).",
        "# Over the metrics of eddy's Prometheus exporter"
        " ([flow] prometheus_port, python -m dataflows.watch.prometheus).",
        "groups:",
        '  - name: "eddy"',
        "    rules:" if rules else "    rules: []",
    ]
    for rule in rules:
        lines.append(f"      - alert: {json.dumps(rule['alert'])}")
        lines.append(f"        expr: {json.dumps(rule['expr'])}")
        if "for" in rule:
            lines.append(f"        for: {json.dumps(rule['for'])}")
        for section in ("labels", "annotations"):
            lines.append(f"        {section}:")
            lines.extend(f"          {key}: {json.dumps(value)}" for key, value in rule[section].items())
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from dataflows.flow.config import load_config

    parser = argparse.ArgumentParser(
        prog="python -m dataflows.watch.alerts",
        description="eddy's alert rules ([alerts] in eddy.toml): list them, or write them as Prometheus rules.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "rules",
        help="print the rules as a Prometheus alerting-rules file (python -m dataflows.watch.alerts rules > x.yml)",
    )
    commands.add_parser("list", help="print each rule, its threshold and whether it is on")
    args = parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    settings = config.alerts or AlertSettings()
    if args.command == "rules":
        sys.stdout.write(rules_yaml(settings, config.source))
        return 0
    on = "on" if settings.enabled else "off (enabled = false)"
    print(f"alerts {on}; published on topic '{config.topics.alerts}'")
    for name, rule in RULES.items():
        value = {
            "roc_auc_rolling": settings.roc_auc_rolling_below,
            "log_loss_rolling": settings.log_loss_rolling_above,
            "dead_letter_rate": settings.dead_letter_rate_above,
            "consumer_lag": settings.consumer_lag_above,
            "refit_rejected": settings.refit_rejected or None,
            "registry_write_failed": settings.registry_write_failed or None,
        }[name]
        state = "off" if value is None else ("on" if value is True else f"threshold {value}")
        print(f"{name:<22} {rule.severity:<9} {state:<18} {rule.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
