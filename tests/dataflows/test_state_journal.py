"""The state journal, and the ordering and feature steps resumed from it as Bytewax would resume them.

A resume must give exactly the state of the uninterrupted run at the snapshot it resumes from, whichever of
the last few snapshots that is (Bytewax may not have committed the newest), and a snapshot must cost what
its epoch changed: its bytes do not grow with the history held.
"""

from __future__ import annotations

import functools
import itertools
import pickle
import sqlite3
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.flow.config import load_config
from dataflows.flow.messages import Event, FeaturedEvent, Origin, Release, ShardBatch
from dataflows.flow.state_journal import FILE, KEEP_POSITIONS, JournalError, StateJournal, snapshot_log
from dataflows.flow.step_state import unpack
from dataflows.flow.steps import ComputeFeatures, OrderByEventTime
from features import FeatureEngine

T0 = 1_767_225_600_000
PARTITIONS = ["events:0"]


def config(**flow):
    base = load_config(env={})
    return replace(base, flow=replace(base.flow, **flow))


def event(i: int, ts: int, user: str | None = None) -> Event:
    fields = {
        "user_id": user or f"u{i % 7}",
        "merchant_id": f"m{i % 5}",
        "amount": float(i % 13) + 0.25,
        "category": "grocery",
        "country": "FR",
    }
    return Event(f"e{i:06d}", ts, fields, None, Origin("events", 0, i), raw=b"{}")


def test_a_resume_drops_the_chunks_of_epochs_bytewax_never_committed(tmp_path):
    journal = StateJournal(tmp_path, "s", "k", ("a", "b"))
    assert journal.open(None) == {"a": [], "b": []}
    p1 = journal.append({"a": (b"a1", 1), "b": (b"b1", 1)}, {"a": 0, "b": 0})
    p2 = journal.append({"a": (b"a2", 2), "b": (b"", -1)}, {"a": 0, "b": 2})
    journal.append({"a": (b"a3", 3), "b": (b"b3", 3)}, {"a": 0, "b": 2})
    assert p2.first == {"a": 1, "b": 2}
    again = StateJournal(tmp_path, "s", "k", ("a", "b"))
    assert again.open(p2) == {"a": [b"a1", b"a2"], "b": [b""]}
    # The run goes on from the resumed position: the next chunk takes the dropped one's number.
    assert again.append({"a": (b"x", 4), "b": (b"y", 4)}, {"a": 0, "b": 0}).seq == 3
    assert StateJournal(tmp_path, "s", "k", ("a", "b")).open(p1) == {"a": [b"a1"], "b": [b"b1"]}


def test_dead_chunks_are_deleted_only_once_the_last_positions_are_past_them(tmp_path):
    journal = StateJournal(tmp_path, "s", "k", ("a",))
    journal.open(None)
    positions = [journal.append({"a": (f"c{i}".encode(), i)}, {"a": i}) for i in range(1, 8)]
    # Every chunk but the newest is dead at once, and kept until the last KEEP_POSITIONS positions are past it.
    with sqlite3.connect(tmp_path / FILE) as db:
        kept = [seq for (seq,) in db.execute("SELECT seq FROM chunks ORDER BY seq")]
    assert kept == [p.seq for p in positions[-KEEP_POSITIONS:]]
    oldest = positions[-KEEP_POSITIONS]
    assert StateJournal(tmp_path, "s", "k", ("a",)).open(oldest) == {"a": [f"c{oldest.seq}".encode()]}


def test_a_resume_whose_chunks_are_gone_is_refused_by_name(tmp_path):
    journal = StateJournal(tmp_path, "step_x", "k", ("a",))
    journal.open(None)
    old = journal.append({"a": (b"1", 0)}, {"a": 0})
    for i in range(2, 10):
        journal.append({"a": (b"%d" % i, i)}, {"a": i})
    with pytest.raises(JournalError, match=r"step 'step_x'.*chunks 1\.\.1 of 'a'.*fresh recovery directory"):
        StateJournal(tmp_path, "step_x", "k", ("a",)).open(old)


def test_a_fresh_start_forgets_what_an_earlier_run_left(tmp_path):
    journal = StateJournal(tmp_path, "s", "k", ("a",))
    journal.open(None)
    journal.append({"a": (b"old", 1)}, {"a": 0})
    fresh = StateJournal(tmp_path, "s", "k", ("a",))
    fresh.open(None)
    position = fresh.append({"a": (b"new", 1)}, {"a": 0})
    assert StateJournal(tmp_path, "s", "k", ("a",)).open(position) == {"a": [b"new"]}


@functools.cache
def features_version() -> str:
    return FeatureEngine(config().sql_dir, config().fields).features_version


def shard_batch(events: list[Event], seq: int = 0) -> list[ShardBatch]:
    """Events as the ordering step hands them to a feature shard (here one engine over every group)."""
    return [ShardBatch(seq, "all:0", None, [e.as_row() for e in events], features_version())]


