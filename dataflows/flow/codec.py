"""Bytes to messages and back: decoding and validating what arrives, encoding what eddy publishes.

Every way a message can be wrong has a reason code (the dead-letter counters are keyed by it) and a
sentence that names the problem, so a person reading the dead-letters topic knows what to fix.

A `ts` from a clock running ahead would move the event-time watermark past the rest of the stream and make
every later event late, so a message whose `ts` is more than `max_clock_skew_ms` ahead of when it was
produced is refused as `future_ts`. When it was produced is the earlier of its Kafka timestamp and this
machine's clock: the Kafka timestamp is the producer's clock (CreateTime) or the broker's (LogAppendTime),
and a producer whose clock is wrong may have stamped both; no clock, and so no message, is in the future.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage

from dataflows.flow.messages import Alert, DeadLetter, Event, Label, Metrics, Origin, Prediction
from features.timestamps import iso, to_ms

MIN_TS_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_TS_MS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_EVENT_ID_LENGTH = 256

REASONS = (
    "oversize",
    "not_json",
    "not_object",
    "missing_field",
    "invalid_event_id",
    "invalid_ts",
    "absurd_ts",
    "future_ts",
    "wrong_type",
    "empty_text",
    "not_finite",
    "invalid_label",
    "duplicate",
    "late",
    "kafka_error",
)


class Invalid(ValueError):
    """A message that cannot be accepted; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Codec:
    """Decodes the events and labels topics against the declared fields."""

    events_topic: str
    labels_topic: str
    fields: dict[str, str]
    max_message_bytes: int = 65_536
    max_clock_skew_ms: int = 1_800_000
    clock: Callable[[], float] = time.time

    def decode(self, msg: KafkaSourceMessage) -> Event | Label | DeadLetter:
        origin = Origin(msg.topic or "", msg.partition or 0, msg.offset or 0, _kafka_ts(msg))
        try:
            obj = self._load(msg.value)
            if msg.topic == self.labels_topic:
                return self._label(obj, origin)
            return self._event(obj, origin, msg.value, msg.key)
        except Invalid as exc:
            return DeadLetter(msg.value, msg.key, str(exc), "decode", origin, exc.reason)

    def _load(self, value: bytes | None) -> dict:
        if value is None:
            raise Invalid("not_json", "empty message (no value)")
        if len(value) > self.max_message_bytes:
            raise Invalid("oversize", f"message of {len(value)} bytes is over the limit of {self.max_message_bytes}")
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise _explain_json_error(value, exc) from None
        if not isinstance(obj, dict):
            raise Invalid("not_object", f"expected a JSON object, got {_json_type(obj)}")
        return obj

    def _event(self, obj: dict, origin: Origin, raw: bytes, key: bytes | None) -> Event:
        event_id = _event_id(obj)
        ts = self._not_ahead(parse_ts(obj, "ts"), origin, "'ts'")
        values = {name: _field(obj, name, kind) for name, kind in self.fields.items()}
        return Event(event_id, ts, values, _label(obj, required=False), origin, raw, key)

    def _label(self, obj: dict, origin: Origin) -> Label:
        event_id = _event_id(obj)
        label = _label(obj, required=True)
        if "ts" in obj:
            return Label(event_id, label, self._not_ahead(parse_ts(obj, "ts"), origin, "'ts'"), origin)
        if origin.kafka_ts_ms is None:
            raise Invalid("invalid_ts", "label has no 'ts' and its Kafka message has no timestamp")
        ts = self._not_ahead(origin.kafka_ts_ms, replace(origin, kafka_ts_ms=None), "its Kafka timestamp")
        return Label(event_id, label, ts, origin, ts_from_kafka=True)

    def _not_ahead(self, ts: int, origin: Origin, what: str) -> int:
        """`ts`, unless it is more than the allowed clock skew ahead of when its message was produced."""
        skew = self.max_clock_skew_ms
        if not skew:
            return ts
        now = int(self.clock() * 1000)
        kafka = origin.kafka_ts_ms
        produced, by = (kafka, "its Kafka timestamp") if kafka is not None and kafka <= now else (now, "this clock")
        if ts - produced > skew:
            raise Invalid(
                "future_ts",
                f"{what} {iso(ts)} is {_duration(ts - produced)} ahead of {by} ({iso(produced)}), more than "
                f"[flow] max_clock_skew_ms ({skew} ms): the producer's clock is wrong, or its time zone",
            )
        return ts


def parse_ts(obj: dict, name: str) -> int:
    """Epoch milliseconds from ISO-8601 with a timezone, or from epoch milliseconds."""
    if name not in obj:
        raise Invalid("missing_field", f"missing field '{name}'")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(
            "invalid_ts",
            f"'{name}' must be ISO-8601 text with a timezone or epoch milliseconds, got {_json_type(value)} {value!r}",
        )
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Invalid("invalid_ts", f"'{name}' is not ISO-8601: {value!r}") from None
        if parsed.tzinfo is None:
            raise Invalid("invalid_ts", f"'{name}' has no timezone: {value!r} (add Z or +00:00)")
        ms = to_ms(parsed)  # exact, as the feature backfill reads it (float seconds * 1000 can land 1 ms early)
    else:
        ms = value
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise Invalid(
            "absurd_ts",
            f"'{name}' {value!r} is outside 2000-01-01 .. 2100-01-01 (epoch seconds instead of milliseconds?)",
        )
    return ms


