"""The real flow with its refit worker process killed by SIGKILL: it keeps scoring, fits the lost refit itself,
and its predictions are those of a flow that fits without a worker."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

import pytest

from dataflows.tools import datasets
from models import refit
from tests.flowkit import by_id, config_for, outputs, publish, run_flow

pytestmark = pytest.mark.kafka

ENSEMBLE = {"refit_every": 500, "window": 2_000, "lag": 100, "num_boost_round": 30}


def kill_when_a_refit_is_queued(pool, killed: list[int]) -> None:
    """SIGKILL the pool's worker once a job waits behind the one it runs; the pids killed go to `killed`."""
    deadline = time.monotonic() + 300
    while len(pool._pending_work_items) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.extend(pool._processes)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)


def test_a_flow_whose_refit_worker_is_killed_keeps_going_with_the_same_predictions(
    kafka_bootstrap, make_topics, tmp_path
):
    events = list(datasets.transactions(2_500, seed=9))
    runs = {}
    for background in ("none", "process"):
        topics = make_topics(partitions=1)
        publish(kafka_bootstrap, topics.events, events)
        config = config_for(topics, kafka_bootstrap)
        ensemble = {**ENSEMBLE, "background": background, "registry_dir": str(tmp_path / background)}
        config = replace(config, ensemble=ensemble)
        if background == "none":
            run_flow(config)
        else:
            # The worker is kept busy, so the flow's first refit waits in the pool behind this job; the worker is
            # killed once that refit is in the pool: the refit is lost with it, whatever the machine's speed.
            pool = refit._pool()
            assert pool.submit(refit._ready).result(timeout=120)
            blocker = pool.submit(time.sleep, 600)
            killed: list[int] = []
            killer = threading.Thread(target=kill_when_a_refit_is_queued, args=(pool, killed), daemon=True)
            killer.start()
            run_flow(config)
            killer.join(timeout=300)
            assert killed, "no worker process to kill"
            with pytest.raises(BrokenProcessPool):
                blocker.result(timeout=60)
            replaced = refit._pool()
            assert replaced is not pool and not set(replaced._processes) & set(killed)
        runs[background] = outputs(kafka_bootstrap, topics)

    expected, _, _ = runs["none"]
    predictions, metrics, dead = runs["process"]
    assert dead == []
    assert len(predictions) == len(events)
    got, want = by_id(predictions), by_id(expected)
    assert {k: (p["score"], p["model"]) for k, p in got.items()} == {
        k: (p["score"], p["model"]) for k, p in want.items()
    }
    final = metrics[-1]
    assert final["type"] == "final"
    assert sum(final["refits"]["fitted_by_flow"].values()) == 1
    assert final["refits"]["accepted"] + final["refits"]["rejected"] == 4
