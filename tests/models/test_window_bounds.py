from collections import deque
from types import SimpleNamespace
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from models import window_bounds
from models.window_bounds import WindowBounds, scan

row_values = st.tuples(
    st.one_of(st.none(), st.floats(min_value=9.5e8, max_value=4e9)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
    st.one_of(st.none(), st.sampled_from(["v1", "v2", "v3"])),
)


@settings(max_examples=200, deadline=None)
@given(
    block=st.integers(min_value=1, max_value=6),
    window=st.integers(min_value=1, max_value=30),
    rows=st.lists(row_values, min_size=1, max_size=120),
    every=st.integers(min_value=1, max_value=15),
    restored_at=st.integers(min_value=0, max_value=120),
)
def test_the_bounds_from_block_summaries_are_those_of_a_full_scan(block, window, rows, every, restored_at):
    """Whatever the block size, window, gaps (None) and refit points, and after a restore (the cache lost
    mid-stream), the bounds equal a row-by-row scan of the window."""
    with mock.patch.object(window_bounds, "BLOCK", block):
        bounds, kept = WindowBounds(), deque(maxlen=window)
        for position, (ts, offset, version) in enumerate(rows, start=1):
            if position == restored_at:
                bounds = WindowBounds()
            kept.append(SimpleNamespace(position=position, ts=ts, source=offset, features_version=version))
            bounds.seal(kept)
            if position % every == 0 or position == len(rows):
                assert bounds.of(tuple(kept)) == scan(tuple(kept))


def test_a_refit_reads_block_summaries_instead_of_scanning_the_window():
    seen = []

    class Counted(SimpleNamespace):
        def __getattribute__(self, name):
            if name == "ts":
                seen.append(1)
            return super().__getattribute__(name)

    rows = deque(maxlen=20_000)
    bounds = WindowBounds()
    for position in range(1, 30_001):
        rows.append(Counted(position=position, ts=1.7e9 + position, source=position, features_version="v"))
        bounds.seal(rows)
    seen.clear()
    assert bounds.of(tuple(rows)) == scan(tuple(rows))
    scanned_by_of = len(seen) - 20_000  # scan() itself reads every row's ts once
    assert scanned_by_of <= 2 * window_bounds.BLOCK


def test_the_summaries_kept_never_exceed_a_window_even_without_refits():
    rows, bounds = deque(maxlen=2_000), WindowBounds()
    for position in range(1, 50_001):
        rows.append(SimpleNamespace(position=position, ts=float(position), source=position, features_version=None))
        bounds.seal(rows)
    assert len(bounds._blocks) <= 2_000 // window_bounds.BLOCK + 1