def _duration(ms: int) -> str:
    """A rough, readable length of time: '3 h 12 min', '70 years'."""
    minutes = ms // 60_000
    if minutes >= 2 * 525_960:
        return f"{minutes // 525_960} years"
    if minutes >= 2 * 1_440:
        return f"{minutes // 1_440} days"
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{ms / 60_000:.1f} min"


def _event_id(obj: dict) -> str:
    if "event_id" not in obj:
        raise Invalid("missing_field", "missing field 'event_id'")
    value = obj["event_id"]
    if not isinstance(value, str):
        raise Invalid("invalid_event_id", f"'event_id' must be a string, got {_json_type(value)} {value!r}")
    if not value or len(value) > MAX_EVENT_ID_LENGTH:
        raise Invalid(
            "invalid_event_id", f"'event_id' must have 1 to {MAX_EVENT_ID_LENGTH} characters, got {len(value)}"
        )
    return value


def _label(obj: dict, required: bool) -> bool | None:
    if "label" not in obj or obj["label"] is None:
        if required:
            raise Invalid("missing_field", "missing field 'label'")
        return None
    value = obj["label"]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise Invalid("invalid_label", f"'label' must be true/false or 0/1, got {_json_type(value)} {value!r}")


def _field(obj: dict, name: str, kind: str) -> Any:
    if name not in obj:
        raise Invalid("missing_field", f"missing field '{name}' (declared as {kind} in [fields])")
    value = obj[name]
    if kind == "text":
        return _text(name, value)
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, str):
            return value
    elif kind == "double":
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise Invalid("not_finite", f"field '{name}' is {value}")
            return float(value)
    elif kind == "bigint":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "boolean" and isinstance(value, bool):
        return value
    raise Invalid("wrong_type", f"field '{name}' must be {kind}, got {_json_type(value)} {value!r:.80}")


def _text(name: str, value: Any) -> str:
    """A text field's value: a string with something in it, since the learner has nothing to learn from an
    empty one (and a null text is far more often a producer's bug than a message that says nothing)."""
    if not isinstance(value, str):
        if value is None:
            raise Invalid("empty_text", f"text field '{name}' is null; send the message's text")
        raise Invalid("wrong_type", f"text field '{name}' must be a string, got {_json_type(value)} {value!r:.80}")
    if not value:
        raise Invalid("empty_text", f"text field '{name}' is empty")
    if value.isspace():
        raise Invalid("empty_text", f"text field '{name}' is empty: {len(value)} characters, all whitespace")
    return value


class _NotFinite:
    def __init__(self, text: str):
        self.text = text


def _explain_json_error(value: bytes, exc: Exception) -> Invalid:
    """orjson refuses NaN and Infinity like any syntax error; say which field carries one."""
    constants: list[str] = []

    def constant(text: str) -> _NotFinite:
        constants.append(text)
        return _NotFinite(text)

    try:
        obj = json.loads(value, parse_constant=constant)
    except (ValueError, UnicodeDecodeError):
        obj = None
    if isinstance(obj, dict):
        bad = {k: v.text for k, v in obj.items() if isinstance(v, _NotFinite)}
        if bad:
            name, text = next(iter(bad.items()))
            return Invalid("not_finite", f"field '{name}' is {text}")
    # Python's parser also takes what orjson rightly refuses, a lone UTF-16 surrogate ("\ud800") for one:
    # only a NaN or an infinity it met makes the message not_finite.
    if constants or "infinity" in str(exc):
        return Invalid("not_finite", f"a number is NaN or infinite: {exc}")
    return Invalid("not_json", f"not valid JSON: {exc}")


def _json_type(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _kafka_ts(msg: KafkaSourceMessage) -> int | None:
    if msg.timestamp is None:
        return None
    kind, ts = msg.timestamp
    return ts if kind != 0 and ts >= 0 else None


def encode_prediction(prediction: Prediction) -> KafkaSinkMessage:
    body: dict[str, Any] = {
        "event_id": prediction.event_id,
        "ts": iso(prediction.ts),
        "score": prediction.score,
        "scores": prediction.scores,
        "model": prediction.model,
        "features_version": prediction.features_version,
        "label_inline": prediction.label_inline,
    }
    if prediction.features is not None:
        body["features"] = prediction.features
    return KafkaSinkMessage(
        key=prediction.event_id.encode(), value=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    )


def encode_metrics(metrics: Metrics) -> KafkaSinkMessage:
    return KafkaSinkMessage(key=b"eddy", value=orjson.dumps(metrics.figures, option=orjson.OPT_NON_STR_KEYS))


def encode_alert(alert: Alert) -> KafkaSinkMessage:
    """Keyed by rule, so that a rule's firing and clearing stay in order on one partition."""
    return KafkaSinkMessage(key=str(alert.figures["rule"]).encode(), value=orjson.dumps(alert.figures))


def encode_dead_letter(letter: DeadLetter) -> KafkaSinkMessage:
    headers = [
        ("error", letter.error.encode()),
        ("stage", letter.stage.encode()),
        ("reason", letter.reason.encode()),
        ("source_topic", letter.origin.topic.encode()),
        ("source_partition", str(letter.origin.partition).encode()),
        ("source_offset", str(letter.origin.offset).encode()),
    ]
    return KafkaSinkMessage(key=letter.key, value=letter.value, headers=headers)
