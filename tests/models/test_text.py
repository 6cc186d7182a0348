"""Text fields: eddy's text pipeline gives a plain River loop's numbers, keeps its vocabulary bounded and
across a snapshot, and takes any string without failing."""

from __future__ import annotations

import itertools
import math
import pickle
import re
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import compose, feature_extraction, linear_model, preprocessing

from dataflows.tools.datasets import messages
from models.ensemble import Ensemble
from models.learner import OnlineLearner
from models.pipelines import make_model
from models.text import TOKEN_PATTERN, HashedText, TextSettings

EVENTS = list(messages(3_000, seed=7))


def rows(events):
    """What the flow hands the learner for a text field and a category: the text under its own name."""
    return [({"body": e["body"], "channel": e["channel"]}, e["label"]) for e in events]


def hashing_tokenizer(buckets: int, ngram_max: int):
    """The hashing trick as the README states it, written here independently of `models.text`: River's
    tokens, n-grams of up to `ngram_max` words joined by a space, crc32 of the UTF-8 modulo `buckets`."""
    pattern = re.compile(TOKEN_PATTERN)

    def tokenize(text: str) -> list[str]:
        words = [m.group() for m in pattern.finditer(text)]
        terms = [" ".join(words[i : i + n]) for n in range(1, ngram_max + 1) for i in range(len(words) - n + 1)]
        return [f"body#{zlib.crc32(t.encode()) % buckets}" for t in terms]

    return tokenize


def plain_river(method: str, buckets: int, ngram_max: int):
    """River's own parts: its TF-IDF (or bag of words) on the text, its one-hot encoder on the category."""
    kind = feature_extraction.TFIDF if method == "tfidf" else feature_extraction.BagOfWords
    text = kind(on="body", tokenizer=hashing_tokenizer(buckets, ngram_max))
    return (
        compose.TransformerUnion(text, compose.Select("channel") | preprocessing.OneHotEncoder())
        | linear_model.LogisticRegression()
    )


@pytest.mark.parametrize("method, buckets, ngram_max", [("tfidf", 4096, 2), ("bag_of_words", 64, 1)])
def test_online_equals_a_plain_river_loop_on_the_same_text(method, buckets, ngram_max):
    settings = TextSettings(method=method, buckets=buckets, ngram_max=ngram_max)
    online = OnlineLearner(make_model("logistic_regression", ("body",), settings), label_horizon_ms=0)
    ours = [online.score(f"e{i}", i, x, y).score for i, (x, y) in enumerate(rows(EVENTS))]
    model, expected = plain_river(method, buckets, ngram_max), []
    for x, y in rows(EVENTS):
        expected.append(model.predict_proba_one(x)[True])
        model.learn_one(x, y)
    assert max(abs(a - b) for a, b in zip(ours, expected, strict=True)) <= 1e-9
    assert len(set(ours)) > 1000, "the text must move the scores"


def test_a_snapshot_resumes_with_the_same_vocabulary():
    model = make_model("logistic_regression", ("body",), TextSettings())
    whole = OnlineLearner(model, label_horizon_ms=0)
    half = len(EVENTS) // 2
    first = [whole.score(f"e{i}", i, x, y).score for i, (x, y) in enumerate(rows(EVENTS[:half]))]
    resumed = OnlineLearner.from_state(pickle.loads(pickle.dumps(whole.state())))
    tfidf = resumed.model["ScaleAndEncode"].text.extractors["body"]
    original = whole.model["ScaleAndEncode"].text.extractors["body"]
    assert tfidf.n == original.n == half and tfidf.dfs == original.dfs and len(tfidf.dfs) > 50
    rest = rows(EVENTS[half:])
    a = [whole.score(f"f{i}", half + i, x, y).score for i, (x, y) in enumerate(rest)]
    b = [resumed.score(f"f{i}", half + i, x, y).score for i, (x, y) in enumerate(rest)]
    assert a == b
    fresh = OnlineLearner(make_model("logistic_regression", ("body",), TextSettings()), label_horizon_ms=0)
    assert [fresh.score(f"f{i}", i, x, y).score for i, (x, y) in enumerate(rest)] != a
    assert len(first) == half


