"""Scaling out changes nothing: the same input gives the same predictions and features with 1 worker, 2 worker
threads, 2 processes, and from a 1-partition topic (canonical event-time order, see `dataflows.flow.ordering`);
and with 2 workers the feature state is cut in two by entity and held half by each (`dataflows.flow.shards`)."""

from __future__ import annotations

import re
import socket
import time
from collections import defaultdict

import pytest

from tests.flowkit import (
    by_id,
    flow_env,
    isolated_config,
    outputs,
    publish_input,
    run_flow_process,
    start_flow_logged,
    transactions_input,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS = 12_000
RUN_TIMEOUT_S = 240


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# Logged by each feature shard at the end of the input (`ComputeFeatures.on_eof`).
SHARD_LINE = re.compile(
    r"feature shard (\S+): (\d+) events in \d+ micro-batches, (\d+) rows held; pid (\d+), thread (\d+)"
)


def _shards(log: str) -> dict[str, tuple[int, int, tuple[int, int]]]:
    """Shard key -> (events it computed, rows it holds, (pid, thread) it ran on), from the flow's log."""
    return {m[1]: (int(m[2]), int(m[3]), (int(m[4]), int(m[5]))) for m in SHARD_LINE.finditer(log)}


def _check_spread(how: str, shards: dict[str, tuple[int, int, tuple[int, int]]], workers: int) -> None:
    """One worker: one shard over every group. Two: every family's events computed once over its two shards,
    each worker holding one shard of each family."""
    if workers == 1:
        assert list(shards) == ["all:0"] and shards["all:0"][:2] == (N_EVENTS, N_EVENTS), f"{how}: {shards}"
        return
    families = defaultdict(list)
    for key, figures in shards.items():
        families[key.rpartition(":")[0]].append(figures)
    assert set(families) == {"user_id", "merchant_id"}, f"{how}: shards {sorted(shards)}"
    for family, figures in families.items():
        assert len(figures) == workers, f"{how}: {family} in {len(figures)} shards, {workers} workers: {shards}"
        assert sum(events for events, _, _ in figures) == N_EVENTS, f"{how}: {family}: {figures}"
        assert all(events > 0 and rows > 0 for events, rows, _ in figures), f"{how}: {family}: {figures}"
        assert len({where for _, _, where in figures}) == workers, f"{how}: {family} shards on one worker: {figures}"
    places = {where for figures in families.values() for _, _, where in figures}
    assert len(places) == workers, f"{how}: the shards ran on {places}"
    if how == "processes":
        assert len({pid for pid, _ in places}) == 2, f"{how}: the shards ran in one process: {places}"


def _two_processes(env: dict[str, str], tmp_path) -> str:
    ports = _free_ports(2)
    addresses = ";".join(f"localhost:{p}" for p in ports)
    logs = [tmp_path / f"process-{i}.log" for i in range(2)]
    procs = [start_flow_logged(env, logs[i], "-i", str(i), "-a", addresses) for i in range(2)]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, f"process exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
    return "".join(log.read_text() for log in logs)


@pytest.fixture(scope="module")
def scale_input():
    # 80 % of the labels inline, 20 % delayed on the labels topic (every input partition carries data).
    return transactions_input(N_EVENTS, seed=5, label_delay_s=(1.0, 1800.0), delayed_share=0.2)


def _run(kafka_bootstrap, make_topics, tmp_path, scale_input, partitions: int, how: str) -> dict[str, dict]:
    events, labels = scale_input
    topics = make_topics(partitions=partitions)
    publish_input(kafka_bootstrap, topics, events, labels, partitions)
    run_dir = tmp_path / f"{how}-{partitions}"
    env = flow_env(topics, kafka_bootstrap, isolated_config(run_dir), EDDY_INCLUDE_FEATURES="true")
    started = time.monotonic()
    if how == "w1":
        log = run_flow_process(env, "-w", "1", timeout=RUN_TIMEOUT_S)
    elif how == "w2":
        log = run_flow_process(env, "-w", "2", timeout=RUN_TIMEOUT_S)
    else:
        log = _two_processes(env, run_dir)
    predictions, _, dead = outputs(kafka_bootstrap, topics)
    print(f"{how} on {partitions} partition(s): {len(predictions)} predictions in {time.monotonic() - started:.1f} s")
    assert "still waiting for their features" not in log, f"{how}: an epoch ended with the join waiting"
    shards = _shards(log)
    print(
        "  " + "; ".join(f"{k}: {e} events, {r} rows held, pid {p} thread {t}" for k, (e, r, (p, t)) in shards.items())
    )
    _check_spread(how, shards, 1 if how == "w1" else 2)
    assert not dead, f"{how}: {len(dead)} dead letters"
    ids = [p["event_id"] for p in predictions]
    assert len(ids) == len(set(ids)) == N_EVENTS, f"{how}: {len(ids)} predictions, {len(set(ids))} distinct"
    assert all("features" in p and p["features"] for p in predictions), "EDDY_INCLUDE_FEATURES=true: no features"
    return by_id(predictions)


def _differences(name: str, got: dict[str, dict], want: dict[str, dict]) -> list[str]:
    problems = []
    features = sorted(e for e in want if got[e]["features"] != want[e]["features"])
    if features:
        e = features[0]
        a, b = got[e]["features"], want[e]["features"]
        diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
        problems.append(f"{name}: {len(features)} events have other features, first {e}: {diff}")
    # `!=` on floats, not a tolerance: the README promises bit-for-bit the same predictions and models.
    scores = sorted(e for e in want if (got[e]["score"], got[e]["scores"]) != (want[e]["score"], want[e]["scores"]))
    if scores:
        first = [(e, got[e]["scores"], got[e]["score"], want[e]["scores"], want[e]["score"]) for e in scores[:3]]
        problems.append(f"{name}: {len(scores)} scores differ, first {first}")
    models = sorted(e for e in want if got[e]["model"] != want[e]["model"])
    if models:
        problems.append(f"{name}: {len(models)} model versions differ, first {models[0]}")
    return problems


def test_workers_processes_and_partitions_give_the_same_predictions(
    kafka_bootstrap, make_topics, tmp_path, scale_input
):
    reference = _run(kafka_bootstrap, make_topics, tmp_path, scale_input, 3, "w1")
    problems: list[str] = []
    for partitions, how in [(3, "w2"), (3, "processes"), (1, "w1")]:
        got = _run(kafka_bootstrap, make_topics, tmp_path, scale_input, partitions, how)
        assert set(got) == set(reference)
        problems += _differences(f"{how} on {partitions} partition(s)", got, reference)
    assert not problems, "\n".join(problems)
