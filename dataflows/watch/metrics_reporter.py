"""What the metrics topic carries: quality, volumes, dead letters by reason, throughput and lag."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from dataflows.flow.messages import Event, Metrics
from features.timestamps import iso
from models import OnlineLearner

ROC_AUC_METHOD = (
    "Mann-Whitney, ties count 1/2: exact over the rolling window; over the whole run from score bins, "
    "within roc_auc_max_error of exact"
)

LATENCY_SAMPLE = 10_000
"""The latency percentiles of a metrics message are over this many most recent events."""


class MetricsReporter:
    """Counts what the learner step sees and builds a metrics message every N events and every T seconds.

    Quality figures are the learner's own: ROC AUC over the last `rolling_window` labels exact, over the
    whole run within its stated `roc_auc_max_error` in bounded memory (River's is approximate, with no bound).
    Wall-clock figures (events/s, lag, latency) describe this run only; the rest is part of the recoverable state.
    """

    def __init__(self, every_events: int = 1_000, every_s: float = 10.0, run: str | None = None) -> None:
        self.every_events = every_events
        self.run = run  # the run id every message carries (`dataflows.flow.runs`)
        self.every_s = every_s
        self.events = 0
        self.labels = 0
        self.reports = 0
        self.dead_letters: Counter[str] = Counter()
        self.features_version = ""
        self.event_time: int | None = None
        self._since_report = 0
        self._last_at: float | None = None
        self._last_events = 0
        self._run_started: float | None = None
        self._run_events = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLE)

    def state(self) -> dict[str, Any]:
        """The counts, by name; the wall-clock figures describe this run only and start afresh on resume."""
        state = self.__dict__.copy()
        state["_last_at"] = None
        state["_run_started"] = None
        state["_run_events"] = 0
        state["_latencies"] = deque(maxlen=LATENCY_SAMPLE)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MetricsReporter:
        """The reporter `state` (from `state()`) describes."""
        reporter = cls.__new__(cls)
        reporter.__dict__.update(state)
        return reporter

    def __getstate__(self) -> dict[str, Any]:
        return self.state()

    def scored(self, event: Event, features_version: str, now: float) -> None:
        self.events += 1
        self._since_report += 1
        self._run_events += 1
        if self._run_started is None:
            self._run_started = now
        self.features_version = features_version
        if self.event_time is None or event.ts > self.event_time:
            self.event_time = event.ts
        if event.origin.kafka_ts_ms is not None:
            self._latencies.append(now * 1000 - event.origin.kafka_ts_ms)

    def dead_letter(self, reason: str) -> None:
        self.dead_letters[reason] += 1

    def due_by_count(self) -> bool:
        return self.every_events > 0 and self._since_report >= self.every_events

    def next_at(self, now: float) -> float:
        if self._last_at is None:
            self._last_at = now
        return self._last_at + self.every_s

    def report(self, learner: OnlineLearner, now: float, lag: dict[str, int] | None, final: bool) -> Metrics:
        elapsed = None if self._last_at is None else now - self._last_at
        rate = (self.events - self._last_events) / elapsed if elapsed else None
        run_s = None if self._run_started is None else now - self._run_started
        latencies = sorted(self._latencies)
        figures: dict[str, Any] = {
            "type": "final" if final else "metrics",
            "run": getattr(self, "run", None),  # a reporter pickled before runs had ids has none
            "at": iso(int(now * 1000)),
            "event_time": None if self.event_time is None else iso(self.event_time),
            "events": self.events,
            "labels_received": self.labels,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "dead_letters_total": sum(self.dead_letters.values()),
            "events_per_s": None if rate is None else round(rate, 1),
            "events_per_s_run": round(self._run_events / run_s, 1) if run_s else None,
            "latency_ms_p50": _percentile(latencies, 0.50),
            "latency_ms_p99": _percentile(latencies, 0.99),
            "consumer_lag": lag,
            "features_version": self.features_version,
            "roc_auc_method": ROC_AUC_METHOD,
            "model": _versions(learner),
            "refits": _refits(learner),
            **_quality_and_counters(learner.report()),
        }
        self.reports += 1
        self._since_report = 0
        self._last_at = now
        self._last_events = self.events
        return Metrics(figures)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


QUALITY_KEYS = (
    "roc_auc",
    "roc_auc_max_error",
    "roc_auc_rolling",
    "log_loss",
    "log_loss_rolling",
    "accuracy",
    "accuracy_rolling",
    "labels",
)


def _quality_and_counters(report: dict) -> dict:
    """The learner's report as `quality` (the published score, then each member) and `learner` counters."""
    members = report.get("members") or {}
    quality = {"score": {k: report.get(k) for k in QUALITY_KEYS}, **members}
    counters = {k: v for k, v in report.items() if k not in QUALITY_KEYS and k != "members"}
    return {"quality": quality, "learner": counters}


def _refits(learner: OnlineLearner) -> dict | None:
    """How the ensemble's refits fare (`Ensemble.health`): gate decisions, the latest refit, refits the flow
    fitted itself, registry write failures; None for a River model alone."""
    health = getattr(learner.model, "health", None)
    return health() if callable(health) else None


def _versions(learner: OnlineLearner) -> dict:
    """Each member's version now: River's is the labels it learned; LightGBM's the refit in force."""
    model = learner.model
    learned = learner.labels_learned
    if hasattr(model, "lightgbm_version"):
        return {"river": learned, "lightgbm": model.lightgbm_version}
    return {"river": learned}
