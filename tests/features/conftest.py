"""Shared helpers: a folder of feature files per test, small event streams with ts in epoch ms, and the
flow's event-time ordering for rows."""

from __future__ import annotations

import copy
import itertools
import math
import pickle
from pathlib import Path

import pytest

from dataflows.flow.messages import Event, Origin
from dataflows.flow.ordering import EventTimeOrder
from features import FeatureEngine

FIELDS = {"user_id": "string", "merchant_id": "string", "amount": "double", "category": "string", "country": "string"}
REPO = Path(__file__).resolve().parents[2]

USER_COUNTS = """\
-- group: user_counts
-- entity: user_id
-- horizon: 1h
SELECT
    event_id,
    count(*) OVER last_hour AS n_1h,
    sum(amount) OVER last_hour AS sum_1h,
    CASE WHEN ts - lag(ts) OVER previous <= INTERVAL 1 HOUR THEN lag(event_id) OVER previous END AS previous_id
FROM events
WINDOW previous AS (PARTITION BY user_id ORDER BY ts, event_id),
    last_hour AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW)
"""


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "user_counts.sql").write_text(USER_COUNTS)
    return folder


def event(i: int, ts_ms: int, user: str = "u1", amount: float = 1.0, **extra) -> dict:
    return {
        "event_id": f"e{i:04d}",
        "ts": ts_ms,
        "user_id": user,
        "merchant_id": "m1",
        "amount": amount,
        "category": "grocery",
        "country": "FR",
        **extra,
    }


class RowOrder:
    """Event rows (dicts, as the engine takes them) through the flow's event-time ordering, one partition and
    no idle timeout: what the engine is fed in the flow. `late` collects the refused rows' (event_id, reason)."""

    def __init__(self, lateness_ms: int = 0):
        self.order = EventTimeOrder(["events:0"], lateness_ms=lateness_ms, idle_timeout_s=math.inf)
        self.late: list[tuple[str, str]] = []
        self._offsets = itertools.count()
        self._ids: dict[int, str] = {}

    def push(self, rows: list[dict]) -> list[dict]:
        """Take rows in arrival order; return the rows released, in event-time order."""
        events = []
        for row in rows:
            offset = next(self._offsets)
            self._ids[offset] = row["event_id"]
            fields = {k: v for k, v in row.items() if k not in ("event_id", "ts")}
            events.append(Event(row["event_id"], row["ts"], fields, None, Origin("events", 0, offset)))
        return self._rows(self.order.push(events, now=0.0))

    def flush(self) -> list[dict]:
        """The end of the stream: every row still held."""
        return self._rows(self.order.flush())

    def _rows(self, released) -> list[dict]:
        self.late += [(self._ids[dead.origin.offset], dead.error) for dead in released.dead]
        return [event.as_row() for event in released.items]


def in_event_time(batches: list[list[dict]], lateness_ms: int = 0) -> list[list[dict]]:
    """Batches of rows arriving in this order, as the flow releases them: one batch per push, then the rest
    at the end of the stream. Rows that arrive late are dropped."""
    order = RowOrder(lateness_ms)
    return [*(order.push(batch) for batch in batches), order.flush()]


def revive(engine, how: str, sql_dir):
    """The engine brought back the way Bytewax or a user would: from its snapshot, a pickle or a deep copy."""
    if how == "snapshot":
        return FeatureEngine.restore(engine.snapshot(), sql_dir, FIELDS)
    if how == "pickle":
        return pickle.loads(pickle.dumps(engine))
    return copy.deepcopy(engine)