def test_the_vocabulary_and_the_weights_stay_within_the_buckets():
    buckets = 128
    model = make_model("logistic_regression", ("body",), TextSettings(buckets=buckets, ngram_max=2))
    words = (f"w{i}" for i in itertools.count())
    for i in range(3_000):  # 30,000 distinct words, 57,000 distinct pairs
        model.learn_one({"body": " ".join(itertools.islice(words, 10))}, i % 2 == 0)
    tfidf = model["ScaleAndEncode"].text.extractors["body"]
    assert 0.9 * buckets <= len(tfidf.dfs) <= buckets
    assert len(model["LogisticRegression"].weights) <= buckets


@pytest.mark.parametrize("name", ["adaptive_random_forest", "hoeffding_adaptive_tree"])
def test_trees_take_the_text_as_term_weights(name):
    model = make_model(name, ("body",), TextSettings(buckets=32))
    for x, y in rows(EVENTS[:300]):
        model.learn_one(x, y)
    transformed = model.steps[next(iter(model.steps))].transform_one(rows(EVENTS[:1])[0][0])
    assert "body" not in transformed and all(k.startswith("body#") for k in transformed if k != "channel")


def test_lightgbm_sees_a_bounded_vector_of_the_same_terms():
    view = HashedText(("body",), TextSettings(lightgbm_buckets=16, ngram_max=1))
    seen = set()
    for x, _ in rows(EVENTS):
        row = view(x)
        assert row["channel"] == x["channel"] and "body" not in row
        expected: dict[str, int] = {}
        for term in hashing_tokenizer(16, 1)(x["body"].lower()):
            expected[term] = expected.get(term, 0) + 1
        assert {k: v for k, v in row.items() if k != "channel"} == expected
        seen |= set(row)
    assert len(seen) <= 16 + 1
    resumed = pickle.loads(pickle.dumps(view))  # what it remembers of texts is no part of a snapshot
    assert set(vars(resumed)) == {"fields", "settings"} and resumed(rows(EVENTS[:1])[0][0]) == view(
        rows(EVENTS[:1])[0][0]
    )


def test_the_ensemble_refits_lightgbm_on_the_hashed_text(tmp_path):
    settings = TextSettings(lightgbm_buckets=32)
    ensemble = Ensemble(
        make_model("logistic_regression", ("body",), settings),
        refit_every=800,
        window=800,
        lag=0,
        background=None,
        lightgbm_view=HashedText(("body",), settings),
    )
    for x, y in rows(EVENTS[:2_000]):
        ensemble.predict_proba_one(x)
        ensemble.learn_one(x, y)
    assert ensemble.lightgbm is not None
    columns = ensemble.lightgbm.schema.columns
    assert "body" not in columns and 10 < len(columns) <= 32 + 1
    assert 0.0 < ensemble.lightgbm.predict_proba(HashedText(("body",), settings)(rows(EVENTS[-1:])[0][0])) < 1.0


HOSTILE = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.lists(HOSTILE, min_size=1, max_size=8))
def test_any_string_is_learned_without_failing(texts):
    model = make_model("logistic_regression", ("body",), TextSettings(buckets=64, ngram_max=3))
    view = HashedText(("body",), TextSettings(lightgbm_buckets=8))
    for i, text in enumerate(texts):
        p = model.predict_proba_one({"body": text})[True]
        assert math.isfinite(p)
        model.learn_one({"body": text}, i % 2 == 0)
        assert all(k.startswith("body#") for k in view({"body": text}))


@pytest.mark.parametrize(
    "table, says",
    [
        ({"method": "word2vec"}, "method"),
        ({"buckets": 0}, "buckets"),
        ({"ngram_max": "2"}, "ngram_max"),
        ({"token_pattern": "("}, "regular expression"),
        ({"lowercase": "yes"}, "lowercase"),
        ({"bucket": 10}, "unknown key"),
    ],
)
def test_bad_text_settings_say_what_is_wrong(table, says):
    with pytest.raises(ValueError, match=says):
        TextSettings.from_table(table)
