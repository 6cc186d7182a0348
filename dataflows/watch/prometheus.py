"""Prometheus metrics for eddy: `/metrics` on a configurable port.

Two ways to use it:

- in the flow: `PrometheusExporter(port)` once per process, then `observe_metrics(figures)` for every
  metrics message, `observe_batch(step, seconds, size)` for every batch a step handles and
  `observe_refit(record, seconds)` for every LightGBM refit;
- beside any running flow: `python -m dataflows.watch.prometheus --port 9108` follows the metrics topic and the
  model registry directory and exports what they carry (everything except batch latencies).

Port 0 or None turns the exporter off: every method is then a cheap no-op.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from dataflows.broker.security import KafkaSecurity
from dataflows.flow.logs import configure_logging
from dataflows.flow.runs import latest_run_dir
from dataflows.watch.alerts import RULES as ALERT_RULES
from dataflows.watch.alerts import refit_failed

log = logging.getLogger("eddy.prometheus")

QUALITY = ("roc_auc_rolling", "log_loss_rolling", "roc_auc", "log_loss", "accuracy_rolling")
BATCH_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000)
REFIT_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

_servers: dict[tuple[str, int], tuple[Any, CollectorRegistry]] = {}
_servers_lock = threading.Lock()


class PrometheusExporter:
    """eddy's Prometheus metrics, served on `port` (started once per process and port)."""

    def __init__(self, port: int | None = None, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None):
        self.port = port
        self.addr = addr
        self.enabled = bool(port)
        self.refits_seen: set[int] = set()
        if not self.enabled:
            return
        with _servers_lock:
            key = (addr, int(port))
            if key in _servers:  # one server per process and port: later exporters share its registry
                self.server, self.registry = _servers[key]
                self._metrics = self.registry._eddy_metrics  # type: ignore[attr-defined]
                return
            self.registry = registry or CollectorRegistry()
            self._metrics = _define(self.registry)
            self.registry._eddy_metrics = self._metrics  # type: ignore[attr-defined]
            self.server, _thread = start_http_server(int(port), addr=addr, registry=self.registry)
            _servers[key] = (self.server, self.registry)
        log.info("Prometheus metrics on http://%s:%d/metrics", addr, port)

    @property
    def url(self) -> str | None:
        return f"http://{self.addr}:{self.port}/metrics" if self.enabled else None

    def observe_metrics(self, figures: dict) -> None:
        """Set the gauges from one metrics message (the dict the metrics topic carries)."""
        if not self.enabled:
            return
        m = self._metrics
        _set(m["events"], figures.get("events"))
        _set(m["labels"], figures.get("labels_received"))
        for reason, count in (figures.get("dead_letters") or {}).items():
            _set(m["dead_letters"], count, reason=reason)
        _set(m["dead_letters_total"], figures.get("dead_letters_total"))
        _set(m["events_per_s"], figures.get("events_per_s"))
        _set(m["events_per_s_run"], figures.get("events_per_s_run"))
        for quantile, key in (("0.5", "latency_ms_p50"), ("0.99", "latency_ms_p99")):
            value = figures.get(key)
            _set(m["latency"], None if value is None else value / 1000, quantile=quantile)
        for topic, lag in (figures.get("consumer_lag") or {}).items():
            _set(m["lag"], lag, topic=topic)
        event_time = figures.get("event_time")
        if event_time:
            from dataflows.watch.report import ms_or_none

            ms = ms_or_none(event_time)
            _set(m["event_time"], None if ms is None else ms / 1000)
        for member, quality in (figures.get("quality") or {}).items():
            name = "ensemble" if member == "score" else member
            for key in QUALITY:
                _set(m[key], (quality or {}).get(key), member=name)
            _set(m["member_labels"], (quality or {}).get("labels"), member=name)
        for member, version in _versions(figures).items():
            _set(m["model_version"], version, member=member)
        if figures.get("features_version"):
            m["features_version"].clear()
            m["features_version"].labels(version=str(figures["features_version"])).set(1)
        refits = figures.get("refits")
        if isinstance(refits, dict):
            last = refits.get("last")
            if isinstance(last, dict):
                _set(m["refit_last_accepted"], bool(last.get("accepted")))
                _set(m["refit_last_failed"], refit_failed(last))
            _set(m["registry_write_failures"], refits.get("registry_write_failures"))
            _set(m["registry_write_failing"], refits.get("registry_write_error") is not None)
            for reason, count in (refits.get("fitted_by_flow") or {}).items():
                _set(m["refits_fitted_by_flow"], count, reason=reason)
        if isinstance(figures.get("alerts_firing"), list):
            firing = set(figures["alerts_firing"])
            for rule in ALERT_RULES:
                _set(m["alert_firing"], rule in firing, rule=rule)

    def observe_batch(self, step: str, seconds: float, size: int) -> None:
        """One batch handled by a dataflow step: its duration and its number of items."""
        if not self.enabled:
            return
        self._metrics["batch_seconds"].labels(step=step).observe(seconds)
        self._metrics["batch_size"].labels(step=step).observe(size)

    def observe_refit(self, record: dict, seconds: float | None = None) -> None:
        """One LightGBM refit (a model registry record): gate decision, holdout figures, duration, version."""
        if not self.enabled:
            return
        version = record.get("version")
        if version is not None and version in self.refits_seen:
            return
        if version is not None:
            self.refits_seen.add(version)
        m = self._metrics
        decision = "accepted" if record.get("accepted") else "rejected"
        m["refits"].labels(decision=decision).inc()
        if seconds is not None:
            m["refit_seconds"].observe(seconds)
        for key, value in (record.get("metrics") or {}).items():
            _set(m["refit_holdout"], value, metric=key)
        if version is not None:
            _set(m["refit_version"], version, decision=decision)
            if record.get("accepted"):
                _set(m["model_version"], version, member="lightgbm")

    def watch_registry(
        self, directory: str | Path, interval_s: float = 2.0, follow_runs: bool = False
    ) -> threading.Thread | None:
        """Report every refit the registry directory records, now and as new ones appear (daemon thread).

        `follow_runs`: `directory` is a whole registry, where each run keeps its refits in a directory of its
        own (`dataflows.flow.runs`): follow the newest run's, moving on when a newer run starts."""
        if not self.enabled or not directory:
            return None

        def loop() -> None:
            followed = None
            while True:
                target = (latest_run_dir(directory) or directory) if follow_runs else directory
                if target != followed:
                    followed = target
                    self.refits_seen.clear()  # each run numbers its refits from 1
                self.scan_registry(target)
                time.sleep(interval_s)

        thread = threading.Thread(target=loop, name="eddy-prometheus-registry", daemon=True)
        thread.start()
        return thread

    def scan_registry(self, directory: str | Path) -> int:
        """Observe the registry records not seen yet; returns how many were new."""
        new = 0
        for path in sorted(Path(directory).glob("v*.json")) if Path(directory).is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("version") not in self.refits_seen:
                self.observe_refit(record, record.get("fit_seconds"))
                new += 1
        return new


