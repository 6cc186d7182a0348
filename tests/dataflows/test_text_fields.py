"""A `text` field: decoded as a non-empty string, configured by `[text]`, and learned as hashed term weights."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from bytewax.connectors.kafka import KafkaSourceMessage

from dataflows.flow.codec import REASONS, Codec
from dataflows.flow.config import REPO_ROOT, ConfigError, load_config
from dataflows.flow.messages import DeadLetter, Event
from dataflows.flow.model_choice import build_model
from models.text import HashedText

CODEC = Codec("events", "labels", {"body": "text", "channel": "string"}, max_message_bytes=4096)
GOOD = {"event_id": "m1", "ts": "2026-01-01T00:00:00Z", "body": "My order has not arrived", "channel": "email"}


def decode(**fields):
    value = orjson.dumps({**GOOD, **fields})
    return CODEC.decode(KafkaSourceMessage(key=None, value=value, topic="events", partition=0, offset=3))


def test_text_is_decoded_as_it_came():
    event = decode(body="  Hello\u200f, \x00 world  ")
    assert isinstance(event, Event) and event.fields["body"] == "  Hello\u200f, \x00 world  "


@pytest.mark.parametrize(
    "body, reason, says",
    [
        ("", "empty_text", "text field 'body' is empty"),
        (" \n\t ", "empty_text", "text field 'body' is empty"),
        (None, "empty_text", "text field 'body' is null"),
        (42, "wrong_type", "text field 'body' must be a string, got integer 42"),
        (["a"], "wrong_type", "got array"),
        ("x" * 5000, "oversize", "over the limit of 4096"),
    ],
)
def test_empty_or_non_string_text_is_dead_lettered_with_a_clear_reason(body, reason, says):
    letter = decode(body=body)
    assert isinstance(letter, DeadLetter) and letter.reason == reason and reason in REASONS
    assert says in letter.error


def test_a_missing_text_field_is_named():
    value = orjson.dumps({k: v for k, v in GOOD.items() if k != "body"})
    letter = CODEC.decode(KafkaSourceMessage(key=None, value=value, topic="events", partition=0, offset=3))
    assert letter.reason == "missing_field" and "declared as text" in letter.error


def test_the_messages_config_learns_its_text_with_river_and_gives_lightgbm_hashed_counts():
    config = load_config(REPO_ROOT / "configs" / "messages.toml", env={})
    assert config.text_fields == ("body",) and config.fields["body"] == "text"
    model = build_model(config)
    assert isinstance(model.lightgbm_view, HashedText) and model.lightgbm_view.fields == ("body",)
    extractor = model.river["ScaleAndEncode"].text.extractors["body"]
    assert type(extractor).__name__ == "HashedTFIDF" and extractor.buckets == 4096
    assert extractor.ngram_range == (1, 1)


@pytest.mark.parametrize(
    "text, says",
    [
        ('[text]\nmethod = "lda"\n', "[text] method = 'lda'; use one of tfidf, bag_of_words"),
        ("[text]\nbuckets = -1\n", "[text] buckets must be a whole number >= 1"),
        ("[text]\nngrams = 2\n", "[text] unknown key(s) ['ngrams']"),
        ('[fields]\nbody = "txt"\n', "unknown type(s) {'body': 'txt'}"),
    ],
)
def test_bad_text_config_is_named(tmp_path: Path, text: str, says: str):
    path = tmp_path / "eddy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert says in str(info.value)


def test_a_lone_surrogate_is_not_json_and_says_so():
    value = b'{"event_id": "m1", "ts": "2026-01-01T00:00:00Z", "body": "\\ud800 x", "channel": "email"}'
    letter = CODEC.decode(KafkaSourceMessage(key=None, value=value, topic="events", partition=0, offset=3))
    assert letter.reason == "not_json" and "surrogate" in letter.error


def test_the_messages_data_set_is_deterministic_and_its_spam_vocabulary_drifts_halfway():
    from dataflows.tools.datasets import messages
    from dataflows.tools.replay import load_dataset

    events = list(messages(4_000, seed=1))
    assert events == list(messages(4_000, seed=1)) != list(messages(4_000, seed=2))
    assert list(load_dataset("messages", 4_000, seed=1)) == events
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert 180 <= sum(len(e["body"]) for e in events) / len(events) <= 220
    assert 0.08 <= sum(e["label"] for e in events) / len(events) <= 0.15
    before = " ".join(e["body"].lower() for e in events[:2_000] if e["label"])
    after = " ".join(e["body"].lower() for e in events[2_000:] if e["label"])
    for word in ("wallet", "crypto", "overdue"):
        assert word not in before and word in after
    for word in ("prize", "winner", "gift card"):
        assert word in before and word not in after
