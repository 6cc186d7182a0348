"""Recovery under SIGKILL, and the guard that refuses a recovery directory this flow must not resume from.

The kill test runs the real job (`python -m bytewax.run -r DIR -s 1 -b 0 dataflows.main`, on one worker and
on two, whose feature state is then cut into shards) over a few tens of thousands of transactions on 3
partitions, SIGKILLs it at seeded random moments (each only after the run committed a snapshot of its own,
so that a resume has newer state to resume from), and resumes it
until it finishes. Against an uninterrupted run of the same input it checks that every event was scored,
that a duplicate prediction (a replayed epoch) is identical to the first, and that every score is the same.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from dataflows.flow.shards import shard_keys
from dataflows.flow.state_journal import FILE as JOURNAL_FILE
from dataflows.flow.wiring import FLOW_ID, STATEFUL_STEPS
from tests.flowkit import (
    REPO,
    TopicTail,
    by_id,
    committed_epoch,
    flow_env,
    isolated_config,
    outputs,
    publish_input,
    run_flow_process,
    start_flow_logged,
    transactions_input,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N_EVENTS = 80_000
PARTITIONS = 3
RUN_TIMEOUT_S = 240


@dataclass
class Segment:
    """One `bytewax.run` of a killed-and-resumed sequence and the predictions that appeared while it ran."""

    killed: bool
    returncode: int
    predictions: list[dict] = field(default_factory=list)


def _init_recovery_dir(directory: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "dataflows.flow.recovery", "init", str(directory)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )


def _log_tail(log_path: Path, chars: int = 4000) -> str:
    return log_path.read_text()[-chars:] if log_path.exists() else "(no log)"


def _run_with_kills(
    bootstrap: str,
    topics,
    env: dict[str, str],
    recovery_dir: Path,
    log_path: Path,
    n: int,
    kills: int,
    seed: int,
    span: tuple[float, float] = (0.1, 0.4),
    workers: int = 1,
) -> list[Segment]:
    """Run the recoverable job on `workers` worker threads, SIGKILL it `kills` times at seeded random moments,
    resume until it finishes.

    Each run is killed once a seeded share (within `span`) of the events it has left have predictions and a
    snapshot newer than its start has been committed, at a random moment within the epoch after that. The
    share is of what is left rather than of the whole input, so that a fast machine, which overshoots a
    threshold by a second's worth of events while it waits for that snapshot, still meets the next one.
    """
    rng = random.Random(seed)
    tail = TopicTail(bootstrap, topics.predictions)
    distinct: set[str] = set()
    segments: list[Segment] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while True:
            kills_left = len([s for s in segments if s.killed]) < kills
            target = len(distinct) + int(rng.uniform(*span) * (n - len(distinct))) if kills_left else None
            start_epoch = committed_epoch(recovery_dir)
            proc = start_flow_logged(env, log_path, "-w", str(workers), "-r", str(recovery_dir), "-s", "1", "-b", "0")
            seen: list[dict] = []
            killed = False
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    pytest.fail(f"the flow did not finish within {RUN_TIMEOUT_S} s:\n{_log_tail(log_path)}")
                for record in tail.poll():
                    prediction = orjson.loads(record.value)
                    seen.append(prediction)
                    distinct.add(prediction["event_id"])
                if target is None or len(distinct) < target:
                    continue
                # A snapshot this run committed: the resume has state newer than the last one to resume from.
                if committed_epoch(recovery_dir) > start_epoch:
                    time.sleep(rng.uniform(0.0, 1.0))  # a random moment within an epoch (chooses when, decides nothing)
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                        killed = True
                    break
            returncode = proc.wait()
            for record in tail.drain():
                prediction = orjson.loads(record.value)
                seen.append(prediction)
                distinct.add(prediction["event_id"])
            segments.append(Segment(killed, returncode, seen))
            if killed:
                assert returncode == -signal.SIGKILL, f"killed run exited with {returncode}"
                continue
            assert returncode == 0, f"resumed run exited with {returncode}:\n{_log_tail(log_path)}"
            return segments
    finally:
        tail.close()


def _reference(bootstrap: str, topics, env: dict[str, str], n: int) -> dict[str, dict]:
    run_flow_process(env, timeout=RUN_TIMEOUT_S)
    predictions, _, dead = outputs(bootstrap, topics)
    assert not dead, f"the reference run dead-lettered {len(dead)} messages"
    ids = [p["event_id"] for p in predictions]
    assert len(ids) == len(set(ids)) == n, f"reference: {len(ids)} predictions, {len(set(ids))} distinct, {n} events"
    return by_id(predictions)


@pytest.mark.parametrize(
    ("labels", "delayed_share", "seed", "kills", "density", "span", "n", "workers"),
    [
        ("mixed", 0.2, 11, 3, 1.0, (0.1, 0.4), N_EVENTS, 1),
        ("delayed", 1.0, 23, 3, 1.0, (0.1, 0.4), N_EVENTS, 1),
        ("mixed", 0.2, 37, 3, 1.0, (0.1, 0.4), N_EVENTS, 2),
        # A long history: 100 events an event-second, so the 1-hour and 24-hour windows hold every event and
        # the 10-minute ones evict; killed late in the run, when the journal holds many epochs of chunks.
        ("long history", 0.2, 41, 2, 100.0, (0.5, 0.85), 100_000, 1),
    ],
    ids=["mixed", "delayed", "mixed-2-workers", "long-history"],
)
def test_sigkill_and_resume_gives_the_uninterrupted_predictions(
    kafka_bootstrap, make_topics, tmp_path, labels, delayed_share, seed, kills, density, span, n, workers
):
    # The reference runs on one worker: two workers, their feature state in shards, must give its scores.
    # "mixed": 80 % of the labels inline, 20 % on the labels topic up to 30 minutes (event time) later.
    # Not all inline: with an empty labels topic the watermark waits for `idle_timeout_s`, and with
    # EDDY_TAIL=false the input ends first, so the whole run is one batch released at the end of the input:
    # no snapshot would fall mid-run (see the report of issue 4).
    events, label_messages = transactions_input(
        n,
        seed=seed,
        label_delay_s=(1.0, 1800.0 / density),
        delayed_share=delayed_share,
        events_per_second=density,
    )
    assert 0 < len(label_messages) <= n
    config = isolated_config(tmp_path / "config-reference")

    reference_topics = make_topics(partitions=PARTITIONS)
    publish_input(kafka_bootstrap, reference_topics, events, label_messages, PARTITIONS)
    started = time.monotonic()
    reference = _reference(kafka_bootstrap, reference_topics, flow_env(reference_topics, kafka_bootstrap, config), n)
    reference_s = time.monotonic() - started

    topics = make_topics(partitions=PARTITIONS)
    publish_input(kafka_bootstrap, topics, events, label_messages, PARTITIONS)
    recovery_dir = tmp_path / "recovery"
    _init_recovery_dir(recovery_dir)
    log_path = tmp_path / "flow.log"
    started = time.monotonic()
    env = flow_env(topics, kafka_bootstrap, isolated_config(tmp_path / "config-recovered"))
    segments = _run_with_kills(kafka_bootstrap, topics, env, recovery_dir, log_path, n, kills, seed, span, workers)
    recovered_s = time.monotonic() - started

    killed = [s for s in segments if s.killed]
    summary = (
        f"{labels} labels, {workers} worker(s): reference {reference_s:.1f} s; {len(segments)} runs, "
        f"{len(killed)} killed, {sum(len(s.predictions) for s in segments)} predictions in {recovered_s:.1f} s"
    )
    print(summary)
    assert len(killed) >= 2, f"at least two kills must land mid-run: {summary}"

    first: dict[str, dict] = {}
    differing_duplicates = []
    for segment in segments:
        for prediction in segment.predictions:
            earlier = first.setdefault(prediction["event_id"], prediction)
            if prediction != earlier:
                differing_duplicates.append((earlier, prediction))
    missing = set(reference) - set(first)
    assert not missing, f"{len(missing)} events never got a prediction, e.g. {sorted(missing)[:5]}; {summary}"
    assert set(first) == set(reference)
    assert not differing_duplicates, (
        f"{len(differing_duplicates)} duplicate predictions differ from the first one for their event "
        f"(a replayed epoch must re-emit the same output), e.g. {differing_duplicates[:2]}"
    )

    # A resume continues from the last snapshot: it must not start over from the first event.
    first_event = min(reference, key=lambda eid: (reference[eid]["ts"], eid))
    for i, segment in enumerate(segments[1:], start=1):
        replayed_ids = {p["event_id"] for p in segment.predictions}
        assert first_event not in replayed_ids, f"run {i} started over instead of resuming; {summary}"

    # `!=` on floats, not a tolerance: the README promises every score equal to the uninterrupted run's.
    wrong = [
        (eid, first[eid]["score"], reference[eid]["score"])
        for eid in sorted(reference)
        if first[eid]["score"] != reference[eid]["score"]
    ]
    assert not wrong, (
        f"{len(wrong)} of {n} scores differ from the uninterrupted run (event, recovered, reference), "
        f"first ones: {wrong[:5]}; {summary}"
    )
    wrong_members = [
        eid
        for eid in reference
        if first[eid]["model"] != reference[eid]["model"] or first[eid]["scores"] != reference[eid]["scores"]
    ]
    assert not wrong_members, (
        f"{len(wrong_members)} predictions differ in member scores or versions, "
        f"e.g. {[(first[e], reference[e]) for e in wrong_members[:2]]}"
    )
    _, _, dead = outputs(kafka_bootstrap, topics)
    assert not dead, f"the recovered runs dead-lettered {len(dead)} messages"
    assert "still waiting for their features" not in log_path.read_text(), "a snapshot found the join waiting"
    if workers > 1:
        _check_shards_journal_and_refuse_one_worker(recovery_dir, env, workers)


def _check_shards_journal_and_refuse_one_worker(recovery_dir: Path, env: dict[str, str], workers: int) -> None:
    """Each shard key journaled its own window rows, and a resume on another worker count is refused, naming
    both counts, before the flow starts."""
    with sqlite3.connect(recovery_dir / JOURNAL_FILE) as db:
        journaled = {key for (key,) in db.execute("SELECT DISTINCT key FROM chunks WHERE step = 'compute_features'")}
    assert journaled == {*shard_keys("user_id", workers), *shard_keys("merchant_id", workers)}, journaled
    result = _run_guarded(env, recovery_dir)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"resumed {workers} workers' state on one:\n{output[-3000:]}"
    assert f"by a flow of {workers} worker(s) in all; this run has 1 worker(s)" in output, output[-3000:]
    assert "Traceback" not in output, f"a clear message, not a traceback:\n{output[-3000:]}"


# --- the recovery guard ---


def _run_guarded(env: dict[str, str], recovery_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bytewax.run", "-r", str(recovery_dir), "-s", "1", "-b", "0", "dataflows.main"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_guard_refuses_a_directory_with_state_of_other_step_ids(kafka_bootstrap, make_topics, tmp_path):
    topics = make_topics(partitions=1)
    recovery_dir = tmp_path / "recovery"
    _init_recovery_dir(recovery_dir)
    with sqlite3.connect(recovery_dir / "part-0.sqlite3") as db:
        db.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
            (f"{FLOW_ID}.old_step_name", "eddy", 1, b"\x80\x05N."),
        )
    env = flow_env(topics, kafka_bootstrap, isolated_config(tmp_path / "config"))

    started = time.monotonic()
    result = _run_guarded(env, recovery_dir)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the flow resumed from another flow's state:\n{output[-3000:]}"
    for step in STATEFUL_STEPS:
        assert f"{FLOW_ID}.{step}" in output, f"the message does not name the missing step {step}:\n{output}"
    assert "missing" in output and f"{FLOW_ID}.old_step_name" in output, output
    assert "Traceback" not in output, f"a clear message, not a traceback:\n{output}"
    print(f"guard refused in {elapsed:.1f} s")


@pytest.mark.parametrize("state", ["absent", "empty"])
def test_guard_refuses_a_directory_that_was_never_initialised(kafka_bootstrap, make_topics, tmp_path, state):
    topics = make_topics(partitions=1)
    recovery_dir = tmp_path / "recovery"
    if state == "empty":
        recovery_dir.mkdir()
    env = flow_env(topics, kafka_bootstrap, isolated_config(tmp_path / "config"))
    result = _run_guarded(env, recovery_dir)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "not initialised" in output and f"python -m dataflows.flow.recovery init {recovery_dir}" in output, output
    assert "Traceback" not in output, f"a clear message, not a traceback:\n{output}"
