"""The batch-join plan keeps sql/README.md's promise for itself: features bit-for-bit the same however the
stream is cut (its sums of doubles are taken exactly, in fixed point), as the segment plan's are."""

from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from features import FeatureEngine
from tests.features.conftest import FIELDS
from tests.features.test_segments import TRANSACTIONS, assert_same_bits, by_id, payments


def run_joined(events: list[dict], cuts: list[int]) -> dict:
    """Features of `events` pushed in the pieces `cuts` makes, every group on its batch-join plan."""
    engine = FeatureEngine(TRANSACTIONS, FIELDS, lateness_ms=0)
    assert all(g.batch_sql for g in engine.catalog.groups)
    engine.catalog = replace(engine.catalog, groups=tuple(replace(g, segments=None) for g in engine.catalog.groups))
    bounds = [0, *cuts, len(events)]
    return by_id([*(engine.push(events[a:b]) for a, b in itertools.pairwise(bounds)), engine.flush()])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 150), max_size=8))
def test_batch_join_features_are_bit_identical_however_the_stream_is_cut(seed, cuts):
    events = payments(150, seed)
    assert_same_bits(run_joined(events, sorted(cuts)), run_joined(events, []))
