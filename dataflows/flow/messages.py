"""The messages that flow through eddy, as frozen dataclasses (their byte forms live in `dataflows.flow.codec`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message was read: the dead letter's headers and the lag figures need it."""

    topic: str
    partition: int
    offset: int
    kafka_ts_ms: int | None = None

    @property
    def at(self) -> str:
        """`topic/partition@offset`: how the model registry names where a refit window begins and ends."""
        return f"{self.topic}/{self.partition}@{self.offset}"


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded, validated event: `ts` is epoch milliseconds (UTC); `fields` holds the declared fields."""

    event_id: str
    ts: int
    fields: dict[str, Any]
    label: bool | None
    origin: Origin
    raw: bytes | None = None
    key: bytes | None = None

    def as_row(self) -> dict[str, Any]:
        """The form the feature engine takes."""
        return {"event_id": self.event_id, "ts": self.ts, **self.fields}


@dataclass(frozen=True, slots=True)
class Label:
    """A delayed label; `ts` places it in event time (its `ts` field, else the Kafka message timestamp)."""

    event_id: str
    label: bool
    ts: int
    origin: Origin
    ts_from_kafka: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message eddy refused: the original bytes, why, at which stage, and where it came from."""

    value: bytes | None
    key: bytes | None
    error: str
    stage: str
    origin: Origin
    reason: str = "invalid"


@dataclass(frozen=True, slots=True)
class FeaturedEvent:
    """An event with its features, on its way to the learner (which scores it, then learns from it)."""

    event: Event
    features: dict[str, Any]
    features_version: str


@dataclass(frozen=True, slots=True)
class Release:
    """One micro-batch released by the ordering step, on its way to the learner: its place in the canonical
    sequence. `items` are events, labels and dead letters in canonical order; each event waits there for
    its features from the feature shards named in `parts` (see `dataflows.flow.shards.FeatureJoin`)."""

    seq: int
    items: list
    parts: tuple[str, ...]
    families: tuple[str | None, ...]
    version: str
    names: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ShardBatch:
    """The events of release `seq` whose entities fall in one shard of one feature family, as rows."""

    seq: int
    key: str
    family: str | None
    rows: list[dict[str, Any]]
    version: str


@dataclass(frozen=True, slots=True)
class FeaturePart:
    """One shard's features for its events of release `seq` (by event_id)."""

    seq: int
    key: str
    family: str | None
    features: dict[str, dict[str, Any]]
    version: str


@dataclass(frozen=True, slots=True)
class Prediction:
    event_id: str
    ts: int
    score: float
    scores: dict[str, float]
    model: dict[str, Any]
    features_version: str
    label_inline: bool
    features: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Metrics:
    """A metrics report: what the metrics topic carries every N events and every T seconds."""

    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert rule firing or clearing (`dataflows.watch.alerts`): what the alerts topic carries."""

    figures: dict[str, Any] = field(default_factory=dict)
