"""The bounds of a refit's training window (positions, event times, sources, features versions) for the
registry, without scanning the whole window on the scoring thread at every refit; and the blocks of
positions that these summaries and the window's pickled slices (`models.refit`) are kept by."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any, NamedTuple

BLOCK = 500
"""Rows summarised together: a refit reads window / BLOCK summaries and scans at most two partial blocks."""

_TS, _VERSION = map(operator.attrgetter, ("ts", "features_version"))


class Summary(NamedTuple):
    min_ts: float | None
    max_ts: float | None
    versions: frozenset[str]


class WindowBounds:
    """Bounds of window rows (objects with `position`, `ts`, `source` and `features_version`; positions
    consecutive) from summaries of whole blocks of `BLOCK` rows, made as each block fills.

    Scanning the whole window at every refit would stall the scoring thread, which shows in the latency
    p99; a block's summary is made once. The summaries are a cache of
    rows that never change: a missing one (after a restore) is made by scanning, so the bounds are always
    those of a full scan.

    >>> from types import SimpleNamespace as Row
    >>> rows = [Row(position=p, ts=1.7e9 + p, source=p % 7, features_version="v1") for p in range(1, 1301)]
    >>> bounds = WindowBounds()
    >>> for end in range(1, len(rows) + 1):
    ...     bounds.seal(rows[:end])
    >>> window = bounds.of(rows[-800:])
    >>> window["first_position"], window["last_position"], window["first_source"], window["last_ts"]
    (501, 1300, 4, '2023-11-14T22:35:00.000+00:00')
    >>> window == scan(rows[-800:])
    True
    """

    def __init__(self) -> None:
        self._blocks: dict[int, Summary] = {}

    def seal(self, rows: Sequence[Any]) -> None:
        """Called after each row is appended to `rows` (the window, newest last): summarise the block the
        newest row completes, if it completes one."""
        if not rows:
            return
        position = rows[-1].position
        if position % BLOCK == 0 and len(rows) >= BLOCK:
            self._blocks[(position - 1) // BLOCK] = _summarise(islice(reversed(rows), BLOCK))
            self._forget_before(rows[0].position)

    def of(self, rows: Sequence[Any]) -> dict[str, Any]:
        """The bounds of `rows` (a window, oldest first), as `scan` gives them."""
        first, parts = rows[0].position, []
        for k, start, end in aligned_chunks(first, len(rows), BLOCK):
            whole = end - start == BLOCK
            summary = self._blocks.get(k) if whole else None
            if summary is None:
                summary = _summarise(rows[start:end])
                if whole:
                    self._blocks[k] = summary
            parts.append(summary)
        self._forget_before(first)
        return _bounds(rows, parts)

    def _forget_before(self, position: int) -> None:
        """At most a window's worth of summaries is kept, also when no refit ever reads them."""
        forget_blocks_before(self._blocks, position, BLOCK)


def aligned_chunks(first: int, count: int, size: int) -> Iterator[tuple[int, int, int]]:
    """`count` rows at positions `first`, `first` + 1, ... cut where blocks of `size` positions begin (block k
    holds positions k * size + 1 .. (k + 1) * size): (k, start, end) for each chunk rows[start:end], which is
    the whole of block k when end - start == size.

    >>> list(aligned_chunks(first=4, count=7, size=3))
    [(1, 0, 3), (2, 3, 6), (3, 6, 7)]
    """
    start = 0
    while start < count:
        k = (first + start - 1) // size
        end = min(count, (k + 1) * size - first + 1)
        yield k, start, end
        start = end


def forget_blocks_before(blocks: dict[int, Any], position: int, size: int) -> None:
    """Drop the entries of `blocks` (keyed by block, as `aligned_chunks` numbers them) that end before `position`."""
    oldest = (position - 1) // size
    for k in [k for k in blocks if k < oldest]:
        del blocks[k]


def scan(rows: Sequence[Any]) -> dict[str, Any]:
    """The bounds of `rows` read row by row: what `WindowBounds.of` gives, at the cost of a full scan."""
    return _bounds(rows, [_summarise(rows)])


def _summarise(rows: Iterable[Any]) -> Summary:
    rows = list(rows)
    times = _present(map(_TS, rows))
    return Summary(
        min(times, default=None),
        max(times, default=None),
        frozenset(map(_VERSION, rows)) - {None},
    )


def _bounds(rows: Sequence[Any], parts: list[Summary]) -> dict[str, Any]:
    min_ts = _present(p.min_ts for p in parts)
    max_ts = _present(p.max_ts for p in parts)
    return {
        "first_position": rows[0].position,
        "last_position": rows[-1].position,
        "rows": len(rows),
        "first_ts": _iso(min(min_ts)) if min_ts else None,
        "last_ts": _iso(max(max_ts)) if max_ts else None,
        # Where the first and last rows came from, as the caller gave it (`source`): opaque here.
        "first_source": rows[0].source,
        "last_source": rows[-1].source,
        "features_versions": sorted(frozenset().union(*(p.versions for p in parts))),
    }


def _present(values: Iterable[Any]) -> list[Any]:
    return [v for v in values if v is not None]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
