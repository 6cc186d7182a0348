"""Shared helpers: a folder of feature files per test, and small event streams with ts in epoch ms."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

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


def revive(engine, how: str, sql_dir):
    """The engine brought back the way Bytewax or a user would: from its snapshot, a pickle or a deep copy."""
    if how == "snapshot":
        return FeatureEngine.restore(engine.snapshot(), sql_dir, FIELDS)
    if how == "pickle":
        return pickle.loads(pickle.dumps(engine))
    return copy.deepcopy(engine)
