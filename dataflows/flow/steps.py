"""The dataflow's three stateful steps, as Bytewax `StatefulBatchLogic`s over eddy's plain state objects.

The ordering step and the learner run under one key; the feature step runs under one key per shard of each
feature family (`dataflows.flow.shards`): the ordering step splits each released micro-batch over the shards and
the learner joins their features back in the canonical order.

Each step keeps its live resources (DuckDB connection, clocks, its journal) beside its state and snapshots
only plain state, pickled, tagged with `STATE_FORMAT` so that a resume from an incompatible snapshot is
refused with a clear message instead of silently mis-restoring.

A snapshot costs what its epoch changed, not the history held: the ordering step's dedupe ids and the
feature step's window rows go to the recovery directory's journal (`dataflows.flow.state_journal`) as one chunk
an epoch, and the pickle Bytewax stores holds the rest of the state and the journal position. The learner's
state is bounded by its configuration (the model, the refit window, the events waiting for labels) and is
pickled whole.

Without a recovery directory Bytewax still asks for a snapshot at every epoch and throws it away, so steps
built with no `state_dir` return the `NOT_SAVED` marker instead, which a resume refuses.
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
from dataflows.flow.model_choice import build_model
from dataflows.flow.ordering import EventTimeOrder
from dataflows.flow.shards import FeatureJoin, Splitter, shard_count
from dataflows.flow.state_journal import SharedBlobs, StateJournal
from dataflows.watch.alerts import AlertEvaluator
from dataflows.watch.metrics_reporter import MetricsReporter
from dataflows.watch.prometheus import PrometheusExporter
from features import FeatureEngine
from models import OnlineLearner

log = logging.getLogger("eddy")

STATE_FORMAT = 5
"""Bump when the pickled state of any step changes shape; old snapshots are then refused by name."""

NOT_SAVED = b"eddy: state not saved (this run had no recovery directory)"
"""What a step built with no `state_dir` returns for its snapshot: no state, and refused on resume."""

_NO_MARK = -(2**62)
"""The mark of an empty chunk: below every floor, so it is dead as soon as it is not the newest."""


class StateFormatError(RuntimeError):
    """A recovery snapshot this version of eddy cannot resume from."""


def pack(step_id: str, state: Any) -> bytes:
    return pickle.dumps({"format": STATE_FORMAT, "step": step_id, "state": state}, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(step_id: str, blob: bytes | None) -> Any:
    if blob is None:
        return None
    if blob == NOT_SAVED:
        raise StateFormatError(
            f"step '{step_id}': the recovery snapshot holds no state: it was written by a flow built without "
            "snapshots (no recovery directory). Start with a fresh recovery directory (see README, Recovery)."
        )
    try:
        saved = pickle.loads(blob)
    except Exception as exc:
        raise StateFormatError(
            f"step '{step_id}': the recovery snapshot cannot be read ({exc}); it was written by an incompatible "
            "version of eddy. Start with a fresh recovery directory (see README, Recovery)."
        ) from exc
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT or saved.get("step") != step_id:
        found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise StateFormatError(
            f"step '{step_id}': the recovery snapshot has state format {found!r}, this eddy needs "
            f"{STATE_FORMAT}. Resume with the eddy version that wrote it, or start with a fresh recovery "
            "directory (see README, Recovery)."
        )
    return saved["state"]


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
        saved = unpack(self.STEP, resume)
        self.splitter = Splitter(
            config.sql_dir,
            config.fields,
            shard_count(flow.feature_shards, workers),
            flow.mode,
            None if saved is None else saved["split"],
            key,
            workers,
        )
        self.journal = StateJournal(state_dir, self.STEP, key, ("ids",)) if state_dir is not None else None
        if saved is None:
            self.order = EventTimeOrder(
                partitions, flow.lateness_ms, flow.idle_timeout_s, flow.dedupe_horizon_ms, flow.mode
            )
            if self.journal is not None:
                self.journal.open(None)
        else:
            self.order = saved["order"]
            chunks = self.journal.open(saved["position"]) if self.journal is not None else {"ids": []}
            self.order.restore_ids([pair for chunk in chunks["ids"] for pair in pickle.loads(chunk)])
        if self.journal is not None:
            self.order.track_new_ids()
        self.order.partitions = list(partitions)
        self.order.ends = ends
        self.order.tail = tail
        self.order.quiet_topics = (config.topics.labels,)
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
        if self.journal is None:
            return NOT_SAVED
        started = time.perf_counter()
        chunk = pickle.dumps(self.order.take_new_ids(), protocol=pickle.HIGHEST_PROTOCOL)
        # A chunk's mark is the count of ids remembered up to its end: dead once all of them are forgotten.
        position = self.journal.append(
            {"ids": (chunk, self.order.remembered)}, dead_below={"ids": self.order.forgotten + 1}
        )
        blob = pack(
            self.STEP, {"position": position, "order": self.order.without_ids(), "split": self.splitter.state()}
        )
        self.journal.record(position.seq, time.perf_counter() - started, len(chunk) + len(blob))
        return blob


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
        self.state_dir = state_dir
        self.arrival = config.flow.mode == "arrival"
        self.exporter = PrometheusExporter(config.flow.prometheus_port, config.flow.prometheus_host)
        self.key: str | None = None
        self.family: str | None = None
        self.engine: FeatureEngine | None = None
        self.journal: StateJournal | None = None
        self._reported: set[tuple[str, str]] = set()
        self._summarised = False
        saved = unpack(self.STEP, resume)
        if saved is not None:
            self._start(saved["key"], saved["family"], saved)
        elif key is not None:
            self._start(key, family)

    def _start(self, key: str, family: str | None, saved: dict | None = None) -> None:
        self.key, self.family = key, family
        if self.state_dir is not None:
            self.journal = StateJournal(self.state_dir, self.STEP, key, ("rows",))
        options = {
            "lateness_ms": 0,
            "auto_reload": False,
            "track_inserts": self.journal is not None,
            "family": family,
        }
        if saved is None:
            self.engine = FeatureEngine(self.sql_dir, self.fields, **options)
            if self.journal is not None:
                self.journal.open(None)
        else:
            chunks = self.journal.open(saved["position"]) if self.journal is not None else {"rows": []}
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
                self.engine.counters["released"],
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
        computed = engine.push_on_arrival(rows) if self.arrival else engine.push(rows, flush=True)
        features = {row["event_id"]: feats for row, feats in computed}
        late = {le.event["event_id"]: le.reason for le in computed.late}
        return FeaturePart(batch.seq, self.key, self.family, features, late, computed.features_version)

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
        if self.journal is None:
            return NOT_SAVED
        started = time.perf_counter()
        rows = self.engine.take_inserted()
        chunk = _ipc(rows)
        # A chunk's mark is its newest ts: dead once the buffer has evicted everything up to it.
        mark = pc.max(rows["ts"]).cast(pa.int64()).as_py() // 1000 if rows.num_rows else _NO_MARK
        floor = self.engine.buffer.floor
        position = self.journal.append(
            {"rows": (chunk, mark)}, dead_below={"rows": _NO_MARK if floor is None else floor}
        )
        state = {"position": position, "engine": self.engine.state(), "key": self.key, "family": self.family}
        blob = pack(self.STEP, state)
        self.journal.record(position.seq, time.perf_counter() - started, len(chunk) + len(blob))
        return blob


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@dataclass
class LearnerState:
    learner: OnlineLearner
    reporter: MetricsReporter
    join: FeatureJoin = field(default_factory=FeatureJoin)
    alerts: AlertEvaluator = field(default_factory=AlertEvaluator)


class ScoreAndLearn(StatefulBatchLogic):
    """Scores every event before learning its label (test-then-train); joins delayed labels; reports metrics."""

    STEP = "score_and_learn"

    def __init__(self, config: Config, lag_probe, resume: bytes | None, state_dir: Path | None = None, key: str = ""):
        self.config = config
        saved = unpack(self.STEP, resume)
        # The learner's state is pickled whole (it is bounded by configuration), except the slices of its refit
        # window, which go to the journal once each (see `SharedBlobs`).
        self.journal = StateJournal(state_dir, self.STEP, key, ("blobs",)) if state_dir is not None else None
        self.blobs = SharedBlobs()
        if saved is None:
            self.state = LearnerState(
                OnlineLearner(build_model(config), config.flow.label_horizon_ms, config.flow.rolling_window),
                MetricsReporter(config.flow.metrics_every_events, config.flow.metrics_every_s),
                alerts=AlertEvaluator(config.alerts),
            )
            if self.journal is not None:
                self.journal.open(None)
        else:
            position = saved["position"]
            chunks = self.journal.open(position)["blobs"] if self.journal is not None else []
            blobs = self.blobs.restore(chunks, position.first["blobs"])
            self.state = SharedBlobs.load(saved["state"], blobs)
            # What fired is kept; the rules are the configuration's now. A snapshot from before alerts has none.
            if getattr(self.state, "alerts", None) is None:
                self.state.alerts = AlertEvaluator(config.alerts)
            self.state.alerts.settings = AlertEvaluator(config.alerts).settings
        self.lag_probe = lag_probe
        self.include_features = config.include_features
        self.exporter = PrometheusExporter(config.flow.prometheus_port, config.flow.prometheus_host)
        registry_dir = config.ensemble.get("registry_dir") if config.ensemble.get("enabled", True) else None
        if self.exporter.enabled and registry_dir:
            self.exporter.watch_registry(registry_dir)

    def on_batch(self, items: list[Release | FeaturePart | FeaturedEvent | Label | DeadLetter]):
        started = time.perf_counter()
        items = self.state.join.push(items)  # the released items whose features are all in, in order
        learner, reporter = self.state.learner, self.state.reporter
        out: list[Any] = []
        inputs = {id(item): model_input(item.features) for item in items if isinstance(item, FeaturedEvent)}
        learner.prepare(list(inputs.values()))
        for item in items:
            if isinstance(item, FeaturedEvent):
                event = item.event
                if self.lag_probe is not None:
                    self.lag_probe.seen(event.origin)
                x = inputs[id(item)]
                meta = {"ts": event.ts / 1000, "offset": event.origin.offset, "features_version": item.features_version}
                result = learner.score(event.event_id, event.ts, x, event.label, meta)
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
                reporter.labels += 1
            else:
                reporter.dead_letter(item.reason)
                out.append(item)
        self.exporter.observe_batch(self.STEP, time.perf_counter() - started, len(items))
        return out, self.RETAIN

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
        if self.journal is None:
            return NOT_SAVED
        started = time.perf_counter()
        state, new = self.blobs.dump(self.state)
        chunk = pickle.dumps(new, protocol=pickle.HIGHEST_PROTOCOL)
        seq = self.journal.next_seq
        self.blobs.written(new, seq)
        position = self.journal.append({"blobs": (chunk, seq)}, dead_below={"blobs": self.blobs.first_needed(seq)})
        blob = pack(self.STEP, {"position": position, "state": state})
        self.journal.record(position.seq, time.perf_counter() - started, len(chunk) + len(blob))
        return blob


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
