"""The data sets the replay tool publishes."""

from __future__ import annotations

import itertools
import tomllib
from datetime import datetime

import pytest

from dataflows.flow.config import REPO_ROOT
from dataflows.tools import datasets


def test_transactions_are_deterministic_for_a_seed_and_differ_across_seeds():
    first = list(datasets.transactions(2000, seed=1))
    assert first == list(datasets.transactions(2000, seed=1))
    assert first != list(datasets.transactions(2000, seed=2))


def test_transactions_are_in_event_time_order_with_unique_ids():
    events = list(datasets.transactions(5000, seed=3))
    times = [datetime.fromisoformat(e["ts"]) for e in events]
    assert times == sorted(times)
    assert all(t.tzinfo is not None for t in times)
    assert len({e["event_id"] for e in events}) == len(events)


def test_events_per_second_packs_the_same_events_closer_in_event_time():
    def offsets(events):
        return [(datetime.fromisoformat(e["ts"]) - datasets.START).total_seconds() for e in events]

    def without_ts(events):
        return [{k: v for k, v in e.items() if k != "ts"} for e in events]

    usual = list(datasets.transactions(3000, seed=4))
    dense = list(datasets.transactions(3000, seed=4, events_per_second=100))
    assert without_ts(dense) == without_ts(usual)
    assert offsets(dense) == pytest.approx([t / 100 for t in offsets(usual)], abs=0.001)  # ts keep milliseconds
    assert 90 < len(dense) / offsets(dense)[-1] < 110
    assert usual == list(datasets.transactions(3000, seed=4, events_per_second=1.0))
    with pytest.raises(ValueError, match="events_per_second"):
        next(datasets.transactions(10, events_per_second=0))


def test_the_fraud_pattern_changes_at_the_drift():
    events = list(datasets.transactions(40_000, seed=5, drift_at=0.5))
    before = [e for e in events[:20_000] if e["label"]]
    after = [e for e in events[20_000:] if e["label"]]
    small = lambda frauds: sum(e["amount"] < 5 for e in frauds) / len(frauds)  # noqa: E731
    assert len(before) > 50 and len(after) > 50
    assert small(before) < 0.2 < 0.6 < small(after)


def test_phishing_keeps_rivers_order_and_values():
    from river import datasets as river_datasets

    ours = list(datasets.phishing(limit=50))
    theirs = list(itertools.islice(river_datasets.Phishing(), 50))
    assert [({k: v for k, v in e.items() if k not in {"event_id", "ts", "label"}}, e["label"]) for e in ours] == theirs


def test_a_malformed_csv_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("event_id,ts,amount\na,1,2\nb,2\n")
    with pytest.raises(datasets.DatasetError, match=r"bad\.csv:3: expected 3 columns"):
        list(datasets.read_file(path))


def test_a_jsonl_line_that_is_not_an_object_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"event_id": "a"}\n[1, 2]\n')
    with pytest.raises(datasets.DatasetError, match=r"bad\.jsonl:2: expected a JSON object, got list"):
        list(datasets.read_file(path))


def test_agrawal_is_deterministic_for_a_seed_and_typed_as_its_config_declares():
    events = list(datasets.agrawal(500, seed=5))
    assert events == list(datasets.agrawal(500, seed=5)) != list(datasets.agrawal(500, seed=6))
    assert [e["event_id"] for e in events] == [f"agrawal-{i:08d}" for i in range(500)]
    assert sorted(e["ts"] for e in events) == [e["ts"] for e in events]
    declared = tomllib.loads((REPO_ROOT / "configs" / "agrawal.toml").read_text())["fields"]
    assert declared == datasets.AGRAWAL_FIELDS
    python = {"double": float, "bigint": int}
    for event in events:
        assert {name: type(event[name]) for name in declared} == {n: python[k] for n, k in declared.items()}
        assert isinstance(event["label"], bool)


def test_agrawals_rule_changes_at_the_drift():
    from river.datasets import synth

    n = 8_000
    events = list(datasets.agrawal(n, seed=1, perturbation=0.0))
    rules = [getattr(synth.Agrawal, f"_classification_function_{f}") for f in datasets.AGRAWAL_FUNCTIONS]

    def agreement(rule, part):
        return sum(rule(*(e[name] for name in datasets.AGRAWAL_FIELDS)) == e["label"] for e in part) / len(part)

    before, after = events[: n // 2 - 500], events[n // 2 + 500 :]  # the drift spans 1,000 events
    assert agreement(rules[0], before) > 0.99 and agreement(rules[1], after) > 0.99
    assert agreement(rules[0], after) < 0.8 and agreement(rules[1], before) < 0.8


def test_the_replay_tool_knows_agrawal_by_name():
    from dataflows.tools.replay import build_parser, load_dataset

    assert list(load_dataset("agrawal", 20, seed=3, drift_at=None)) == list(datasets.agrawal(20, seed=3, drift_at=None))
    assert "agrawal" in build_parser().format_help()
