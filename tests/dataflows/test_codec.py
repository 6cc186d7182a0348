"""Decoding and validation: every bad message becomes a dead letter whose reason names the problem."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from bytewax.connectors.kafka import KafkaSourceMessage
from hypothesis import given
from hypothesis import strategies as st

from dataflows.flow.codec import MAX_TS_MS, MIN_TS_MS, Codec, encode_dead_letter, encode_prediction, parse_ts
from dataflows.flow.messages import DeadLetter, Event, Label, Origin, Prediction
from features.timestamps import iso, to_ms

FIELDS = {"user_id": "string", "amount": "double", "n": "bigint", "vip": "boolean"}
CODEC = Codec("events", "labels", FIELDS, max_message_bytes=1024)
GOOD = {"event_id": "e1", "ts": "2026-01-01T00:00:00Z", "user_id": "u1", "amount": 12, "n": 3, "vip": False}


def msg(value, topic="events", offset=7, timestamp=(1, 1_767_225_600_000)) -> KafkaSourceMessage:
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return KafkaSourceMessage(key=b"k", value=raw, topic=topic, partition=2, offset=offset, timestamp=timestamp)


def test_a_good_event_is_decoded_with_types_normalised():
    event = CODEC.decode(msg({**GOOD, "label": 1, "extra": "ignored"}))
    assert isinstance(event, Event)
    assert event.event_id == "e1"
    assert event.ts == 1_767_225_600_000
    assert event.fields == {"user_id": "u1", "amount": 12.0, "n": 3, "vip": False}
    assert isinstance(event.fields["amount"], float)
    assert event.label is True
    assert event.origin == Origin("events", 2, 7, 1_767_225_600_000)


@given(st.integers(MIN_TS_MS, MAX_TS_MS - 1))
def test_iso_writes_what_datetime_writes_and_reads_back_exactly(ts_ms):
    """Exactly, as the feature engine's backfill reads it: float seconds * 1000, truncated, would read
    2004-10-19T06:53:40.649 as ...648."""
    expected = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    assert iso(ts_ms) == expected
    assert parse_ts({"ts": iso(ts_ms)}, "ts") == ts_ms


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 2),
        max_value=datetime(2099, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
    )
)
def test_the_codec_reads_iso_text_as_the_feature_backfill_does(moment):
    text = moment.isoformat()
    assert parse_ts({"ts": text}, "ts") == to_ms(text)


def test_epoch_milliseconds_and_iso_timestamps_agree():
    assert parse_ts({"ts": 1_767_225_600_123}, "ts") == parse_ts({"ts": "2026-01-01T01:00:00.123+01:00"}, "ts")


def test_explicit_nulls_are_allowed_for_declared_fields():
    event = CODEC.decode(msg({**GOOD, "amount": None}))
    assert isinstance(event, Event)
    assert event.fields["amount"] is None


@pytest.mark.parametrize(
    ("value", "reason", "error"),
    [
        (b"{not json", "not_json", "not valid JSON"),
        (None, "not_json", "empty message"),
        (b"[1, 2]", "not_object", "expected a JSON object, got array"),
        (b'"text"', "not_object", "expected a JSON object, got string"),
        ({**GOOD, "event_id": 42}, "invalid_event_id", "'event_id' must be a string, got integer 42"),
        ({**GOOD, "event_id": ""}, "invalid_event_id", "'event_id' must have 1 to 256 characters"),
        ({k: v for k, v in GOOD.items() if k != "event_id"}, "missing_field", "missing field 'event_id'"),
        ({k: v for k, v in GOOD.items() if k != "ts"}, "missing_field", "missing field 'ts'"),
        (
            {k: v for k, v in GOOD.items() if k != "amount"},
            "missing_field",
            "missing field 'amount' (declared as double",
        ),
        ({**GOOD, "ts": "yesterday"}, "invalid_ts", "'ts' is not ISO-8601: 'yesterday'"),
        ({**GOOD, "ts": "2026-01-01T00:00:00"}, "invalid_ts", "'ts' has no timezone"),
        ({**GOOD, "ts": 1.5}, "invalid_ts", "got number 1.5"),
        ({**GOOD, "ts": 1_767_225_600}, "absurd_ts", "epoch seconds instead of milliseconds?"),
        ({**GOOD, "ts": "3026-01-01T00:00:00Z"}, "absurd_ts", "outside 2000-01-01 .. 2100-01-01"),
        ({**GOOD, "amount": "12.5"}, "wrong_type", "field 'amount' must be double, got string '12.5'"),
        ({**GOOD, "amount": True}, "wrong_type", "field 'amount' must be double, got boolean"),
        ({**GOOD, "n": 2.5}, "wrong_type", "field 'n' must be bigint, got number 2.5"),
        ({**GOOD, "user_id": 5}, "wrong_type", "field 'user_id' must be string, got integer 5"),
        ({**GOOD, "vip": "yes"}, "wrong_type", "field 'vip' must be boolean"),
        (b'{"event_id": "e1", "ts": 1767225600000, "amount": NaN}', "not_finite", "field 'amount' is NaN"),
        (b'{"event_id": "e1", "amount": -Infinity}', "not_finite", "field 'amount' is -Infinity"),
        (b'{"event_id": "e1", "amount": 1e999}', "not_finite", "NaN or infinite"),
        ({**GOOD, "label": "maybe"}, "invalid_label", "'label' must be true/false or 0/1, got string 'maybe'"),
        ({**GOOD, "label": 2}, "invalid_label", "got integer 2"),
        ({**GOOD, "user_id": "x" * 2000}, "oversize", "over the limit of 1024"),
    ],
)
def test_bad_events_become_dead_letters_that_say_why(value, reason, error):
    letter = CODEC.decode(msg(value))
    assert isinstance(letter, DeadLetter)
    assert letter.reason == reason
    assert error in letter.error
    assert letter.stage == "decode"
    assert letter.value == (value if isinstance(value, bytes) or value is None else orjson.dumps(value))
    assert letter.origin == Origin("events", 2, 7, 1_767_225_600_000)


def test_labels_take_their_ts_or_the_kafka_timestamp():
    with_ts = CODEC.decode(msg({"event_id": "e1", "label": True, "ts": 1_767_225_700_000}, topic="labels"))
    without = CODEC.decode(msg({"event_id": "e1", "label": 0}, topic="labels", timestamp=(1, 1_767_225_800_000)))
    assert with_ts == Label("e1", True, 1_767_225_700_000, with_ts.origin)
    assert without.ts == 1_767_225_800_000 and without.ts_from_kafka and without.label is False


def test_a_label_without_its_label_is_refused():
    letter = CODEC.decode(msg({"event_id": "e1"}, topic="labels"))
    assert isinstance(letter, DeadLetter) and letter.reason == "missing_field"


def test_dead_letters_keep_the_original_bytes_and_say_why_in_headers():
    letter = CODEC.decode(msg(b"\xff\xfe garbage"))
    out = encode_dead_letter(letter)
    headers = dict(out.headers)
    assert out.value == b"\xff\xfe garbage"
    assert out.key == b"k"
    assert headers["reason"] == b"not_json"
    assert headers["stage"] == b"decode"
    assert headers["source_topic"] == b"events"
    assert headers["source_partition"] == b"2"
    assert headers["source_offset"] == b"7"
    assert headers["error"].startswith(b"not valid JSON")


def test_a_prediction_carries_the_contract_fields():
    prediction = Prediction(
        "e1",
        1_767_225_600_000,
        0.25,
        {"river": 0.2, "lightgbm": 0.3},
        {"river": 10, "lightgbm": 1},
        "abc",
        True,
        {"f": 1.0},
    )
    body = orjson.loads(encode_prediction(prediction).value)
    assert body == {
        "event_id": "e1",
        "ts": "2026-01-01T00:00:00.000+00:00",
        "score": 0.25,
        "scores": {"river": 0.2, "lightgbm": 0.3},
        "model": {"river": 10, "lightgbm": 1},
        "features_version": "abc",
        "label_inline": True,
        "features": {"f": 1.0},
    }


@given(st.binary(max_size=300))
def test_decoding_never_raises_on_arbitrary_bytes(value):
    result = CODEC.decode(msg(value))
    assert isinstance(result, Event | DeadLetter)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["event_id", "ts", "user_id", "amount", "n", "vip", "label", "x"]), json_values))
def test_every_json_object_is_either_a_valid_event_or_a_reasoned_dead_letter(obj):
    result = CODEC.decode(msg(obj))
    if isinstance(result, DeadLetter):
        assert result.reason and result.error
    else:
        assert isinstance(result.event_id, str) and result.event_id
        assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in result.fields.values())


# --- a broken clock: a ts further ahead of when its message was produced than the allowed skew ---

NOW_MS = 1_767_312_000_000  # 2026-01-02T00:00:00Z: this machine's clock in these tests
SKEWED = Codec("events", "labels", FIELDS, max_clock_skew_ms=3_600_000, clock=lambda: NOW_MS / 1000)


def test_an_event_stamped_2096_is_dead_lettered_future_ts_naming_the_clocks():
    dead = SKEWED.decode(msg({**GOOD, "ts": "2096-02-29T12:00:00Z"}))
    assert isinstance(dead, DeadLetter) and dead.reason == "future_ts"
    assert dead.error.startswith("'ts' 2096-02-29T12:00:00.000+00:00 is 70 years ahead of its Kafka timestamp")
    assert "max_clock_skew_ms (3600000 ms)" in dead.error


@given(st.integers(-86_400_000, 86_400_000), st.integers(-86_400_000, 0))
def test_a_ts_is_refused_exactly_when_it_is_more_than_the_skew_ahead_of_its_kafka_timestamp(ahead, kafka_behind):
    kafka_ts = NOW_MS + kafka_behind
    decoded = SKEWED.decode(msg({**GOOD, "ts": kafka_ts + ahead}, timestamp=(1, kafka_ts)))
    assert isinstance(decoded, DeadLetter) == (ahead > 3_600_000)
    if isinstance(decoded, DeadLetter):
        assert decoded.reason == "future_ts"


def test_a_kafka_timestamp_from_the_future_is_not_trusted_and_none_is_compared_with_this_clock():
    # A producer with a broken clock stamps the record (CreateTime) as wrongly as the event.
    both = SKEWED.decode(msg({**GOOD, "ts": NOW_MS + 10 * 3_600_000}, timestamp=(1, NOW_MS + 10 * 3_600_000)))
    assert isinstance(both, DeadLetter) and both.reason == "future_ts" and "ahead of this clock" in both.error
    none = SKEWED.decode(msg({**GOOD, "ts": NOW_MS + 2 * 3_600_000}, timestamp=(0, -1)))
    assert isinstance(none, DeadLetter) and none.reason == "future_ts"
    assert isinstance(SKEWED.decode(msg({**GOOD, "ts": NOW_MS}, timestamp=(0, -1))), Event)


def test_labels_from_the_future_are_refused_too_and_a_skew_of_zero_turns_the_check_off():
    label = SKEWED.decode(msg({"event_id": "e1", "label": 1, "ts": "2096-01-01T00:00:00Z"}, topic="labels"))
    assert isinstance(label, DeadLetter) and label.reason == "future_ts"
    stamped = SKEWED.decode(msg({"event_id": "e1", "label": 1}, topic="labels", timestamp=(1, NOW_MS + 86_400_000)))
    assert isinstance(stamped, DeadLetter) and stamped.error.startswith("its Kafka timestamp")
    off = Codec("events", "labels", FIELDS, max_clock_skew_ms=0, clock=lambda: NOW_MS / 1000)
    assert isinstance(off.decode(msg({**GOOD, "ts": "2096-02-29T12:00:00Z"})), Event)