def _define(registry: CollectorRegistry) -> dict[str, Any]:
    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    member = ("member",)
    return {
        "events": gauge("eddy_events", "Events scored by the flow (from the latest metrics message)"),
        "labels": gauge("eddy_labels_received", "Delayed labels received on the labels topic"),
        "dead_letters": gauge("eddy_dead_letters", "Dead letters by reason", ("reason",)),
        "dead_letters_total": gauge("eddy_dead_letters_all", "Dead letters, all reasons"),
        "events_per_s": gauge("eddy_events_per_second", "Throughput since the previous metrics message"),
        "events_per_s_run": gauge("eddy_events_per_second_run", "Throughput over the whole run"),
        "latency": gauge("eddy_latency_seconds", "Kafka timestamp to scored, by quantile", ("quantile",)),
        "lag": gauge("eddy_consumer_lag", "Messages behind the end of each input topic", ("topic",)),
        "event_time": gauge("eddy_event_time_seconds", "Newest event time scored (Unix seconds)"),
        "roc_auc_rolling": gauge("eddy_roc_auc_rolling", "ROC AUC over the last rolling_window labels", member),
        "log_loss_rolling": gauge("eddy_log_loss_rolling", "Log loss over the last rolling_window labels", member),
        "roc_auc": gauge("eddy_roc_auc", "ROC AUC over every label", member),
        "log_loss": gauge("eddy_log_loss", "Log loss over every label", member),
        "accuracy_rolling": gauge("eddy_accuracy_rolling", "Accuracy over the last rolling_window labels", member),
        "member_labels": gauge("eddy_member_labels", "Labels each member has been judged on", member),
        "model_version": gauge("eddy_model_version", "Version of each ensemble member", member),
        "features_version": gauge("eddy_features_version", "1 for the SQL features version in force", ("version",)),
        "batch_seconds": Histogram(
            "eddy_batch_seconds", "Time a step takes per batch", ("step",), buckets=BATCH_SECONDS, registry=registry
        ),
        "batch_size": Histogram(
            "eddy_batch_size", "Items per batch a step handles", ("step",), buckets=BATCH_SIZES, registry=registry
        ),
        "refits": Counter("eddy_refits", "LightGBM refits by gate decision", ("decision",), registry=registry),
        "refit_seconds": Histogram(
            "eddy_refit_seconds", "LightGBM refit duration", buckets=REFIT_SECONDS, registry=registry
        ),
        "refit_holdout": gauge("eddy_refit_holdout", "Holdout figures of the latest refit", ("metric",)),
        "refit_version": gauge("eddy_refit_version", "Version of the latest refit by decision", ("decision",)),
        "refit_last_accepted": gauge(
            "eddy_refit_last_accepted",
            "1 if the latest refit was accepted (it passed the gate and the champion), else 0",
        ),
        "refit_last_failed": gauge(
            "eddy_refit_last_failed",
            "1 if the latest refit failed (its fit, or the quality bar), 0 if it passed the bar (even if it lost to "
            "the model in force)",
        ),
        "refits_fitted_by_flow": gauge(
            "eddy_refits_fitted_by_flow",
            "Refits the flow fitted itself: its background fit timed out or its worker process died",
            ("reason",),
        ),
        "registry_write_failures": gauge("eddy_registry_write_failures", "Refits the model registry failed to write"),
        "registry_write_failing": gauge("eddy_registry_write_failing", "1 while the latest registry write failed"),
        "alert_firing": gauge("eddy_alert_firing", "1 while an alert rule fires in the flow ([alerts])", ("rule",)),
    }


