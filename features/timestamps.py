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

    Every prediction carries one, so only the date goes through `datetime` (once a day, cached) and the
    time of day is plain arithmetic, rather than a datetime built and formatted per prediction."""
    days, ms_of_day = divmod(ts_ms, 86_400_000)
    seconds, ms = divmod(ms_of_day, 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_iso_date(days)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}+00:00"


@functools.lru_cache(maxsize=1024)
def _iso_date(days_since_epoch: int) -> str:
    return (_EPOCH + timedelta(days=days_since_epoch)).strftime("%Y-%m-%d")