def features_run(batches, state_dir, resume=None):
    step = ComputeFeatures(config(), resume, state_dir, "eddy")
    outs, blobs = [], []
    for batch in batches:
        out, _ = step.on_batch(shard_batch(batch))
        outs.append([(event_id, features) for part in out for event_id, features in part.features.items()])
        blobs.append(step.snapshot() if state_dir is not None else None)
    return outs, blobs


def dense_events(n: int, per_second: int = 100) -> list[Event]:
    return [event(i, T0 + i * 1000 // per_second) for i in range(n)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cuts=st.lists(st.integers(1, 1199), min_size=3, max_size=12, unique=True).map(sorted),
    resume_at=st.integers(0, 2),
    back=st.integers(0, KEEP_POSITIONS - 1),
)
def test_features_resumed_from_the_journal_equal_the_uninterrupted_run(tmp_path_factory, cuts, resume_at, back):
    """Kill after any epoch, resume from that snapshot or one of the previous ones (an epoch Bytewax had not
    committed is replayed): every later feature value is the same, bit for bit."""
    events = dense_events(1200, per_second=3)  # ~7 minutes of event time: the 10-minute windows evict
    bounds = [0, *cuts, len(events)]
    batches = [events[a:b] for a, b in itertools.pairwise(bounds)]
    whole, _ = features_run(batches, None)
    state_dir = tmp_path_factory.mktemp("journal")
    killed_after = min(resume_at + back, len(batches) - 2)
    _, blobs = features_run(batches[: killed_after + 1], state_dir)
    resumed_from = killed_after - back
    rest, _ = features_run(batches[resumed_from + 1 :], state_dir, blobs[resumed_from])
    assert rest == whole[resumed_from + 1 :]


def test_feature_snapshots_cost_what_the_epoch_changed_not_the_history(tmp_path):
    """One hour of events at 100 a second held in the windows: each epoch's snapshot writes its own events
    and a small state, and stays the same size as the history grows 50-fold."""
    events = dense_events(60_000)
    step = ComputeFeatures(config(), None, tmp_path, "eddy")
    for start in range(0, len(events), 1_200):
        step.on_batch(shard_batch(events[start : start + 1_200]))
        step.snapshot()
    sizes = [row["bytes"] for row in snapshot_log(tmp_path)]
    assert len(sizes) == 50
    assert max(sizes[-10:]) < 1.2 * max(sizes[:10])
    assert len(step.engine.buffer) == 60_000  # the 24-hour windows hold every event
    with sqlite3.connect(tmp_path / FILE) as db:
        (chunks,) = db.execute("SELECT count(*) FROM chunks").fetchone()
    assert chunks == 50


def test_features_resumed_after_eviction_hold_only_the_horizon(tmp_path):
    """Two days of sparse events: chunks the windows no longer reach are deleted, and a resume rebuilds the
    buffer the uninterrupted run holds."""
    events = [event(i, T0 + i * 60_000) for i in range(2 * 24 * 60)]
    step = ComputeFeatures(config(), None, tmp_path, "eddy")
    blob = None
    for start in range(0, len(events), 60):
        step.on_batch(shard_batch(events[start : start + 60]))
        blob = step.snapshot()
    resumed = ComputeFeatures(config(), blob, tmp_path, "eddy")
    assert resumed.engine.buffer.table.equals(step.engine.buffer.table)
    assert len(resumed.engine.buffer) <= 24 * 60 + 60
    with sqlite3.connect(tmp_path / FILE) as db:
        (chunks,) = db.execute("SELECT count(*) FROM chunks").fetchone()
    assert chunks <= 24 + 1 + KEEP_POSITIONS


def ordering_run(items_batches, state_dir, resume=None, horizon_ms=60_000):
    step = OrderByEventTime(
        config(lateness_ms=0, dedupe_horizon_ms=horizon_ms), PARTITIONS, None, False, resume, state_dir, "eddy"
    )
    released, blobs = [], []
    for batch in items_batches:
        out, _ = step.on_batch(batch)
        items = [o for _, message in out if isinstance(message, Release) for o in message.items]
        released.append([(type(o).__name__, getattr(o, "event_id", None) or o.origin.offset) for o in items])
        blobs.append(step.snapshot() if state_dir is not None else None)
    return released, blobs, step


def test_the_dedupe_memory_resumed_from_the_journal_refuses_the_same_duplicates(tmp_path):
    """Events 1 s apart, each id sent again 30 s and 90 s later: within the 60 s horizon the copy is a dead
    letter, after it the id is new again. A resume mid-stream must remember exactly the same ids."""
    base = [event(i, T0 + i * 1000) for i in range(400)]
    copies = {i + 30: base[i] for i in range(0, 400, 7)} | {i + 90: base[i] for i in range(3, 400, 11)}
    stream = []
    for i, e in enumerate(base):
        stream.append(e)
        if i in copies:
            c = copies[i]
            stream.append(replace(c, ts=e.ts, origin=Origin("events", 0, 10_000 + i)))
    batches = [stream[k : k + 37] for k in range(0, len(stream), 37)]
    whole, _, _ = ordering_run(batches, None)
    _, blobs, _step = ordering_run(batches[:6], tmp_path)
    assert unpack(OrderByEventTime.STEP, blobs[5])["order"].seen == {}  # the ids are in the journal, not here
    rest, _, resumed = ordering_run(batches[6:], tmp_path, blobs[5])
    assert rest == whole[6:]
    assert any(name == "DeadLetter" for batch in rest for name, _ in batch)
    assert len(pickle.dumps(resumed.order.without_ids())) < 5_000


def test_a_recovery_directory_with_snapshots_but_no_journal_is_refused_before_the_flow_starts(tmp_path):
    import subprocess
    import sys

    from dataflows.flow.recovery import RecoveryError, describe_snapshots, guard_recovery_dir
    from dataflows.flow.wiring import FLOW_ID, STATEFUL_STEPS

    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(tmp_path), "1"], check=True, capture_output=True)
    with sqlite3.connect(tmp_path / "part-0.sqlite3") as db:
        for step in STATEFUL_STEPS:
            db.execute(
                "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
                (f"{FLOW_ID}.{step}", "eddy", 1, b"\x80\x05N."),
            )
    with pytest.raises(RecoveryError, match=r"not the journal they refer to .*eddy-state\.sqlite3"):
        guard_recovery_dir(["-r", str(tmp_path)])
    journal = StateJournal(tmp_path, "compute_features", "eddy", ("rows",))
    journal.open(None)
    journal.record(journal.append({"rows": (b"x" * 2048, 1)}, {"rows": 0}).seq, 0.004, 2048)
    guard_recovery_dir(["-r", str(tmp_path)])
    lines = describe_snapshots(tmp_path)
    assert lines[0] == "compute_features: 1 snapshots logged; the last 1: 2.0 KiB and 4.0 ms (median, max 4.0 ms) each"
    assert lines[1].startswith(f"journal {tmp_path / FILE}: ")


