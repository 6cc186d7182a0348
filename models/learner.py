"""Test-then-train with delayed labels: score every event first, learn its label whenever it comes.

Nothing here knows where events come from. The caller passes event ids, event times in epoch
milliseconds, feature dicts and bool labels; `state()` gives what it holds as plain Python (dicts, a heap, a
deque, the River model and quality trackers, which pickle) and `from_state` rebuilds a learner from it.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from river import base

from models.metrics import QualityTracker

UNTRAINED_SCORE = 0.5

COUNTERS = (
    "events_scored",
    "events_duplicate",
    "labels_inline",
    "labels_delayed",
    "labels_early",
    "labels_unmatched",
    "labels_expired",
    "labels_default",
)

STATE = (
    "model",
    "label_horizon_ms",
    "window",
    "tracker",
    "members",
    "counters",
    "now_ms",
    "pending_events",
    "event_deadlines",
    "pending_labels",
    "label_deadlines",
)
"""The attributes that make up a learner: `state()` gives them by name."""

DEADLINE_SLACK = 64
"""Stale entries a deadline queue may hold beyond its live ones: `event_deadlines` never holds more than
2 × `pending_events` + DEADLINE_SLACK entries, nor `label_deadlines` more than 2 × `pending_labels` + it."""


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """What scoring one event gave: the probability of True before learning, and what was learned.

    >>> from models.pipelines import make_model
    >>> OnlineLearner(make_model(), label_horizon_ms=1000).score("e1", 0, {"amount": 12.5}, True)
    ScoreResult(event_id='e1', score=0.5, label_inline=True, learned=True)

    """

    event_id: str
    score: float
    label_inline: bool
    learned: bool
    scores: dict | None = field(default=None, repr=False, compare=False)
    versions: dict | None = field(default=None, repr=False, compare=False)


class OnlineLearner:
    """A River classifier learning from every labelled event, scored before it learns (test-then-train).

    `score` predicts first. An inline label is learned right away. Otherwise the event's features and
    score wait under its id until `label` brings the label: the model then learns the features the event
    had when it was scored, and the quality figures count the score given then. A label that arrives
    before its event waits too, and is learned as soon as the event is scored (topics are not ordered
    with each other).

    Time is event time: the latest `ts_ms` seen, or passed to `expire`. An event whose label has not
    come `label_horizon_ms` after its `ts_ms` is dropped and counted in `labels_expired`, or, with a
    `label_default`, learned as that label (implicit negatives: fraud and churn labels come only for the
    positives) with the features and scores it had when it was scored, and counted in `labels_default`;
    events expire in the order of their deadlines (ties by id), so any batching gives the same model. A label whose
    event has not come within `label_horizon_ms` of its arrival (unknown, expired or already labelled)
    is dropped and counted in `labels_unmatched`. So pending state is bounded by the horizon.

    What pending state costs: an event waiting for its label keeps its features, score, member scores
    and meta, and one deadline entry. With the transactions SQL's 32 numeric features that is ~450 bytes
    pickled (feature names shared between events, as the feature engine gives them within a micro-batch;
    ~960 bytes if every event had its own name strings) and ~2.3 KB in memory. Pending events number at
    most `label_horizon_ms` × the rate of events whose labels have not come: at the default 24 h horizon,
    10 such events a second keep 864,000 events, ~390 MB pickled into every snapshot. The deadline queues
    are rebuilt from the pending entries once stale ones (labelled events) pass half of them, so they hold
    at most 2 × the pending entries + `DEADLINE_SLACK`.

    A model that has never learned returns no probabilities in River (trees) or 0.5 (logistic
    regression); the score is then `UNTRAINED_SCORE` (0.5). A model that has seen only False gives 0.0.

    Parameters
    ----------
    model
        A River binary classifier, e.g. `models.make_model()`.
    label_horizon_ms
        How long, in event time, an event waits for its label (and a label for its event).
    window
        How many of the latest labels the rolling quality figures cover.
    label_default
        The label an event that reaches its horizon without one is learned as; None (the default) drops it.
        It is configuration, not state: `from_state` takes it afresh.

    Examples
    --------

    Labels come 50 events late:

    >>> from river import datasets
    >>> from models.pipelines import make_model
    >>> learner = OnlineLearner(make_model(), label_horizon_ms=60_000)
    >>> events = list(datasets.Phishing().take(600))
    >>> for i, (x, y) in enumerate(events):
    ...     _ = learner.score(f"e{i}", i * 1000, x, None)
    ...     if i >= 50:
    ...         _ = learner.label(f"e{i - 50}", events[i - 50][1])
    >>> report = learner.report()
    >>> print(report["labels_delayed"], report["labels_expired"])
    550 0
    >>> print(f"{report['roc_auc']:.3f} ± {report['roc_auc_max_error']:.3f}")
    0.916 ± 0.005
    >>> _ = learner.expire(700_000)
    >>> print(learner.report()["labels_expired"])
    50

    """

    def __init__(
        self, model: base.Classifier, label_horizon_ms: int, window: int = 1000, label_default: bool | None = None
    ) -> None:
        _check_label(label_default)
        if label_horizon_ms < 0:
            raise ValueError(f"OnlineLearner: label_horizon_ms must be >= 0, got {label_horizon_ms}")
        self.model = model
        self.label_horizon_ms = label_horizon_ms
        self.window = window
        self.label_default = label_default
        self.tracker = QualityTracker(window)
        self.members: dict[str, QualityTracker] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.now_ms: int | None = None
        self.pending_events: dict[str, tuple[dict, float, int, dict, dict | None]] = {}  # x, p, ts, scores, meta
        self.event_deadlines: list[tuple[int, str]] = []  # a heap; entries of labelled events are stale
        self.pending_labels: dict[str, tuple[bool, int | None]] = {}  # label, deadline
        self.label_deadlines: deque[tuple[int | None, str]] = deque()  # by deadline; matched ones are stale

    def predict(self, x: dict) -> float:
        """The model's probability of True for `x`, without learning; `UNTRAINED_SCORE` if it has none."""
        proba = self.model.predict_proba_one(x)
        if not proba:
            return UNTRAINED_SCORE
        return float(proba.get(True, 0.0))

    def prepare(self, xs: list[dict]) -> None:
        """Let the model score a micro-batch ahead where it can do so faster (the Ensemble's LightGBM);
        the scores are the same as without it."""
        prepare = getattr(self.model, "prepare", None)
        if prepare is not None:
            prepare(xs)

    def predict_detailed(self, x: dict) -> tuple[float, dict[str, float | None], dict]:
        """The score, each member's score and each member's version (a model with members, e.g. the
        `Ensemble`, reports them; a plain River model is its own single member, `river`)."""
        detailed = getattr(self.model, "predict_proba_one_detailed", None)
        if detailed is None:
            p = self.predict(x)
            return p, {"river": p}, {"river": self.labels_learned}
        scored = detailed(x)
        return float(scored.score), dict(scored.scores), dict(scored.versions)

    def score(
        self, event_id: str, ts_ms: int, x: dict, label: bool | None = None, meta: dict | None = None
    ) -> ScoreResult:
        """Score one event, then learn its label if it is inline or already arrived.

        `meta` (e.g. `ts`, `source`, `features_version`) is passed to `learn_one` of models that take it."""
        _check_label(label)
        self._advance(ts_ms)
        self._expire()
        p, scores, versions = self.predict_detailed(x)
        self.counters["events_scored"] += 1
        early = self.pending_labels.pop(event_id, None)
        if label is not None:
            self._learn(x, label, p, scores, meta)
            self.counters["labels_inline"] += 1
            if early is not None:
                self.counters["labels_unmatched"] += 1
        elif early is not None:
            self._learn(x, early[0], p, scores, meta)
            self.counters["labels_early"] += 1
        else:
            if event_id in self.pending_events:
                self.counters["events_duplicate"] += 1
            self.pending_events[event_id] = (dict(x), p, ts_ms, scores, meta)
            heapq.heappush(self.event_deadlines, (ts_ms + self.label_horizon_ms, event_id))
        learned = label is not None or early is not None
        self._compact()
        return ScoreResult(
            event_id, p, label_inline=label is not None, learned=learned, scores=scores, versions=versions
        )

    def label(self, event_id: str, y: bool) -> bool:
        """Learn a delayed label; True if its event was waiting, False if the label now waits instead."""
        _check_label(y)
        if y is None:
            raise TypeError("OnlineLearner.label: the label must be a bool, got None")
        entry = self.pending_events.pop(event_id, None)
        if entry is not None:
            x, p, _, scores, meta = entry
            self._learn(x, y, p, scores, meta)
            self.counters["labels_delayed"] += 1
            self._compact()
            return True
        if self.pending_labels.pop(event_id, None) is not None:
            self.counters["labels_unmatched"] += 1
        deadline = None if self.now_ms is None else self.now_ms + self.label_horizon_ms
        self.pending_labels[event_id] = (y, deadline)
        self.label_deadlines.append((deadline, event_id))
        self._compact()
        return False

    @property
    def labels_learned(self) -> int:
        """How many labels the model has learned, implicit ones (`label_default`) included."""
        counters = self.counters
        return (
            counters["labels_inline"]
            + counters["labels_delayed"]
            + counters["labels_early"]
            + counters["labels_default"]
        )

    def expire(self, now_ts_ms: int) -> int:
        """Drop (or, with a `label_default`, learn) what waited longer than the horizon by event time
        `now_ts_ms`; how many events reached their horizon."""
        self._advance(now_ts_ms)
        expired = self._expire()
        self._compact()
        return expired

    def report(self) -> dict:
        """Quality figures, counters and the sizes of the pending state, by name."""
        return {
            **self.tracker.report(),
            **self.counters,
            "pending_events": len(self.pending_events),
            "pending_labels": len(self.pending_labels),
            "members": {name: tracker.report() for name, tracker in sorted(self.members.items())},
        }

    def state(self) -> dict[str, Any]:
        """Everything the learner holds, by name: the model, the quality trackers, the counters and what waits
        for a label. The values are the learner's own objects, so the state is pickled or copied before the
        learner goes on."""
        return {name: getattr(self, name) for name in STATE}

    @classmethod
    def from_state(cls, state: dict[str, Any], label_default: bool | None = None) -> OnlineLearner:
        """The learner `state` (from `state()`) describes, learning `label_default` at the horizon."""
        _check_label(label_default)
        learner = cls.__new__(cls)
        learner.__dict__.update({name: state[name] for name in STATE}, label_default=label_default)
        return learner

    def _learn(self, x: dict, y: bool, p: float, scores: dict, meta: dict | None) -> None:
        if meta and hasattr(self.model, "predict_proba_one_detailed"):
            self.model.learn_one(x, y, **meta)
        else:
            self.model.learn_one(x, y)
        self.tracker.update(y, p)
        if len(scores) > 1:
            for name, score in scores.items():
                if score is not None:
                    tracker = self.members.get(name)
                    if tracker is None:
                        tracker = self.members[name] = QualityTracker(self.window)
                    tracker.update(y, score)

    def _advance(self, ts_ms: int) -> None:
        if self.now_ms is None:
            self.now_ms = ts_ms
            deadline = ts_ms + self.label_horizon_ms
            self.pending_labels = {eid: (y, deadline) for eid, (y, _) in self.pending_labels.items()}
            self.label_deadlines = deque((deadline, eid) for _, eid in self.label_deadlines)
        elif ts_ms > self.now_ms:
            self.now_ms = ts_ms

    def _expire(self) -> int:
        now, horizon, expired = self.now_ms, self.label_horizon_ms, 0
        default = self.label_default
        deadlines = self.event_deadlines
        while deadlines and deadlines[0][0] < now:
            deadline, event_id = heapq.heappop(deadlines)
            entry = self.pending_events.get(event_id)
            if entry is not None and entry[2] + horizon == deadline:
                del self.pending_events[event_id]
                expired += 1
                if default is not None:
                    x, p, _, scores, meta = entry
                    self._learn(x, default, p, scores, meta)
        self.counters["labels_default" if default is not None else "labels_expired"] += expired
        labels = self.label_deadlines
        while labels and labels[0][0] < now:
            deadline, event_id = labels.popleft()
            entry = self.pending_labels.get(event_id)
            if entry is not None and entry[1] == deadline:
                del self.pending_labels[event_id]
                self.counters["labels_unmatched"] += 1
        return expired

    def _compact(self) -> None:
        """Rebuild a deadline queue from its pending entries once it holds more than 2 × them +
        `DEADLINE_SLACK` (stale entries: labelled or replaced events, matched or replaced labels). More than
        half of a rebuilt queue is dropped, so a rebuild costs O(1) per stale entry, amortised. `_expire`
        skips stale entries, and a rebuild keeps every live one, so the same events and labels expire."""
        if len(self.event_deadlines) > 2 * len(self.pending_events) + DEADLINE_SLACK:
            horizon = self.label_horizon_ms
            self.event_deadlines = [(entry[2] + horizon, eid) for eid, entry in self.pending_events.items()]
            heapq.heapify(self.event_deadlines)
        if len(self.label_deadlines) > 2 * len(self.pending_labels) + DEADLINE_SLACK:
            # A label enters `pending_labels` (popped first if there) as its entry is appended, and deadlines
            # never decrease, so the dict's order is the deadlines' order.
            self.label_deadlines = deque((deadline, eid) for eid, (_, deadline) in self.pending_labels.items())


def _check_label(label: object) -> None:
    if label is not None and not isinstance(label, bool):
        raise TypeError(f"OnlineLearner: a label must be a bool, got {label!r} ({type(label).__name__})")
