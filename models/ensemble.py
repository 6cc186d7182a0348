"""River and LightGBM blended into one online classifier, with background refits on a fixed schedule."""

from __future__ import annotations

import copy
import math
import operator
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from river import base, drift

from models.blend import HedgedStack, clipped_log_loss
from models.gate import Gate
from models.lightgbm_member import LightGBMMember
from models.pipelines import make_model
from models.refit import PackedRows, PickledSlices, RefitJob, RefitQueue
from models.registry import ModelRegistry
from models.window_bounds import WindowBounds

MEMBERS = ("river", "lightgbm")
DRIFT_DETECTORS = ("adwin", None)


class Drift(NamedTuple):
    """A detected rise in a member's error: the estimated first label of the new concept, the label at which
    its refit starts, and the detector's reason."""

    since: int
    refit_at: int
    reason: str


class Row(NamedTuple):
    x: dict
    y: bool
    position: int
    ts: float | None
    source: Any
    features_version: str | None


@dataclass(frozen=True)
class Scored:
    """One prediction: the ensemble's P(True), each member's P(True) and version, and the blend weights."""

    score: float
    scores: dict[str, float | None]
    versions: dict[str, int | None]
    weights: dict[str, float]


class Ensemble(base.Classifier):
    """River learning every event, blended with LightGBM refit in the background on a recent window.

    Every `refit_every` labelled events (and/or every `refit_every_seconds` of event time), and early when
    a drift detector sees a member's error rise, LightGBM is fit on the last `window` labelled rows in the
    background while River keeps scoring and learning. A refit started at labelled event k takes effect right
    after labelled event k + `lag`, waiting for the fit only if it has not finished: the schedule depends on
    the data alone, so a run restored from a pickle gives exactly the predictions of an uninterrupted one.
    The fit uses the older part of the window (with `search_trials`, a seeded search chooses its parameters
    and rounds, stopping early on the holdout); the most recent `holdout` fraction is the gate's test slice
    (`gate_metric` is "log_loss" or "auc"; with no `gate_threshold`, log loss must beat a constant base-rate
    predictor and AUC must exceed 0.5), and the new model must also do at least as well there as the model
    in force. With `refit_whole`, a model that passes is fitted again on the whole window before it takes effect.
    Every refit, accepted or rejected, goes to `registry` (files in `registry_dir` if given, the last `keep`)
    with what started it. The blend (`models.blend.HedgedStack`) stacks the members' logits with an online
    logistic regression (`blend_learning_rate`, `blend_l2`), hedged by a mixture of the members and the stack
    weighted by exp(−discounted log loss) (`blend_decay`); River alone until a LightGBM model is accepted.

    Parameters
    ----------
    river_model
        The River member (cloned); defaults to `models.pipelines.make_model("logistic_regression")`.
    refit_every
        Labelled events between refits; None or 0 to refit on event time only.
    refit_every_seconds
        Event-time seconds between refits (needs `ts` in `learn_one`); None to refit on counts only.
    window
        Labelled rows kept for refits.
    lag
        Labelled events between a refit's start and its taking effect.
    lgbm_params
        LightGBM parameters over `models.lightgbm_member.DEFAULT_PARAMS` (keep them deterministic).
    num_boost_round
        Boosting rounds per refit.
    gate_metric, gate_threshold, holdout
        The quality gate.
    search_trials
        Parameter sets a refit's search tries (`models.tuning`); 0 fits `lgbm_params` as they are.
    refit_whole
        Fit a model that passed the gate again on the whole window, its holdout included.
    drift_detector
        "adwin" (River's ADWIN on each member's absolute error) or None: a rise in a member's error starts a
        refit on the rows since the change, once `drift_min_rows` of them are in.
    drift_min_rows
        Labelled rows after a detected change that a drift-triggered refit waits for and trains on at least.
    lightgbm_fields
        Keys of `x` that LightGBM learns from and River does not: raw categorical fields, which a linear
        model would one-hot into a weight per value (LightGBM splits on them as categories).
    registry_dir, keep
        Where refits are saved, and how many versions are kept.
    blend_decay
        Forgetting factor of the blend's log losses (1 = never forget).
    blend_learning_rate, blend_l2
        Step size and L2 penalty of the stacking regression.
    background
        "thread", "process" or None (fit synchronously at the effect point); the predictions are the same.
    seed
        LightGBM's seed.
    lightgbm_view
        What LightGBM sees of a row, when not the row itself: `models.text.HashedText` turns free text into
        a fixed number of term-count columns. The refit window keeps rows as LightGBM sees them.

    Examples
    --------
    The blend is there to score better than either member alone. Compared on the same events, those from the
    first accepted refit on (before it River scores alone), its log loss is below both members':

    >>> from river import datasets, metrics
    >>> model = Ensemble(refit_every=100, window=300, lag=20, num_boost_round=30)
    >>> auc = metrics.ROCAUC()
    >>> losses = {name: metrics.LogLoss() for name in ("river", "lightgbm", "ensemble")}
    >>> for x, y in datasets.Phishing():
    ...     scored = model.predict_proba_one_detailed(x)
    ...     auc.update(y, scored.score)
    ...     if scored.scores["lightgbm"] is not None:
    ...         for name, p in {**scored.scores, "ensemble": scored.score}.items():
    ...             losses[name].update(y, p)
    ...     model.learn_one(x, y)
    >>> print(auc)
    ROCAUC: 94.77%
    >>> {name: round(m.get(), 4) for name, m in losses.items()}
    {'river': 0.3066, 'lightgbm': 0.3037, 'ensemble': 0.2424}
    >>> model.predict_proba_one_detailed(x).versions
    {'river': 1250, 'lightgbm': 4}

    Versions 5 to 12 did worse than the model in force on their holdout: they are kept, never used.

    >>> model.registry.accepted, model.registry.rejected
    (4, 8)
    >>> model.registry.versions()[-1]["reason"]
    'log_loss 0.29696 > 0.29028 of the model in force on 60 rows'

    """

    def __init__(
        self,
        river_model: base.Classifier | None = None,
        refit_every: int | None = 1000,
        refit_every_seconds: float | None = None,
        window: int = 10_000,
        lag: int = 200,
        lgbm_params: dict | None = None,
        num_boost_round: int = 100,
        gate_metric: str = "log_loss",
        gate_threshold: float | None = None,
        holdout: float = 0.2,
        registry_dir: str | None = None,
        keep: int = 5,
        blend_decay: float = 0.999,
        blend_learning_rate: float = 0.01,
        blend_l2: float = 1e-4,
        background: str | None = "thread",
        seed: int = 42,
        lightgbm_view: Callable[[Mapping], dict] | None = None,
        search_trials: int = 0,
        refit_whole: bool = False,
        drift_detector: str | None = "adwin",
        drift_min_rows: int = 2000,
        lightgbm_fields: list[str] | None = None,
    ):
        if lag < 0:
            raise ValueError(f"lag must be >= 0; got {lag}")
        if window < 2:
            raise ValueError(f"window must be at least 2; got {window}")
        if not 0 < holdout < 1:
            raise ValueError(f"holdout must be in (0, 1); got {holdout}")
        if search_trials < 0:
            raise ValueError(f"search_trials must be >= 0; got {search_trials}")
        if drift_detector not in DRIFT_DETECTORS:
            raise ValueError(f"drift_detector must be one of {DRIFT_DETECTORS}; got {drift_detector!r}")
        if drift_min_rows < 2:
            raise ValueError(f"drift_min_rows must be at least 2; got {drift_min_rows}")
        self.river_model = river_model
        self.refit_every = refit_every
        self.refit_every_seconds = refit_every_seconds
        self.window = window
        self.lag = lag
        self.lgbm_params = lgbm_params
        self.num_boost_round = num_boost_round
        self.gate_metric = gate_metric
        self.gate_threshold = gate_threshold
        self.holdout = holdout
        self.registry_dir = registry_dir
        self.keep = keep
        self.blend_decay = blend_decay
        self.blend_learning_rate = blend_learning_rate
        self.blend_l2 = blend_l2
        self.background = background
        self.seed = seed
        self.lightgbm_view = lightgbm_view
        self.search_trials = search_trials
        self.refit_whole = refit_whole
        self.drift_detector = drift_detector
        self.drift_min_rows = drift_min_rows
        self.lightgbm_fields = lightgbm_fields
        self._river_skips = frozenset(lightgbm_fields or ())

        self.river = make_model() if river_model is None else river_model.clone()
        self.lightgbm: LightGBMMember | None = None
        self.lightgbm_version: int | None = None
        self.registry = ModelRegistry(registry_dir, keep)
        self._gate = Gate(gate_metric, gate_threshold)
        self._blend = HedgedStack(blend_learning_rate, blend_l2, blend_decay)
        self._queue = RefitQueue(background)
        self._rows: deque[Row] = deque(maxlen=window)
        self._n_learned = 0
        self._next_version = 1
        self._last_refit_ts: float | None = None
        self._losses = dict.fromkeys((*MEMBERS, "ensemble"), 0.0)
        self._counts = dict.fromkeys((*MEMBERS, "ensemble"), 0)
        self._last: tuple[dict, dict[str, float | None], float] | None = None
        self._slices: PickledSlices | None = None  # process refits: the window pickled as it is learned
        self._fitted_by_flow = {"timeout": 0, "worker_died": 0}
        self._window_bounds = WindowBounds()  # a cache, not state
        self._lightgbm_trained_until: int | None = None
        self._detectors = {name: drift.ADWIN() for name in MEMBERS} if drift_detector else {}
        self._drift: Drift | None = None  # detected, its refit not yet started
        self._drift_since: int | None = None  # the first label refits train on, after a drift
        self._triggers: dict[str, int] = {}

    @classmethod
    def _unit_test_params(cls):
        yield {
            "refit_every": 50,
            "window": 150,
            "lag": 10,
            "num_boost_round": 10,
            "lgbm_params": {"min_data_in_leaf": 5},
        }

    @property
    def _multiclass(self) -> bool:
        return False

    def predict_proba_one(self, x: dict) -> dict[bool, float]:
        score = self.predict_proba_one_detailed(x).score
        return {False: 1.0 - score, True: score}

    def predict_proba_one_detailed(self, x: Mapping) -> Scored:
        """The ensemble's score with each member's score, version and weight (what a prediction publishes)."""
        scores = self._member_scores(x)
        score, weights = self._blend.blend(scores)
        self._last = (dict(x), scores, score)
        return Scored(
            score=score,
            scores=scores,
            versions={"river": self._n_learned, "lightgbm": self.lightgbm_version},
            weights=weights,
        )

    def learn_one(
        self,
        x: dict,
        y: bool,
        *,
        ts: datetime | str | float | None = None,
        source: Any = None,
        features_version: str | None = None,
        offset: int | None = None,
    ) -> None:
        """Learn one labelled event; `ts` (datetime, ISO string or epoch seconds), `source` (where the event
        came from, recorded as it is: the registry names the first and last of each refit's window) and
        `features_version` are optional metadata that bound the refit windows in the registry. `offset` is
        a plain position given as the source."""
        if source is None:
            source = offset
        self._queue.resume()
        y = bool(y)
        x = dict(x)
        # Nothing has learned since `x` was scored (learning clears `_last`): its scores and blend still hold.
        if self._last is not None and self._last[0] == x:
            _, scores, score = self._last
        else:
            scores = self._member_scores(x)
            score = self._blend.combine(scores)
        self._last = None
        self._track(scores, score, y)
        self._blend.update(scores, y)
        self.river.learn_one(self._for_river(x), y)
        self._n_learned += 1
        if self._detectors:
            self._watch_drift(scores, y)
        seconds = _epoch_seconds(ts)
        row = self._lightgbm_row(x)
        self._rows.append(Row(row, y, self._n_learned, seconds, source, features_version))
        self._window_bounds.seal(self._rows)
        if self.background == "process":
            if self._slices is None:
                self._slices = PickledSlices(self.window, self._first_position_needed)
            self._slices.add(self._n_learned, row)
        trigger = self._refit_trigger(seconds)
        if trigger:
            self._start_refit(features_version, trigger)
        for job, result in self._queue.due(self._n_learned):
            if result.fitted_by_flow:
                self._fitted_by_flow[result.fitted_by_flow] = self._fitted_by_flow.get(result.fitted_by_flow, 0) + 1
            self.registry.save(result.record(job), result.member)
            if result.accepted:
                self.lightgbm, self.lightgbm_version = result.member, result.version
                self._lightgbm_trained_until = result.trained_until
                if "lightgbm" in self._detectors:  # a new model's errors are a new stream
                    self._detectors["lightgbm"] = drift.ADWIN()

    def metrics(self) -> dict[str, dict[str, float]]:
        """Prequential log loss of each member and of the ensemble, each over the events it scored: the
        ensemble's includes those before the first accepted refit, where River scores alone, so compare the
        blend with LightGBM on the events both scored (see the class's example)."""
        return {
            name: {"log_loss": self._losses[name] / n if n else math.nan, "n": n} for name, n in self._counts.items()
        }

    def health(self) -> dict[str, Any]:
        """How the refits fare: counts by gate decision, the latest refit, the refits the flow had to fit itself
        (its background fit timed out or its worker process died) and the registry's write failures."""
        latest = self.registry.versions()[-1:] or [None]
        keys = ("version", "accepted", "rejected_by", "reason", "trigger")
        last = None if latest[0] is None else {k: latest[0].get(k) for k in keys}
        return {
            "accepted": self.registry.accepted,
            "rejected": self.registry.rejected,
            "triggers": dict(self._triggers),
            "last": last,
            "fitted_by_flow": dict(self._fitted_by_flow),
            "blend": self._blend.describe(MEMBERS) if self.lightgbm else None,
            **self.registry.write_health(),
        }

    @property
    def pending_refits(self) -> list[int]:
        """Versions of the refits started but not yet in effect."""
        return [job.version for job in self._queue.pending]

    @property
    def refitting(self) -> bool:
        """Whether a background fit is running right now."""
        return bool(self._queue.running())

    def prepare(self, xs: list[Mapping]) -> None:
        """Score a micro-batch with LightGBM in one call before scoring it event by event.

        One batched call costs a few µs a row against ~100 µs for single rows. The scores are used only while
        the model that made them is in force: after a refit takes effect mid-batch, the batch is scored again
        with the new model, so the result is the same as without `prepare`.
        """
        self._prepared = None
        if not xs:
            return
        if self.lightgbm is None:  # kept so that a first model taking effect mid-batch scores the rest at once
            self._prepared = (None, {id(x): (x, None) for x in xs}, xs)
        else:
            scores = self.lightgbm.predict_many(list(map(self._lightgbm_row, xs)))
            self._prepared = (
                self.lightgbm_version,
                {id(x): (x, float(p)) for x, p in zip(xs, scores, strict=True)},
                xs,
            )

    def _member_scores(self, x: Mapping) -> dict[str, float | None]:
        proba = self.river.predict_proba_one(self._for_river(x))
        river = float(proba.get(True, 0.5)) if proba else 0.5
        return {"river": river, "lightgbm": self._lightgbm_score(x)}

    def _lightgbm_score(self, x: Mapping) -> float | None:
        if self.lightgbm is None:
            return None
        prepared = getattr(self, "_prepared", None)
        if prepared is not None:
            version, batch, xs = prepared
            hit = batch.get(id(x))
            if hit is not None and hit[0] is x:
                if version == self.lightgbm_version:
                    return hit[1]
                # A refit took effect mid-batch: score the batch again, in one call, with the model in force.
                self.prepare(xs)
                return self._prepared[1][id(x)][1]
        return self.lightgbm.predict_proba(self._lightgbm_row(x))

    def _lightgbm_row(self, x: Mapping) -> Mapping:
        return x if self.lightgbm_view is None else self.lightgbm_view(x)

    def _for_river(self, x: Mapping) -> Mapping:
        skips = self._river_skips
        return {k: v for k, v in x.items() if k not in skips} if skips else x

    def _track(self, scores: dict[str, float | None], score: float, y: bool) -> None:
        for name, p in (*scores.items(), ("ensemble", score)):
            if p is not None:
                self._losses[name] += clipped_log_loss(y, p)
                self._counts[name] += 1

    def _watch_drift(self, scores: dict[str, float | None], y: bool) -> None:
        """Feed each member's absolute error to its detector; a detected rise (not a fall: a better model also
        changes the errors) marks the change point, and a refit on the rows since then is due once
        `drift_min_rows` of them are in. Later detections wait until that refit has started."""
        for name, p in scores.items():
            if p is None:
                continue
            detector = self._detectors[name]
            before = detector.estimation
            detector.update(abs(float(y) - p))
            if detector.drift_detected and detector.estimation > before and self._drift is None:
                # A change already acted on stays the oldest row refits train on: a detector that sees an
                # older change later (River's error rises more slowly) must not bring the old rows back.
                since = max(self._n_learned - int(detector.width) + 1, self._drift_since or 0)
                self._drift = Drift(
                    since=since,
                    refit_at=max(self._n_learned, since + self.drift_min_rows - 1),
                    reason=(
                        f"drift: ADWIN saw {name}'s mean error rise from {before:.4f} to {detector.estimation:.4f} "
                        f"at label {self._n_learned} (change from label {since})"
                    ),
                )

    def _refit_trigger(self, ts: float | None) -> str | None:
        """What starts a refit at this label, if anything: a drift, the label count or the event time."""
        if self._drift is not None and self._drift.refit_at == self._n_learned:
            return self._drift.reason
        if self.refit_every and self._n_learned % self.refit_every == 0:
            return "schedule"
        if self.refit_every_seconds and ts is not None:
            if self._last_refit_ts is None:
                self._last_refit_ts = ts
            if ts - self._last_refit_ts >= self.refit_every_seconds:
                return "time"
        return None

    def _start_refit(self, features_version: str | None, trigger: str = "schedule") -> None:
        rows = tuple(self._rows)
        self._last_refit_ts = rows[-1].ts if rows[-1].ts is not None else self._last_refit_ts
        if self._drift is not None and self._drift.refit_at <= self._n_learned:
            self._drift_since, self._drift = self._drift.since, None
        if self._drift_since is not None:
            # The rows before a detected change are of the old concept: refits train on those after it until
            # the window has moved past the change.
            skip = self._drift_since - rows[0].position
            if skip > 0:
                rows = rows[skip:]
            else:
                self._drift_since = None
        kind = "drift" if trigger.startswith("drift") else trigger
        self._triggers[kind] = self._triggers.get(kind, 0) + 1
        job = RefitJob(
            version=self._next_version,
            started_at=self._n_learned,
            effect_at=self._n_learned + self.lag,
            rows=tuple(map(_X, rows)),
            labels=tuple(map(_Y, rows)),
            window=self._window_bounds.of(rows),
            features_version=features_version,
            params=dict(self.lgbm_params) if self.lgbm_params else None,
            num_boost_round=self.num_boost_round,
            holdout=self.holdout,
            gate=self._gate,
            seed=self.seed,
            trials=self.search_trials,
            refit_whole=self.refit_whole,
            trigger=trigger,
            champion=self.lightgbm,
            champion_version=self.lightgbm_version,
            champion_last_position=self._lightgbm_trained_until,
        )
        self._next_version += 1
        self._queue.submit(job, dict(self._slices.blobs) if self._slices is not None else None)

    def _first_position_needed(self) -> int:
        """The oldest row the window or a pending refit still holds: its slices must stay pickled."""
        firsts = [job.window["first_position"] for job in self._queue.pending if job.rows]
        return min([self._n_learned - self.window + 1, *firsts])

    def _plain_state(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_last"] = None
        state["_prepared"] = None
        state["_slices"] = None
        del state["_window_bounds"]
        return state

    def __getstate__(self) -> dict[str, Any]:
        """The state with its windows (the rows and those of pending refits) as pickled slices: the slices
        made as rows were learned are copied as bytes (~10 ms where pickling the dicts took ~75 ms)."""
        state = self._plain_state()
        pickled = self._slices.blobs if self._slices is not None else {}
        rows = self._rows
        first = rows[0].position if rows else None
        state["_rows"] = (
            PackedRows.pack(tuple(map(_X, rows)), first, pickled),
            tuple(map(_Y, rows)),
            tuple(map(_POSITION, rows)),
            tuple(map(_TS, rows)),
            tuple(map(_SOURCE, rows)),
            tuple(map(_VERSION, rows)),
        )
        state["_queue"] = self._queue.packed(pickled)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        packed, *columns = state["_rows"]
        state["_rows"] = deque(map(Row, packed.unpack(), *columns), maxlen=state["window"])
        self.__dict__.update(state, _window_bounds=WindowBounds())
        self._queue.unpack()

    def __deepcopy__(self, memo: dict) -> Ensemble:
        """A copy shares the window's rows, which are never mutated (`learn_one` stores its own copy of `x`):
        copying a model costs its River member and counters, not the tens of thousands of dicts of its window."""
        for row in self._rows:
            memo[id(row)] = row
        for job in self._queue.pending:
            memo[id(job.rows)], memo[id(job.labels)] = job.rows, job.labels
        copied = self.__class__.__new__(self.__class__)
        memo[id(self)] = copied
        copied.__dict__.update(copy.deepcopy(self._plain_state(), memo), _window_bounds=WindowBounds())
        return copied


_X, _Y, _POSITION, _TS, _SOURCE, _VERSION = map(
    operator.attrgetter, ("x", "y", "position", "ts", "source", "features_version")
)


def _epoch_seconds(ts: datetime | str | float | None) -> float | None:
    if ts is None or isinstance(ts, int | float):
        return ts
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    return ts.timestamp()