def learner_config():
    base = config()
    ensemble = {**base.ensemble, "refit_every": 1500, "window": 3000, "lag": 700, "num_boost_round": 10}
    ensemble.update(background="none", registry_dir=None)
    return replace(base, ensemble=ensemble)


def scored(i: int) -> FeaturedEvent:
    features = {f"f{k}": ((i * 7919 + k * 104_729) % 1000) / 1000 for k in range(32)}
    features["f0"] += 0.5 * (i % 5 == 0)  # something to learn
    label = i % 5 == 0 if i % 3 else None  # a third of the labels come one batch later
    return FeaturedEvent(Event(f"e{i:06d}", T0 + i * 10, {}, label, Origin("events", 0, i)), features, "v1")


def learner_run(items, state_dir, resume=None):
    from dataflows.flow.messages import Prediction
    from dataflows.flow.steps import ScoreAndLearn

    step = ScoreAndLearn(learner_config(), None, resume, state_dir, "eddy")
    scores, blobs = [], []
    for batch in items:
        out, _ = step.on_batch(batch)
        scores.append([(p.event_id, p.score, p.scores) for p in out if isinstance(p, Prediction)])
        blobs.append(step.snapshot() if state_dir is not None else None)
    return scores, blobs, step


def test_the_learner_resumed_from_its_snapshot_and_journal_scores_as_the_uninterrupted_one(tmp_path):
    """Refits pending across the snapshot, a full refit window: the resumed learner's predictions are the
    uninterrupted learner's, bit for bit; the window's slices are written to the journal once, not at every
    snapshot."""
    from dataflows.flow.messages import Label

    def batch(start: int) -> list:
        late = [Label(f"e{i:06d}", i % 5 == 0, T0 + i * 10, Origin("labels", 0, i)) for i in range(start - 500, start)]
        return [
            *(label for label in late if label.event_id and int(label.event_id[1:]) % 3 == 0),
            *map(scored, range(start, start + 500)),
        ]

    items = [batch(start) for start in range(0, 8000, 500)]
    whole, _, _ = learner_run(items, None)
    _, blobs, _ = learner_run(items[:10], tmp_path)
    rest, _, step = learner_run(items[10:], tmp_path, blobs[9])
    assert rest == whole[10:]
    sizes = [row["bytes"] for row in snapshot_log(tmp_path) if row["step"] == "score_and_learn"]
    # The 3,000-row window is full from the 6th snapshot on: a snapshot writes about one new slice of it.
    window = len(pickle.dumps([scored(i).features for i in range(3000)]))
    assert max(sizes[6:]) < len(pickle.dumps(step.state)) - 0.8 * window, (sizes, window)
