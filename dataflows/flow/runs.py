"""A run of the flow and its own corner of the model registry.

Several runs share one registry directory (`[ensemble] registry_dir`), and each numbers its refits from 1:
in one flat directory a run's report would count refits another run left (or overwrote). So each run
writes its refits under `registry_dir/<run id>/`, and its metrics messages carry the run id (`"run"`), by
which the report, the dashboard and the Prometheus exporter find that run's refits and no other's.

A run id is made when a run starts from nothing and is part of the learner's recoverable state: a run
resumed from its recovery directory carries on under its own id, in its own registry directory. Ids sort
by start time (`20261205T101500Z-3fa2c1`), so the newest run is the last by name.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def new_run_id(now: datetime | None = None) -> str:
    """A fresh run id: the UTC start time to the second, and 6 random hex digits to tell apart runs
    started in the same second."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def is_run_id(name: str) -> bool:
    return bool(_RUN_ID.match(name))


def run_registry_dir(registry_dir: str | Path, run: str | None) -> Path:
    """Where the run `run` keeps its refits (the registry directory itself for a run without an id)."""
    return Path(registry_dir) / run if run else Path(registry_dir)


def runs_of(messages: Iterable[dict]) -> list[str]:
    """The run ids metrics messages carry, in order of first appearance."""
    seen: dict[str, None] = {}
    for message in messages:
        run = message.get("run") if isinstance(message, dict) else None
        if isinstance(run, str) and is_run_id(run):
            seen.setdefault(run)
    return list(seen)


def latest_run_dir(registry_dir: str | Path) -> Path | None:
    """The registry directory of the newest run under `registry_dir`, None if it holds none."""
    base = Path(registry_dir)
    runs = sorted(p for p in base.iterdir() if p.is_dir() and is_run_id(p.name)) if base.is_dir() else []
    return runs[-1] if runs else None