def _set(gauge: Gauge, value, **labels: str) -> None:
    """Set a gauge (the child of `labels`) if `value` is a number; a None leaves it unset, not zero."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int | float):
        (gauge.labels(**labels) if labels else gauge).set(value)


def _versions(figures: dict) -> dict[str, float]:
    for key in ("model", "versions", "model_versions"):
        value = figures.get(key) or (figures.get("learner") or {}).get(key)
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if isinstance(v, int | float)}
    return {}


def follow(
    exporter: PrometheusExporter,
    bootstrap_servers: str,
    topic: str,
    stop: threading.Event,
    security: KafkaSecurity | None = None,
) -> None:
    """Feed every metrics message of `topic` (from its end on, after the latest one) to the exporter."""
    from dataflows.broker.consumer import assigned_consumer, poll_json_objects

    consumer, _ = assigned_consumer(bootstrap_servers, topic, "latest", security)
    try:
        while not stop.is_set():
            for figures in poll_json_objects(consumer):
                exporter.observe_metrics(figures)
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    from dataflows.broker.admin import BrokerError, require_topics
    from dataflows.flow.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m dataflows.watch.prometheus", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9108, help="HTTP port of /metrics (default: %(default)s)")
    parser.add_argument(
        "--addr",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every interface)",
    )
    parser.add_argument("--topic", help="metrics topic (default: from eddy.toml / EDDY_METRICS_TOPIC)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: from eddy.toml)")
    parser.add_argument("--registry-dir", help="model registry to follow (default: [ensemble] registry_dir)")
    args = parser.parse_args(argv)
    configure_logging(kafka_level=logging.ERROR)
    try:
        config = load_config()
        bootstrap = args.bootstrap_servers or config.bootstrap_servers
        topic = args.topic or config.topics.metrics
        require_topics(bootstrap, [topic], security=config.kafka_security)
    except (ConfigError, BrokerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        exporter = PrometheusExporter(args.port, args.addr)
    except OSError as exc:
        print(f"error: cannot listen on {args.addr}:{args.port}: {exc} (try --port)", file=sys.stderr)
        return 1
    exporter.watch_registry(args.registry_dir or config.ensemble.get("registry_dir"), follow_runs=True)
    print(f"eddy Prometheus exporter: {exporter.url} (following '{topic}' on {bootstrap}; Ctrl-C stops it)")
    with contextlib.suppress(KeyboardInterrupt):
        follow(exporter, bootstrap, topic, threading.Event(), config.kafka_security)
    return 0


if __name__ == "__main__":
    sys.exit(main())
