"""Event times: epoch milliseconds in, ISO-8601 in UTC to the millisecond out. Every part of eddy reads and
writes event times through these two functions, so that the live flow, the backfill and the tools agree to
the millisecond."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(ts: object) -> int:
    """An event's `ts` (epoch milliseconds, ISO-8601 text with a timezone, or a datetime) in epoch ms."""
    if isinstance(ts, bool):
        raise ValueError(f"ts must be epoch milliseconds or ISO-8601 text, got {ts!r}")
    if isinstance(ts, int):
        return ts
    if isinstance(ts, float) and ts.is_integer():
        return int(ts)
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts)
        except ValueError as exc:
            raise ValueError(f"ts {ts!r} is not ISO-8601 text") from exc
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ValueError(f"ts {ts.isoformat()!r} has no timezone; write e.g. ...+00:00 or Z")
        return (ts - _EPOCH) // timedelta(milliseconds=1)
    raise ValueError(f"ts must be epoch milliseconds or ISO-8601 text, got {ts!r}")


def iso(ts_ms: int) -> str:
    """ISO-8601 in UTC to the millisecond, as `datetime.isoformat(timespec="milliseconds")` writes it.

    Every prediction carries one, so the seconds are formatted once (events of the same second share them)
    and the milliseconds appended, rather than a datetime built and formatted per prediction."""
    seconds, ms = divmod(ts_ms, 1000)
    return f"{_iso_seconds(seconds)}.{ms:03d}+00:00"


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
