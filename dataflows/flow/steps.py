"""The dataflow's three stateful steps, as Bytewax `StatefulBatchLogic`s over eddy's plain state objects.

The ordering step and the learner run under one key; the feature step runs under one key per shard of each
feature family (`dataflows.flow.shards`): the ordering step splits each released micro-batch over the shards and
the learner joins their features back in the canonical order.

Each step keeps its live resources (DuckDB connection, clocks) beside its state, and saves and restores
its state through one door, `dataflows.flow.step_state.StepState`: it hands the door the plain `state()` of each
object it holds and rebuilds them with their `from_state` on resume, so that the objects know nothing of
Bytewax, Kafka or the recovery directory.

A snapshot costs what its epoch changed, not the history held: the ordering step's dedupe ids and the
feature step's window rows go to the recovery directory's journal (`dataflows.flow.state_journal`) as one chunk
an epoch, and the bytes Bytewax stores hold the rest of the state and the journal position. The learner's
state is bounded by its configuration (the model, the refit window, the events waiting for labels) and is
saved whole, its refit window's slices by reference (`SharedBlobs`).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from bytewax.operators import StatefulBatchLogic

from dataflows.flow.config import Config
from dataflows.flow.messages import (
    Alert,
    DeadLetter,
    Event,
    FeaturedEvent,
    FeaturePart,
    Label,
    Metrics,
    Prediction,
    Release,
    ShardBatch,
)
from dataflows.flow.ordering import EventTimeOrder
from dataflows.flow.runs import new_run_id, run_registry_dir
from dataflows.flow.shards import FeatureJoin, Splitter, shard_count
from dataflows.flow.state_journal import SharedBlobs
from dataflows.flow.step_state import NOT_SAVED, StepState
from dataflows.flow.warm_start import checkpoints_for, initial_model
from dataflows.watch.alerts import AlertEvaluator, AlertSettings
from dataflows.watch.metrics_reporter import MetricsReporter
from dataflows.watch.prometheus import PrometheusExporter
from features import FeatureEngine
from features.catalog import require_catalog
from models import OnlineLearner
from models.registry import flush_writes

log = logging.getLogger("eddy")

_NO_MARK = -(2**62)
"""The mark of an empty chunk: below every floor, so it is dead as soon as it is not the newest."""


class OrderByEventTime(StatefulBatchLogic):
    """Releases events and labels in canonical event-time order (see `dataflows.flow.ordering`), each micro-batch
    split into a release for the learner and a batch for each feature shard it has events for (`Splitter`):
    `(key, message)` pairs. `workers` is the flow's worker count: the shards per family unless
    `[flow] feature_shards` says otherwise."""

    STEP = "order_by_event_time"

    def __init__(
        self,
        config: Config,
        partitions: list[str],
        ends: dict[str, int] | None,
        tail: bool,
        resume: bytes | None,
        state_dir: Path | None = None,
        key: str = "",
        workers: int = 1,
    ):
        flow = config.flow
        self.store = StepState(self.STEP, state_dir, ("ids",))
        saved = self.store.unpack(resume)
        self.splitter = Splitter(
            config.sql_dir,
            config.fields,
            shard_count(flow.feature_shards, workers),
            flow.mode,
            None if saved is None else saved["split"],
            key,
            workers,
        )
        chunks = self.store.open(key, saved)
        if saved is None:
            self.order = EventTimeOrder(
                partitions,
                flow.lateness_ms,
                flow.idle_timeout_s,
                flow.dedupe_horizon_ms,
                flow.mode,
                max_clock_skew_ms=flow.max_clock_skew_ms,
            )
        else:
            self.order = saved["order"]
            self.order.restore_ids([pair for chunk in chunks["ids"] for pair in pickle.loads(chunk)])
        if self.store.saving:
            self.order.track_new_ids()
        self.order.partitions = list(partitions)
        self.order.ends = ends
        self.order.tail = tail
        self.order.quiet_topics = (config.topics.labels,)
        self.order.max_clock_skew_ms = flow.max_clock_skew_ms
        self.exporter = PrometheusExporter(config.flow.prometheus_port, config.flow.prometheus_host)

    def on_batch(self, items: list[Event | Label]):
        started = time.perf_counter()
        released = self.order.push(items, time.time())
        out = self.splitter.split([*released.dead, *released.items])
        self.exporter.observe_batch(self.STEP, time.perf_counter() - started, len(items))
        return out, self.RETAIN

    def on_notify(self):
        released = self.order.tick(time.time())
        return self.splitter.split([*released.dead, *released.items]), self.RETAIN

    def on_eof(self):
        released = self.order.flush()
        return self.splitter.split([*released.dead, *released.items]), self.RETAIN

    def notify_at(self) -> datetime | None:
        at = self.order.next_wakeup(time.time())
        return None if at is None else datetime.fromtimestamp(at, tz=UTC)

    def snapshot(self) -> bytes:
        if not self.store.saving:
            return NOT_SAVED
        started = time.perf_counter()
        chunk = pickle.dumps(self.order.take_new_ids(), protocol=pickle.HIGHEST_PROTOCOL)
        # A chunk's mark is the count of ids remembered up to its end: dead once all of them are forgotten.
        return self.store.save(
            {"order": self.order.without_ids(), "split": self.splitter.state()},
            {"ids": (chunk, self.order.remembered)},
            dead_below={"ids": self.order.forgotten + 1},
            started=started,
        )


class ComputeFeatures(StatefulBatchLogic):
    """One shard of one feature family (`dataflows.flow.shards`): computes the family's groups for the events of
    its entities, in the micro-batches the ordering step released, and answers each `ShardBatch` with a
    `FeaturePart` in the same epoch. Its window buffer and indexes hold only its entities' history.

    Bytewax builds a step's logic without telling it its key, so a new shard learns its key and family from
    its first batch (a resumed one from its snapshot); `key` and `family` build one directly (family None:
    every group, as a single engine).
    """

    STEP = "compute_features"

    def __init__(
        self,
        config: Config,
        resume: bytes | None,
        state_dir: Path | None = None,
        key: str | None = None,
        family: str | None = None,
    ):
        self.sql_dir = config.sql_dir
        self.fields = config.fields
        self.exporter = PrometheusExporter(config.flow.prometheus_port, config.flow.prometheus_host)
        self.key: str | None = None
        self.family: str | None = None
        self.engine: FeatureEngine | None = None
        self.store = StepState(self.STEP, state_dir, ("rows",))
        self._reported: set[tuple[str, str]] = set()
        self._summarised = False
        saved = self.store.unpack(resume)
        if saved is not None:
            self._start(saved["key"], saved["family"], saved)
        elif key is not None:
            self._start(key, family)

    def _start(self, key: str, family: str | None, saved: dict | None = None) -> None:
        self.key, self.family = key, family
        chunks = self.store.open(key, saved)
        options = {
            "auto_reload": False,
            "track_inserts": self.store.saving,
            "family": family,
        }
        if saved is None:
            self.engine = FeatureEngine(self.sql_dir, self.fields, **options)
        else:
            rows = [pa.ipc.open_stream(chunk).read_all() for chunk in chunks["rows"]]
            self.engine = FeatureEngine.resume(saved["engine"], rows, self.sql_dir, self.fields, **options)
        log.info(
            "feature shard %s (%s) %s on pid %d, thread %d",
            key,
            ", ".join(g.name for g in self.engine.catalog.groups) or "no groups",
            "resumed" if saved is not None else "started",
            os.getpid(),
            threading.get_native_id(),
        )

    def on_batch(self, items: list[ShardBatch]):
        started = time.perf_counter()
        if self.engine is None:
            self._start(items[0].key, items[0].family)
        out = [self._compute(batch) for batch in items]
        self.exporter.observe_batch(self.STEP, time.perf_counter() - started, sum(len(b.rows) for b in items))
        return out, self.RETAIN

    def on_eof(self):
        if self.engine is not None and not self._summarised:
            self._summarised = True
            log.info(
                "feature shard %s: %d events in %d micro-batches, %d rows held; pid %d, thread %d",
                self.key,
                self.engine.counters["events"],
                self.engine.counters["batches"],
                len(self.engine.buffer),
                os.getpid(),
                threading.get_native_id(),
            )
        return [], self.RETAIN

    def _compute(self, batch: ShardBatch) -> FeaturePart:
        engine = self.engine
        if batch.version != engine.features_version:
            self._reload(batch.version)
        rows = batch.rows
        computed = engine.push(rows)
        features = {row["event_id"]: feats for row, feats in computed}
        return FeaturePart(batch.seq, self.key, self.family, features, computed.features_version)

    def _reload(self, wanted: str) -> None:
        """The splitter found the definitions edited: load them too (it logged the change)."""
        report = self.engine.reload()
        if report.features_version != wanted and (wanted, report.features_version) not in self._reported:
            self._reported.add((wanted, report.features_version))
            log.warning(
                "feature shard %s: the splitter moved to version %s, this shard loaded %s%s",
                self.key,
                wanted,
                report.features_version,
                f" ({report.errors[0]})" if report.errors else "",
            )

    def snapshot(self) -> bytes:
        if not self.store.saving:
            return NOT_SAVED
        started = time.perf_counter()
        rows = self.engine.take_inserted()
        chunk = _ipc(rows)
        # A chunk's mark is its newest ts: dead once the buffer has evicted everything up to it.
        mark = pc.max(rows["ts"]).cast(pa.int64()).as_py() // 1000 if rows.num_rows else _NO_MARK
        floor = self.engine.buffer.floor
        return self.store.save(
            {"engine": self.engine.state(), "key": self.key, "family": self.family},
            {"rows": (chunk, mark)},
            dead_below={"rows": _NO_MARK if floor is None else floor},
            started=started,
        )


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@dataclass
class LearnerState:
    """What the learner step holds across epochs."""

    learner: OnlineLearner
    reporter: MetricsReporter
    join: FeatureJoin = field(default_factory=FeatureJoin)
    alerts: AlertEvaluator = field(default_factory=AlertEvaluator)

    def state(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state(),
            "reporter": self.reporter.state(),
            "join": self.join.state(),
            "alerts": self.alerts.state(),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], alert_settings: AlertSettings, label_default: bool | None = None
    ) -> LearnerState:
        """The learner step's objects as `state` (from `state()`) describes them, the alert rules those of
        `alert_settings` and the implicit label `label_default` (the configuration's now)."""
        return cls(
            OnlineLearner.from_state(state["learner"], label_default),
            MetricsReporter.from_state(state["reporter"]),
            FeatureJoin.from_state(state["join"]),
            AlertEvaluator.from_state(state["alerts"], alert_settings),
        )


class ScoreAndLearn(StatefulBatchLogic):
    """Scores every event before learning its label (test-then-train); joins delayed labels; reports metrics."""

    STEP = "score_and_learn"

    def __init__(self, config: Config, lag_probe, resume: bytes | None, state_dir: Path | None = None, key: str = ""):
        self.config = config
        # The learner's state is saved whole (it is bounded by configuration), except the slices of its refit
        # window, which go to the journal once each (see `SharedBlobs`).
        self.store = StepState(self.STEP, state_dir, ("blobs",))
        saved = self.store.unpack(resume)
        chunks = self.store.open(key, saved)
        self.blobs = SharedBlobs()
        alert_settings = AlertEvaluator(config.alerts).settings
        self.features_version = require_catalog(config.sql_dir, config.fields).version
        if saved is None:
            run = new_run_id()
            model = initial_model(config, run, self.features_version, state_dir)
            self.state = LearnerState(
                OnlineLearner(
                    model,
                    config.flow.label_horizon_ms,
                    config.flow.rolling_window,
                    label_default=config.label_default,
                ),
                MetricsReporter(config.flow.metrics_every_events, config.flow.metrics_every_s, run),
                alerts=AlertEvaluator(alert_settings),
            )
        else:
            blobs = self.blobs.restore(chunks["blobs"], saved["position"].first["blobs"])
            self.state = LearnerState.from_state(
                SharedBlobs.load(saved["state"], blobs), alert_settings, config.label_default
            )
        self.lag_probe = lag_probe
        self.include_features = config.include_features
        self.exporter = PrometheusExporter(config.flow.prometheus_port, config.flow.prometheus_host)
        registry_dir = config.ensemble.get("registry_dir") if config.ensemble.get("enabled", True) else None
        if self.exporter.enabled and registry_dir:
            self.exporter.watch_registry(run_registry_dir(registry_dir, getattr(self.state.reporter, "run", None)))
        self.checkpoints = checkpoints_for(config, getattr(self.state.reporter, "run", None))
        self._checkpoint(None)  # notes where the model is: a resumed run does not checkpoint what it had

    def on_batch(self, items: list[Release | FeaturePart | FeaturedEvent | Label | DeadLetter]):
        started = time.perf_counter()
        items = self.state.join.push(items)  # the released items whose features are all in, in order
        learner, reporter = self.state.learner, self.state.reporter
        out: list[Any] = []
        raw = _lightgbm_fields(learner)
        inputs = {
            id(item): model_input(_with_fields(item, raw) if raw else item.features)
            for item in items
            if isinstance(item, FeaturedEvent)
        }
        learner.prepare(list(inputs.values()))
        for item in items:
            if isinstance(item, FeaturedEvent):
                event = item.event
                if self.lag_probe is not None:
                    self.lag_probe.seen(event.origin)
                x = inputs[id(item)]
                meta = {"ts": event.ts / 1000, "source": event.origin.at, "features_version": item.features_version}
                result = learner.score(event.event_id, event.ts, x, event.label, meta)
                self._checkpoint(item.features_version)
                out.append(
                    Prediction(
                        event_id=event.event_id,
                        ts=event.ts,
                        score=result.score,
                        scores=result.scores,
                        model=result.versions,
                        features_version=item.features_version,
                        label_inline=result.label_inline,
                        features=x if self.include_features else None,
                    )
                )
                # The clock read per event, not per micro-batch: a batch of a few thousand events takes a
                # fraction of a second, which latencies and the rate between two reports must not lose.
                now = time.time()
                reporter.scored(event, item.features_version, now)
                if reporter.due_by_count():
                    out.extend(self._report(now))
            elif isinstance(item, Label):
                if self.lag_probe is not None:
                    self.lag_probe.seen(item.origin)
                learner.label(item.event_id, item.label)
                self._checkpoint(None)
                reporter.labels += 1
            else:
                reporter.dead_letter(item.reason)
                out.append(item)
        self.exporter.observe_batch(self.STEP, time.perf_counter() - started, len(items))
        return out, self.RETAIN

    def _checkpoint(self, features_version: str | None) -> None:
        """A River checkpoint when one is due (`models.checkpoints`), marked with the SQL version of the
        latest event scored."""
        if features_version is not None:
            self.features_version = features_version
        if self.checkpoints is not None:
            counters = self.state.learner.counters
            learned = counters["labels_inline"] + counters["labels_delayed"] + counters["labels_early"]
            self.checkpoints.observe(self.state.learner.model, learned, self.features_version)

    def on_notify(self):
        return self._report(time.time()), self.RETAIN

    def on_eof(self):
        self._check_join("at the end of the input")
        return self._report(time.time(), final=True), self.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.fromtimestamp(self.state.reporter.next_at(time.time()), tz=UTC)

    def _report(self, now: float, final: bool = False) -> list[Metrics | Alert]:
        """A metrics message, after the alerts its figures fire or clear (`dataflows.watch.alerts`); it names the
        alerts firing."""
        lag = self.lag_probe() if self.lag_probe else None
        metrics = self.state.reporter.report(self.state.learner, now, lag, final)
        alerts = [Alert(message) for message in self.state.alerts.evaluate(metrics.figures, int(now * 1000))]
        for alert in alerts:
            log.warning("alert %s", alert.figures["summary"])
        metrics.figures["alerts_firing"] = sorted(self.state.alerts.active)
        self.exporter.observe_metrics(metrics.figures)
        return [*alerts, metrics]

    def _check_join(self, when: str) -> None:
        """Every part of an epoch's releases reaches the learner within the epoch (`FeatureJoin`): say so if not."""
        if self.state.join.waiting:
            log.warning(
                "learner: %d release(s) still waiting for their features %s (kept in the learner's state)",
                self.state.join.waiting,
                when,
            )

    def snapshot(self) -> bytes:
        self._check_join("at an epoch's end")
        if not self.store.saving:
            return NOT_SAVED
        started = time.perf_counter()
        # A snapshot never runs ahead of the registry files the model's state names.
        flush_writes()
        state, new = self.blobs.dump(self.state.state())
        chunk = pickle.dumps(new, protocol=pickle.HIGHEST_PROTOCOL)
        seq = self.store.next_seq
        self.blobs.written(new, seq)
        return self.store.save(
            {"state": state},
            {"blobs": (chunk, seq)},
            dead_below={"blobs": self.blobs.first_needed(seq)},
            started=started,
        )


def _lightgbm_fields(learner: OnlineLearner) -> list[str]:
    """The raw event fields the learner's model takes beside the features (the ensemble's categorical fields,
    which it hands to LightGBM only): those of the model in the state, so a resumed run gives what it saved."""
    return getattr(learner.model, "lightgbm_fields", None) or []


def _with_fields(item: FeaturedEvent, names: list[str]) -> dict[str, Any]:
    """The event's own values of `names` beside its features (a feature of the same name wins)."""
    fields = item.event.fields
    return {**{name: fields[name] for name in names if name in fields}, **item.features}


_NUMBERS_OR_NULL = frozenset((float, int, bool, type(None)))
_NONE = type(None)


def model_input(features: dict[str, Any]) -> dict[str, Any]:
    """Features as River takes them: NULLs (and NaN/inf) left out, DECIMAL as float, other exotic types as text.

    The usual row, numbers and NULLs only, leaves out its NULLs, then one `sum` at C speed tells that nothing
    is NaN or infinite (a finite sum has only finite terms), where testing `v - v == 0.0` value by value took
    a third more of the time (~4 µs a row of 32 features). A row with a non-finite sum or another type goes
    value by value."""
    kinds = set(map(type, features.values()))
    if kinds <= _NUMBERS_OR_NULL:
        if _NONE in kinds:
            x = {name: value for name, value in features.items() if value is not None}
        else:
            x = dict(features)
        try:
            total = sum(x.values())
        except OverflowError:  # an int too large for a float beside floats
            total = math.inf
        if total - total == 0.0:
            return x
        return {name: value for name, value in x.items() if value - value == 0.0}
    x: dict[str, Any] = {}
    for name, value in features.items():
        kind = type(value)
        if kind is float:
            if value - value == 0.0:
                x[name] = value
        elif kind is int or kind is str or kind is bool:
            x[name] = value
        elif value is None:
            continue
        elif isinstance(value, Decimal):
            x[name] = float(value)
        else:
            x[name] = str(value)
    return x
